"""Claude Code-shaped Messages requests of a chosen size, the same for the same seed.

Claude Code resends the whole conversation at every turn, so a team's requests are large: a
long system prompt as blocks with cache_control, about twenty tools with JSON schemas, and
hundreds of assistant turns of thinking + text + tool_use, each answered by a user turn of
tool_result (file contents, command output, sometimes a list of text blocks) with the odd
system-reminder. The benchmark (bench/large_requests.py) and the conversion equivalence test
(tests/test_convert_equivalence.py) both use these; changing what a seed produces changes the
equivalence test's references, so add new shapes under new names instead.
"""
from __future__ import annotations

import json
import random

WORDS = ("the def return self value import from class if else for in not None True False request "  # noqa: SIM905
         "response stream token model tool_use result error config session worker gevent flask "
         "json dumps loads convert message content block text thinking assistant user system "
         "history current upstream amq proxy cache_control ephemeral schema properties required "
         "é ü ß 日本 語 — “quoted” ‘single’ → ✓ 😀 \\n \\t \" ' < > & { } [ ] ( ) : ; , .").split()
TOOL_NAMES = ("Task", "Bash", "Glob", "Grep", "LS", "ExitPlanMode", "Read", "Edit", "MultiEdit",
              "Write", "NotebookEdit", "WebFetch", "TodoWrite", "WebSearch", "BashOutput",
              "KillShell", "SlashCommand", "mcp__github__create_issue", "mcp__github__get_file",
              "mcp__ide__getDiagnostics")
SIZES = {"150k": 150_000, "550k": 550_000}


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def _code(rng: random.Random, lines: int) -> str:
    """Numbered source lines, as Read returns them (tabs, quotes, backslashes, non-ASCII)."""
    out = []
    indent = 0
    for n in range(1, lines + 1):
        indent = max(0, min(12, indent + rng.choice((-4, 0, 0, 4))))
        out.append(f"{n:6d}\t{' ' * indent}{_sentence(rng, rng.randint(2, 10))}")
    return "\n".join(out)


def _schema(rng: random.Random, name: str) -> dict:
    props = {}
    for k in range(rng.randint(1, 6)):
        kind = rng.choice(("string", "integer", "boolean", "array", "object", "enum"))
        prop: dict = {"description": _sentence(rng, rng.randint(5, 30))}
        if kind == "enum":
            prop.update(type="string", enum=[_sentence(rng, 1) for _ in range(3)])
        elif kind == "array":
            prop.update(type="array", items={"type": "object", "properties": {
                "content": {"type": "string", "minLength": 1},
                "status": {"type": "string", "enum": ["pending", "in_progress", "completed"]},
                "id": {"type": "string"}}, "required": ["content", "status", "id"],
                "additionalProperties": False})
        elif kind == "object":
            prop.update(type="object", additionalProperties={"type": "string"})
        else:
            prop["type"] = kind
        props[f"{name.lower()}_arg{k}"] = prop
    return {"type": "object", "properties": props, "required": sorted(props)[:2],
            "additionalProperties": False, "$schema": "http://json-schema.org/draft-07/schema#"}


def _tools(rng: random.Random) -> list[dict]:
    return [{"name": name, "description": _sentence(rng, rng.randint(60, 600)),
             "input_schema": _schema(rng, name)} for name in TOOL_NAMES]


def _system(rng: random.Random) -> list[dict]:
    return [{"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.",
             "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "\n\n".join(_sentence(rng, 80) for _ in range(25)),
             "cache_control": {"type": "ephemeral"}}]


def _tool_input(rng: random.Random, name: str) -> dict:
    if name == "Bash":
        return {"command": f"cd /repo && {_sentence(rng, 6)}", "description": _sentence(rng, 5),
                "timeout": rng.choice((120000, 600000))}
    if name in ("Read", "Write", "Edit"):
        out = {"file_path": f"/repo/src/{_sentence(rng, 1)}_{rng.randint(1, 99)}.py"}
        if name == "Edit":
            out.update(old_string=_code(rng, 3), new_string=_code(rng, 4), replace_all=False)
        if name == "Write":
            out["content"] = _code(rng, rng.randint(5, 30))
        return out
    if name == "TodoWrite":
        return {"todos": [{"content": _sentence(rng, 6), "status": rng.choice(("pending", "completed")),
                           "id": str(k), "priority": 0.5 * k} for k in range(rng.randint(1, 5))]}
    return {"pattern": _sentence(rng, 2), "path": "/repo", "head_limit": rng.randint(1, 50),
            "nested": {"flags": [True, False, None], "ratio": rng.random()}}


def _result_content(rng: random.Random):
    shape = rng.random()
    if shape < 0.6:
        return _code(rng, rng.randint(3, 40))
    if shape < 0.9:
        return [{"type": "text", "text": _code(rng, rng.randint(2, 20))},
                {"type": "text", "text": f"<system-reminder>{_sentence(rng, 20)}</system-reminder>"}]
    return ""


def claude_code_request(size: int, seed: int = 0, *, stream: bool = True) -> dict:
    """A request whose compact JSON is at least `size` bytes (and about that much)."""
    rng = random.Random(seed)
    request: dict = {"model": "claude-sonnet-4-5-20250929", "max_tokens": 32000, "stream": stream,
                     "metadata": {"user_id": f"user_{seed:08x}_account__session_{seed}"},
                     "system": _system(rng), "tools": _tools(rng),
                     "thinking": {"type": "enabled", "budget_tokens": 10000},
                     "messages": [{"role": "user", "content": [
                         {"type": "text", "text": f"<system-reminder>{_sentence(rng, 120)}</system-reminder>"},
                         {"type": "text", "text": _sentence(rng, 30)}]}]}
    used = len(json.dumps(request, ensure_ascii=False).encode())
    turn = 0
    while used < size - 2_000:
        turn += 1
        calls = rng.choice((1, 1, 1, 2, 3))
        blocks: list[dict] = []
        if rng.random() < 0.5:
            blocks.append({"type": "thinking", "thinking": _sentence(rng, rng.randint(10, 80)),
                           "signature": "Eq" + "".join(rng.choice("ABCDEFabcdef0123456789+/") for _ in range(120))})
        if rng.random() < 0.7:
            blocks.append({"type": "text", "text": _sentence(rng, rng.randint(3, 40))})
        ids = []
        for k in range(calls):
            name = rng.choice(TOOL_NAMES[:16])
            ids.append(f"toolu_01{seed:04d}{turn:04d}{k}{rng.randint(0, 10**6):06d}")
            blocks.append({"type": "tool_use", "id": ids[-1], "name": name, "input": _tool_input(rng, name)})
        results = [{"type": "tool_result", "tool_use_id": i, "content": _result_content(rng),
                    **({"is_error": True} if rng.random() < 0.05 else {})} for i in ids]
        if rng.random() < 0.1:
            results.append({"type": "text", "text": _sentence(rng, 15)})
        request["messages"] += [{"role": "assistant", "content": blocks}, {"role": "user", "content": results}]
        used += len(json.dumps(request["messages"][-2:], ensure_ascii=False).encode()) + 2
    request["messages"][-1]["content"].append({"type": "text", "text": _sentence(rng, 25),
                                               "cache_control": {"type": "ephemeral"}})
    return request


def sized_request(name: str, seed: int = 0, **kwargs) -> dict:
    """`claude_code_request` by size name: "150k" or "550k"."""
    return claude_code_request(SIZES[name], seed, **kwargs)
