"""The converter sends Q the same as before it was made faster.

tests/data/convert_equivalence.json holds what convert_request made of a corpus of requests
(the conversion and fuzz suites' inputs, the bench's requests) and of generated Claude
Code-shaped ones, recorded by `python -m tests.convert_corpus` on the commit before the
speed work (the token estimates re-recorded since by `--retoken`, when the estimate changed on
purpose). Every conversion (and token estimate) must be the same JSON value, every refusal
the same message, whether the request is a plain dict (a direct caller, or a body only the
stdlib could read) or what amq's body parser returns; the body must also serialise for Q to
bytes that parse back to that value.
"""
from __future__ import annotations

import json

import pytest

from amq.jsonio import Checked, loads
from amq.upstream import encode_body
from tests.claude_code_requests import claude_code_request
from tests.convert_corpus import FIXTURE, digest, outcome

REFERENCE = json.loads(FIXTURE.read_text(encoding="ascii"))
CASES = REFERENCE["cases"]


def test_the_corpus_covers_conversions_and_refusals():
    converted = [case for case in CASES if "sha256" in case["expect"]]
    assert len(converted) >= 200 and len(CASES) - len(converted) >= 200
    assert len(REFERENCE["generated"]) >= 40


@pytest.mark.parametrize("start", range(0, len(CASES), 100), ids=lambda start: f"cases{start}")
def test_corpus_requests_convert_as_before(start):
    for index, case in enumerate(CASES[start:start + 100], start):
        for request in (case["request"], as_parsed(case["request"])):
            got = outcome(request, case["kwargs"])
            if "error" in case["expect"]:
                assert got == case["expect"], (index, type(request), case["request"])
            else:
                assert "error" not in got, (index, got, case["request"])
                assert digest(got) == case["expect"]["sha256"], (index, type(request), case["request"])
                assert json.loads(encode_body(got["body"])) == got["body"], index


@pytest.mark.parametrize("generated", REFERENCE["generated"], ids=lambda g: f"{g['size']}-{g['seed']}")
def test_claude_code_requests_convert_as_before(generated):
    request = claude_code_request(generated["size"], generated["seed"])
    for parsed in (request, as_parsed(request)):
        got = outcome(parsed, generated["kwargs"])
        assert digest(got) == generated["expect_sha256"], type(parsed)
        assert json.loads(encode_body(got["body"])) == got["body"]


def as_parsed(request):
    """`request` as amq's body parser reads it from the stdlib's JSON text of it."""
    return loads(json.dumps(request).encode())


def test_the_parser_takes_the_fast_path_for_most_of_the_corpus():
    """Both paths above are exercised: orjson reads most requests, the stdlib the rest."""
    kinds = [type(as_parsed(case["request"])) for case in CASES]
    assert kinds.count(Checked) >= len(CASES) // 2
    assert len(kinds) - kinds.count(Checked) >= 50


def test_a_changed_conversion_is_noticed():
    """The digest sees a one-character change deep in the body (the test above can fail)."""
    request = claude_code_request(3_000, 0)
    got = outcome(request, {"model_id": "claude-sonnet-4.5"})
    before = digest(got)
    got["body"]["conversationState"]["currentMessage"]["userInputMessage"]["content"] += "."
    assert digest(got) != before


def _nested(levels: int) -> dict:
    value: dict = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize("levels", [240, 249, 400, 700])
@pytest.mark.parametrize("where", ["tool input", "tool schema"])
def test_deep_tool_inputs_and_schemas_convert_as_plain_dicts_do(where, levels):
    """Past orjson's 255 levels the conversion takes the stdlib's path, which refuses a
    request nested too deeply for Python: a request amq's parser read must get the same."""
    if where == "tool input":
        request = {"model": "m", "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "n",
                                                "input": _nested(levels)}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]}]}
    else:
        request = {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                   "tools": [{"name": "n", "input_schema": _nested(levels)}]}
    parsed = as_parsed(request)
    assert isinstance(parsed, Checked)
    plain, read = outcome(request, {}), outcome(parsed, {})
    assert read == plain
    assert ("error" in read) == (levels >= 700), read.get("error")
