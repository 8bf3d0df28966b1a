"""Writes tests/data/convert_equivalence.json: Messages requests and what convert_request made
of them, so tests/test_convert_equivalence.py can prove a faster converter sends Q the same.

The references must come from the converter as it was before a change, so run this on that
commit and commit its output; rerunning it after a change would only agree with itself. The
committed fixture was written by 7548b85's amq (main's converter), with this script copied in:

    git archive 7548b85 | tar -x -C /tmp/base && cp tests/convert_corpus.py /tmp/base/tests/
    (cd /tmp/base && python -m tests.convert_corpus) && cp /tmp/base/tests/data/*.json tests/data/

The corpus: every request the conversion and fuzz suites hand to convert_request (recorded by
wrapping it while pytest runs them, the fuzz suite at AMQ_FUZZ_EXAMPLES=300 with its fixed
seeds), the bench's requests, and Claude Code-shaped requests from tests.claude_code_requests
(regenerated from their seeds by the test, so only their outputs' digests are stored).

When the token estimate changes on purpose (the conversion must not), `--retoken OLD.py`
re-records only the estimates: each stored digest must first be reproduced by the current
converter with the estimate of OLD.py (the tokencount module the fixture was written with),
so the references of the conversion itself stay those of the commit named in the fixture.
OLD.py is amq/tokencount.py as it was before your change (its estimates are the stored ones):

    git show HEAD:amq/tokencount.py > /tmp/old_tokencount.py   # before committing the change
    python -m tests.convert_corpus --retoken /tmp/old_tokencount.py
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import amq.convert
import amq.tokencount

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "data" / "convert_equivalence.json"
RECORD_ENV = "AMQ_RECORD_CONVERT"  # the file the wrapped convert_request appends to
CONVERSATION_ID = "00000000-0000-4000-8000-000000000016"
MAX_INPUT_BYTES = 16_000  # the fuzz suite's 700 KB strings stay out of the fixture
# (size in bytes, seed) of the generated Claude Code-shaped requests
GENERATED = [(150_000, 0), (550_000, 0), (150_000, 1), (550_000, 7),
             *[(size, seed) for seed in range(20) for size in (3_000, 30_000)]]


def outcome(request, kwargs: dict, count=None) -> dict:
    """What convert_request makes of `request`, as plain JSON: the Q body and the maps (and the
    token estimate, by `count` if given), or the error it raises. The conversation id is fixed
    (else random)."""
    # The fixture's calls name the model and profile ARN as convert_request once took them;
    # Conversion.for_model adds them now.
    options = {"origin": kwargs.get("origin", "CLI"), "conversation_id": CONVERSATION_ID}
    try:
        conversion = amq.convert.convert_request(request, **options)
    except amq.convert.InvalidRequest as exc:
        return {"error": exc.message}
    conversion.for_model(kwargs.get("model_id", "claude-sonnet-4.5"), kwargs.get("profile_arn", ""))
    return {"body": conversion.body, "tool_names": conversion.tool_names,
            "skipped_tools": conversion.skipped_tools,
            "input_tokens": (count or amq.tokencount.count_request_tokens)(request)}


def digest(value) -> str:
    """SHA-256 of a JSON value in one canonical spelling (equal values, equal digests)."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


# -- recording: loaded into pytest with `-p tests.convert_corpus` -------------------------------

if os.environ.get(RECORD_ENV):
    _original = amq.convert.convert_request

    def _recording(request, **kwargs):
        try:
            line = json.dumps({"request": copy.deepcopy(request),
                               "kwargs": {k: v for k, v in kwargs.items() if k != "conversation_id"}},
                              ensure_ascii=True)
        except (TypeError, ValueError, RecursionError):
            line = None
        if line is not None and len(line) <= MAX_INPUT_BYTES:
            with open(os.environ[RECORD_ENV], "a", encoding="ascii") as out:
                out.write(line + "\n")
        return _original(request, **kwargs)

    amq.convert.convert_request = _recording  # before the suites import it by name


def record(path: Path) -> None:
    env = dict(os.environ, **{RECORD_ENV: str(path), "AMQ_FUZZ_EXAMPLES": "300"})
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                    "-p", "tests.convert_corpus", "tests/test_convert.py", "tests/test_fuzz_requests.py"],
                   cwd=ROOT, env=env, check=True)


def main() -> None:
    from bench.common import REQUESTS
    from tests.claude_code_requests import claude_code_request

    FIXTURE.parent.mkdir(exist_ok=True)
    path = FIXTURE.with_suffix(".recording")
    path.unlink(missing_ok=True)
    record(path)
    seen, cases = set(), []
    lines = path.read_text(encoding="ascii").splitlines()
    lines += [json.dumps({"request": r, "kwargs": {"model_id": "claude-sonnet-4.5"}}) for r in REQUESTS.values()]
    for line in lines:
        case = json.loads(line)
        key = json.dumps(case, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        expect = outcome(case["request"], case["kwargs"])
        # A refusal is kept as its message; a conversion as the digest of its value.
        case["expect"] = expect if "error" in expect else {"sha256": digest(expect)}
        cases.append(case)
    path.unlink()
    cases.sort(key=lambda case: json.dumps(case, sort_keys=True))
    generated = []
    for size, seed in GENERATED:
        request = claude_code_request(size, seed)
        kwargs = {"model_id": "claude-sonnet-4.5", "origin": "CLI", "profile_arn": ""}
        generated.append({"size": size, "seed": seed, "kwargs": kwargs,
                          "expect_sha256": digest(outcome(request, kwargs))})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    FIXTURE.write_text(json.dumps({"generated_by": "python -m tests.convert_corpus", "commit": commit,
                                   "conversation_id": CONVERSATION_ID, "cases": cases,
                                   "generated": generated}, ensure_ascii=True, separators=(",", ":")) + "\n")
    accepted = sum("error" not in case["expect"] for case in cases)
    print(f"{FIXTURE.relative_to(ROOT)}: {len(cases)} requests ({accepted} converted, "
          f"{len(cases) - accepted} refused), {len(generated)} generated")


def retoken(old_tokencount: Path) -> None:
    """Re-record the fixture's token estimates with the current estimate (see the docstring)."""
    import importlib.util

    from tests.claude_code_requests import claude_code_request

    spec = importlib.util.spec_from_file_location("amq.old_tokencount", old_tokencount)
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    fixture = json.loads(FIXTURE.read_text(encoding="ascii"))
    changed = 0

    def redo(request, kwargs, expected: str) -> str:
        nonlocal changed
        before = outcome(copy.deepcopy(request), kwargs, count=old.count_request_tokens)
        if digest(before) != expected:
            raise SystemExit(f"the current converter or OLD.py does not reproduce {expected}: {request!r:.300}")
        after = outcome(request, kwargs)
        changed += after["input_tokens"] != before["input_tokens"]
        return digest(after)

    for case in fixture["cases"]:
        if "sha256" in case["expect"]:
            case["expect"]["sha256"] = redo(case["request"], case["kwargs"], case["expect"]["sha256"])
    for generated in fixture["generated"]:
        request = claude_code_request(generated["size"], generated["seed"])
        generated["expect_sha256"] = redo(request, generated["kwargs"], generated["expect_sha256"])
    fixture["input_tokens"] = "re-recorded by python -m tests.convert_corpus --retoken"
    FIXTURE.write_text(json.dumps(fixture, ensure_ascii=True, separators=(",", ":")) + "\n")
    print(f"{FIXTURE.relative_to(ROOT)}: every conversion reproduced; {changed} token estimates changed")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--retoken"]:
        retoken(Path(sys.argv[2]))
    else:
        main()
