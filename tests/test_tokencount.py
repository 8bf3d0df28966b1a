"""The token estimate's definition (README, "Token counts"): characters of text and thinking,
compact JSON characters of every other block and of the tool list, 1,600 per image."""
import json

from amq.tokencount import count_request_tokens, estimate_tokens


def compact(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "Bash",
            "input": {"command": "ls \"é\"\n", "timeout": 120000, "ratio": 0.25, "flags": [True, None]}}


def test_text_counts_characters_not_bytes():
    request = {"messages": [{"role": "user", "content": [{"type": "text", "text": "é😀 日本"}]}]}
    assert count_request_tokens(request) == estimate_tokens(5 + 3)  # 5 characters + block framing


def test_other_blocks_and_tools_count_their_compact_json():
    tools = [{"name": "Bash", "description": "Runs “a” command", "input_schema": {"type": "object"}}]
    request = {"system": "sys", "tools": tools, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm"}, TOOL_USE]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": [{"type": "text", "text": "out"},
                                                  {"type": "image", "source": {}}]}]}]}
    chars = (3 + (2 + 3) + (2 + 3) + (len(compact(TOOL_USE)) + 3) + (3 + 10 + 3)
             + len(compact(tools)))
    assert count_request_tokens(request) == estimate_tokens(chars) + 1_600


def test_blocks_orjson_cannot_write_count_the_same_way():
    """Integers past 64 bits and lone surrogates (a request only the stdlib could read) go
    through the stdlib, written as compactly."""
    odd = {"type": "server_tool_use", "input": {"n": 2 ** 80, "s": "cut \ud83d"}}
    request = {"messages": [{"role": "assistant", "content": [odd, TOOL_USE]}]}
    chars = len(compact(odd)) + 3 + len(compact(TOOL_USE)) + 3
    assert count_request_tokens(request) == estimate_tokens(chars)
