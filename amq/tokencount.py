"""Token estimates for `usage` and count_tokens, where Q reports no figures of its own.

The estimate counts characters: of text and thinking as written, and of every other block
(tool uses with their input, documents...) and of the tool list as compact JSON. Compact JSON
is what orjson writes in one call for all of a request's blocks, a tenth of the stdlib's cost
on a Claude Code request: counting must stay cheap next to the conversion it accompanies.
"""
from __future__ import annotations

from .jsonio import dumps_text

CHARS_PER_TOKEN = 4  # Anthropic's own rule of thumb for English text and code
IMAGE_TOKENS = 1_600  # a typical image of ~1.15 megapixels (width*height/750)
BLOCK_OVERHEAD = 3  # characters per message content block (its framing), as before
TOOL_RESULT_OVERHEAD = 10  # characters per tool result around its content


def estimate_tokens(chars: int) -> int:
    return (chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def _blocks_chars(blocks, other: list) -> tuple[int, int]:
    """(characters, images) in content blocks, recursing into tool results; blocks counted
    by their JSON go to `other` instead, to be written in one call."""
    chars = images = 0
    for block in blocks:
        if isinstance(block, str):
            chars += len(block)
            continue
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" or kind == "thinking":  # each block's text is under its own type's name
            text = block.get(kind, "")
            chars += len(text) if isinstance(text, str) else len(str(text))
        elif kind == "tool_result":
            content = block.get("content")
            if isinstance(content, str):
                chars += len(content) + TOOL_RESULT_OVERHEAD
            else:
                c, i = _blocks_chars(content if isinstance(content, list) else (content or "",), other)
                chars, images = chars + c + TOOL_RESULT_OVERHEAD, images + i
        elif kind == "image":
            images += 1
        else:
            other.append(block)
    return chars, images


def _json_chars(values: list) -> int:
    """The summed characters of each of `values` as compact JSON, from one write of the list
    (its items joined by "," inside "[...]"). What orjson cannot write (lone surrogates,
    integers past 64 bits, non-string keys, deep nesting) the stdlib writes the same way;
    NaN and Infinity, which count_tokens refuses anyway, may count as orjson's "null"."""
    if not values:
        return 0
    return len(dumps_text(values)) - 2 - (len(values) - 1)


def count_request_tokens(request: dict) -> int:
    """Estimated input tokens over system, messages (all block kinds) and tools."""
    chars = images = 0
    other: list = []
    system = request.get("system")
    if isinstance(system, list):
        chars += _blocks_chars(system, other)[0]
    elif isinstance(system, str):
        chars += len(system)
    for message in request.get("messages") or ():
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        blocks = content if isinstance(content, list) else (content or "",)
        c, i = _blocks_chars(blocks, other)
        chars, images = chars + c + BLOCK_OVERHEAD * len(blocks), images + i
    chars += _json_chars(other)
    tools = request.get("tools")
    if isinstance(tools, list) and tools:
        chars += _json_chars([tools])
    return estimate_tokens(chars) + images * IMAGE_TOKENS
