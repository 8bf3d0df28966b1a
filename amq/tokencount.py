"""Token estimates for `usage` and count_tokens, where Q reports no figures of its own."""
from __future__ import annotations

import json

from .cooperative import give_way

CHARS_PER_TOKEN = 4  # Anthropic's own rule of thumb for English text and code
IMAGE_TOKENS = 1_600  # a typical image of ~1.15 megapixels (width*height/750)
LARGE_BLOCK_COUNT = 100  # blocks measured as JSON: past this, the gevent loop gets a turn first


def estimate_tokens(chars: int) -> int:
    return (chars + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def _block_chars(block, other: list) -> tuple[int, int]:
    """(characters, images) in one content block, recursing into tool results; blocks counted
    by their JSON length go to `other` instead, to be written in one call."""
    if isinstance(block, str):
        return len(block), 0
    if not isinstance(block, dict):
        return 0, 0
    kind = block.get("type")
    if kind == "text":
        return len(str(block.get("text", ""))), 0
    if kind == "image":
        return 0, 1
    if kind == "thinking":
        return len(str(block.get("thinking", ""))), 0
    if kind == "tool_result":
        content = block.get("content")
        parts = content if isinstance(content, list) else [content or ""]
        chars = images = 0
        for part in parts:
            c, i = _block_chars(part, other)
            chars, images = chars + c, images + i
        return chars + 10, images
    other.append(block)
    return 0, 0


def _json_chars(blocks: list) -> int:
    """The summed len(json.dumps(block)) of `blocks`, from one json.dumps of the list: its
    items are written the same way, joined by ", " inside "[...]"."""
    if not blocks:
        return 0
    return len(json.dumps(blocks, ensure_ascii=False)) - 2 - 2 * (len(blocks) - 1)


def count_request_tokens(request: dict) -> int:
    """Estimated input tokens over system, messages (all block kinds) and tools."""
    chars = images = 0
    other: list = []
    system = request.get("system")
    if isinstance(system, list):
        for block in system:
            chars += _block_chars(block, other)[0]
    elif isinstance(system, str):
        chars += len(system)
    for message in request.get("messages") or []:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        for block in content if isinstance(content, list) else [content or ""]:
            c, i = _block_chars(block, other)
            chars, images = chars + c + 3, images + i
    if len(other) >= LARGE_BLOCK_COUNT:
        give_way()  # the blocks of a long conversation are counted in two steps, not one
    chars += _json_chars(other)
    tools = request.get("tools")
    if isinstance(tools, list) and tools:
        chars += len(json.dumps(tools, ensure_ascii=False))
    return estimate_tokens(chars) + images * IMAGE_TOKENS
