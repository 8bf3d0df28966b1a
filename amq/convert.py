"""Converts an Anthropic Messages request into a Q GenerateAssistantResponse body (pure functions).

Q is strict about conversation shape (docs/amazon-q-api.md, "Conversation rules"): history
alternates user/assistant from a user turn, every tool use is answered in the next user turn,
tool names match a pattern and exist in the current tool list. Everything here exists to send only what Q accepts while
keeping every piece of the client's conversation.
"""
from __future__ import annotations

import binascii
import hashlib
import json
import math
import re
import uuid
from dataclasses import dataclass, field

import orjson

from .cooperative import give_way
from .errors import InvalidRequest
from .jsonio import Checked

MAX_DESCRIPTION = 10_240
MAX_IMAGES_PER_MESSAGE = 10
GIVE_WAY_EVERY = 100  # messages converted between two turns of a gevent worker's event loop
_NAME_OK = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_NAME_BAD_CHARS = re.compile(r"[^a-zA-Z0-9_-]")
# Tool names recur in every turn of every conversation: each is checked once per worker.
_Q_NAMES: dict[str, str] = {}
_Q_NAMES_KEPT = 4096
_Q_NAME_CACHED_LENGTH = 64  # Q's own limit: a longer name is rewritten on each use
# How deep a tool input and a tool schema sit in the Q conversation state (the state is 1).
_INPUT_LEVEL = 7  # history[].assistantResponseMessage.toolUses[].input
_SCHEMA_LEVEL = 9  # currentMessage.userInputMessage.userInputMessageContext.tools[].toolSpecification.inputSchema.json
# json.loads turns a "\\ud800" escape into a lone surrogate, which UTF-8 cannot encode.
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")
IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg",
                 "image/gif": "gif", "image/webp": "webp"}
# Placeholders where Q needs content the client did not give (docs/amazon-q-api.md, "Conversation rules").
EMPTY_USER = "(empty message)"
EMPTY_ASSISTANT = "(no text)"
EMPTY_TOOL_RESULT = "(no output)"
MISSING_TOOL_RESULT = "No result was sent for this tool call; treat it as not run."
CONTINUE_PREFILL = "Continue your previous message exactly where it ends, without repeating it."
CONTEXT_ACK = "Understood. I will follow these instructions."
STUB_TOOL_DESCRIPTION = ("This tool was used earlier in the conversation but is not offered now. "
                         "Do not call it.")
SERVER_TOOL_RESULT = re.compile(r"^[a-z_]+_tool_result$")
SERVER_TOOL_USES = {"server_tool_use", "mcp_tool_use"}
ASSISTANT_ONLY = {"tool_use", "thinking", "redacted_thinking"} | SERVER_TOOL_USES
USER_ONLY = {"tool_result", "image", "document", "search_result"}


@dataclass
class Conversion:
    """The Q request body plus what the response side needs to undo the conversion."""

    body: dict
    tool_names: dict[str, str] = field(default_factory=dict)  # Q name -> client's name
    skipped_tools: list[str] = field(default_factory=list)  # server tool types Q cannot run

    def for_model(self, model_id: str, profile_arn: str = "") -> dict:
        """The body with the Q model chosen (after validation, which needs no model)."""
        self.body["conversationState"]["currentMessage"]["userInputMessage"]["modelId"] = model_id
        if profile_arn:
            self.body["profileArn"] = profile_arn
        return self.body


def q_tool_name(name: str) -> str:
    """A name Q accepts, reversible through Conversion.tool_names (stable across turns)."""
    q_name = _Q_NAMES.get(name)
    if q_name is None:
        if _NAME_OK.match(name):
            q_name = name
        else:
            digest = hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
            q_name = _NAME_BAD_CHARS.sub("_", name)[:55] + "_" + digest
        if len(name) <= _Q_NAME_CACHED_LENGTH:  # a client's huge names must not pile up here
            if len(_Q_NAMES) >= _Q_NAMES_KEPT:
                _Q_NAMES.clear()
            _Q_NAMES[name] = q_name
    return q_name


def q_tool_use_id(tool_use_id: str) -> str:
    """Tool-use ids must match Q's pattern too; uses and results map the same way."""
    if _NAME_OK.match(tool_use_id):
        return tool_use_id
    return "tooluse_" + hashlib.sha1(tool_use_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class _Turn:
    """One Q message under construction: user or assistant parts in client order."""

    __slots__ = ("role", "texts", "images", "tool_results", "tool_uses", "client_names")

    def __init__(self, role: str):
        self.role = role
        self.texts: list[str] = []
        self.images: list[dict] = []
        self.tool_results: list[dict] = []
        self.tool_uses: list[dict] = []  # Q ToolUse objects, as they are sent
        self.client_names: list[str] = []  # the client's name of each tool use


def _check_unicode(name: str, where: str) -> None:
    """Tool names go back to the client in the answer, so they must be encodable text."""
    if _LONE_SURROGATE.search(name):
        raise InvalidRequest(f"{where}: holds a lone UTF-16 surrogate, which is not text")


def _block_at(i: int, j: int) -> str:
    """Where a content block is, for error messages (built only when one is raised: the
    conversion of a long conversation reads thousands of blocks)."""
    return f"messages.{i}.content.{j}"


def _wire_safe(value):
    """`value` as JSON text in UTF-8 can carry it, which is all Q reads.

    Lone surrogates (from "\\udXXX" escapes) become U+FFFD, as a UTF-8 decoder shows bad
    bytes: a cut emoji in a tool result must not end the conversation.

    :raises InvalidRequest: for NaN or Infinity, which JSON does not have.
    """
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_wire_safe(k): _wire_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_wire_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequest(f"the request holds {value}, which is not a JSON number")
    return value


def _is_wire_safe(request, turns: list[_Turn], specs: list[dict]) -> bool:
    """True when `_wire_safe(state)` would change nothing: a request orjson read (`Checked`)
    holds no lone surrogate and no non-finite number, and the conversion adds none. orjson
    must also be able to write the state (it stops at 255 levels of nesting, before Python's
    recursion limit): deeper requests take the scan, which refuses what it refused before.
    Only tool inputs and schemas carry the client's nesting into the state, so only they are
    written here, each at its depth in the state."""
    if not isinstance(request, Checked):
        return False
    inputs: list = [use["input"] for turn in turns for use in turn.tool_uses]
    schemas: list = [spec["toolSpecification"]["inputSchema"]["json"] for spec in specs]
    for _ in range(_INPUT_LEVEL - 2):
        inputs = [inputs]
    for _ in range(_SCHEMA_LEVEL - 2):
        schemas = [schemas]
    try:
        orjson.dumps(inputs)
        orjson.dumps(schemas)
    except TypeError:
        return False
    return True


def _text_of(value, where: str) -> str:
    """`system`-style content: a string or a list of text blocks."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for i, block in enumerate(value):
            if not isinstance(block, dict) or block.get("type") != "text":
                raise InvalidRequest(f"{where}.{i}: expected a text block")
            if not isinstance(block.get("text"), str):
                raise InvalidRequest(f"{where}.{i}.text: must be a string")
            parts.append(block["text"])
        return "\n\n".join(parts)
    raise InvalidRequest(f"{where}: must be a string or a list of text blocks")


def _image(block: dict, where: str) -> dict | str:
    """A Q ImageBlock, or a text note for sources Q cannot take (nothing is fetched)."""
    source = block.get("source")
    if not isinstance(source, dict):
        raise InvalidRequest(f"{where}.source: must be an object")
    if source.get("type") == "url":
        return f"[Image at {source.get('url')} (not fetched: amq forwards base64 images only)]"
    if source.get("type") != "base64":
        raise InvalidRequest(f"{where}.source.type: must be 'base64' or 'url'")
    fmt = IMAGE_FORMATS.get(str(source.get("media_type", "")).lower())
    if not fmt:
        raise InvalidRequest(
            f"{where}.source.media_type: must be one of image/png, image/jpeg, image/gif, image/webp"
        )
    data = source.get("data")
    if not isinstance(data, str) or not data:
        raise InvalidRequest(f"{where}.source.data: must be a non-empty base64 string")
    try:
        binascii.a2b_base64(data.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise InvalidRequest(f"{where}.source.data: is not valid base64") from None
    return {"format": fmt, "source": {"bytes": data}}


def _document_text(block: dict, where: str) -> str:
    """Documents become text: Q's document field exists only in its newest model."""
    source = block.get("source")
    if not isinstance(source, dict):
        raise InvalidRequest(f"{where}.source: must be an object")
    title = block.get("title") or "document"
    kind = source.get("type")
    if kind == "text":
        body = source.get("data")
        if not isinstance(body, str):
            raise InvalidRequest(f"{where}.source.data: must be a string")
    elif kind == "content":
        content = source.get("content")
        body = content if isinstance(content, str) else _text_of(
            [b for b in content if isinstance(b, dict) and b.get("type") == "text"]
            if isinstance(content, list) else content, f"{where}.source.content")
    else:
        return f"[Document '{title}' ({kind} source) omitted: amq forwards text documents only]"
    context = f"\n{block['context']}" if isinstance(block.get("context"), str) else ""
    return f"<document title=\"{title}\">{context}\n{body}\n</document>"


def _search_result_text(block: dict, where: str) -> str:
    content = block.get("content") or []
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}.content: must be a list of text blocks")
    parts = []
    for k, part in enumerate(content):
        if isinstance(part, dict):
            if not isinstance(part.get("text", ""), str):
                raise InvalidRequest(f"{where}.content.{k}.text: must be a string")
            parts.append(part.get("text", ""))
    return f"<search_result title=\"{block.get('title', '')}\" source=\"{block.get('source', '')}\">\n" \
           + "\n".join(parts) + "\n</search_result>"


def _tool_result(block: dict, i: int, j: int, turn: _Turn) -> dict:
    """A Q ToolResult; images inside it move to the message (Q results hold text/json only)."""
    tool_use_id = block.get("tool_use_id")
    if not isinstance(tool_use_id, str) or not tool_use_id:
        raise InvalidRequest(f"{_block_at(i, j)}.tool_use_id: must be a non-empty string")
    content = block.get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts: list[str] = []
        for k, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                part_text = part.get("text")
                if not isinstance(part_text, str):
                    raise InvalidRequest(f"{_block_at(i, j)}.content.{k}.text: must be a string")
                texts.append(part_text)
            else:
                _tool_result_part(part, kind, f"{_block_at(i, j)}.content.{k}", turn, texts)
        text = "\n".join(filter(None, texts))
    elif content is None:
        text = ""
    else:
        raise InvalidRequest(f"{_block_at(i, j)}.content: must be a string or a list of blocks")
    return {
        "toolUseId": q_tool_use_id(tool_use_id),
        "content": [{"text": text or EMPTY_TOOL_RESULT}],
        "status": "error" if block.get("is_error") else "success",
    }


def _tool_result_part(part, kind, where: str, turn: _Turn, texts: list[str]) -> None:
    """A tool result's content block other than text, as text in `texts`."""
    if kind == "image":
        image = _image(part, where)
        if isinstance(image, str):
            texts.append(image)
        else:
            turn.images.append(image)
            texts.append("[image attached to this message]")
    elif kind == "document":
        texts.append(_document_text(part, where))
    elif kind == "search_result":
        texts.append(_search_result_text(part, where))
    elif kind == "tool_reference":  # ToolSearch results (advanced-tool-use beta)
        texts.append(f"[tool reference: {json.dumps(part, ensure_ascii=False)[:500]}]")
    else:
        raise InvalidRequest(f"{where}.type: unsupported tool_result content {kind!r}")


def _add_block(turn: _Turn, block, i: int, j: int) -> None:
    """Block `j` of message `i` into `turn`. The kinds every long conversation is made of
    come first, checked in the order of `_add_other_block`'s checks."""
    kind = block.get("type") if isinstance(block, dict) else None
    if not isinstance(kind, str):
        raise InvalidRequest(f"{_block_at(i, j)}: must be an object with a string 'type'")
    if kind == "text":
        text = block.get("text")
        if not isinstance(text, str):
            raise InvalidRequest(f"{_block_at(i, j)}.text: must be a string")
        turn.texts.append(text)
    elif kind == "tool_result" and turn.role == "user":
        turn.tool_results.append(_tool_result(block, i, j, turn))
    elif kind == "tool_use" and turn.role == "assistant":
        tool_use_id = block.get("id")
        if not isinstance(tool_use_id, str) or not tool_use_id:
            raise InvalidRequest(f"{_block_at(i, j)}.id: must be a non-empty string")
        name = block.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"{_block_at(i, j)}.name: must be a non-empty string")
        if not name.isascii():  # the check, and its error's location, only where it can fail
            _check_unicode(name, f"{_block_at(i, j)}.name")
        tool_input = block.get("input", {})
        if not isinstance(tool_input, dict):
            raise InvalidRequest(f"{_block_at(i, j)}.input: must be an object")
        turn.tool_uses.append({"toolUseId": q_tool_use_id(tool_use_id), "name": q_tool_name(name),
                               "input": tool_input})
        turn.client_names.append(name)
    elif kind in ("thinking", "redacted_thinking") and turn.role == "assistant":
        pass  # Earlier turns' thinking is not model input (the Messages API drops it too).
    else:
        _add_other_block(turn, block, kind, _block_at(i, j))


def _add_other_block(turn: _Turn, block: dict, kind: str, where: str) -> None:
    """Every block `_add_block` does not take itself: its role checks come first."""
    if kind in ASSISTANT_ONLY and turn.role != "assistant":
        raise InvalidRequest(f"{where}.type: '{kind}' blocks are only allowed in assistant messages")
    if kind in USER_ONLY and turn.role != "user":
        raise InvalidRequest(f"{where}.type: '{kind}' blocks are only allowed in user messages")
    if kind == "image":
        image = _image(block, where)
        if isinstance(image, str):
            turn.texts.append(image)
        else:
            turn.images.append(image)
    elif kind == "document":
        turn.texts.append(_document_text(block, where))
    elif kind == "search_result":
        turn.texts.append(_search_result_text(block, where))
    elif kind in SERVER_TOOL_USES or SERVER_TOOL_RESULT.match(kind):
        # Q cannot replay server-tool turns; keep what happened as text.
        turn.texts.append(f"[{kind}: {json.dumps(block.get('input', block.get('content')))[:2000]}]")
    else:
        raise InvalidRequest(f"{where}.type: unknown content block type '{kind}'")


def _turns(messages) -> list[_Turn]:
    """Client messages as merged, alternating turns; `system` messages join as user text."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: must be a non-empty list")
    turns: list[_Turn] = []
    turn = None
    for i, message in enumerate(messages):
        if i % GIVE_WAY_EVERY == GIVE_WAY_EVERY - 1:
            give_way()  # a long conversation: the worker's other streams get their events
        if not isinstance(message, dict):
            raise InvalidRequest(f"messages.{i}: must be an object")
        role = message.get("role")
        if role == "assistant":
            q_role = "assistant"
        elif role == "user" or role == "system":
            q_role = "user"
        else:
            raise InvalidRequest(f"messages.{i}.role: must be 'user', 'assistant' or 'system', got {role!r}")
        if turn is None or turn.role != q_role:
            turn = _Turn(q_role)
            turns.append(turn)
        content = message.get("content")
        if role == "system":
            turn.texts.append(f"<system-reminder>\n{_text_of(content, f'messages.{i}.content')}\n</system-reminder>")
        elif isinstance(content, str):
            turn.texts.append(content)
        elif isinstance(content, list):
            for j, block in enumerate(content):
                _add_block(turn, block, i, j)
        else:
            raise InvalidRequest(f"messages.{i}.content: must be a string or a list of content blocks")
    return turns


def _tools(tools, context: list[str], skipped: list[str]) -> tuple[list[dict], dict[str, str]]:
    """Q tool specifications; long descriptions go whole into the prompt context, server
    tools' types into `skipped`."""
    if tools is None:
        return [], {}
    if not isinstance(tools, list):
        raise InvalidRequest("tools: must be a list")
    specs, names = [], {}
    for i, tool in enumerate(tools):
        where = f"tools.{i}"
        if not isinstance(tool, dict):
            raise InvalidRequest(f"{where}: must be an object")
        kind = tool.get("type")
        if kind not in (None, "custom") and "input_schema" not in tool:
            skipped.append(str(kind))  # a server tool (web_search_...): Q has none
            continue
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"{where}.name: must be a non-empty string")
        _check_unicode(name, f"{where}.name")
        schema = tool.get("input_schema", {"type": "object"})
        if not isinstance(schema, dict):
            raise InvalidRequest(f"{where}.input_schema: must be an object")
        q_name = q_tool_name(name)
        if q_name in names:
            raise InvalidRequest(f"{where}.name: duplicate tool name '{name}'")
        names[q_name] = name
        description = tool.get("description") or f"Tool {name}"
        if not isinstance(description, str):
            raise InvalidRequest(f"{where}.description: must be a string")
        if len(description) > MAX_DESCRIPTION:
            context.append(f"Full description of the tool `{q_name}`:\n{description}")
            note = "\n[Description shortened; the full text is in the system instructions.]"
            description = description[: MAX_DESCRIPTION - len(note)] + note
        specs.append({"toolSpecification": {"name": q_name, "description": description,
                                            "inputSchema": {"json": schema}}})
    return specs, names


def _tool_choice_text(choice) -> str | None:
    """Q has no tool_choice field, so the instruction travels in the prompt."""
    if not isinstance(choice, dict):
        return None
    kind = choice.get("type")
    if kind == "any":
        return "In your next response you must call at least one of the available tools."
    if kind == "tool" and choice.get("name"):
        return f"In your next response you must call the tool `{q_tool_name(str(choice['name']))}`."
    if kind == "none":
        return "In your next response do not call any tool."
    return None


def _unique_tool_use_ids(turns: list[_Turn]) -> None:
    """Q refuses a toolUseId used twice in one conversation: a repeated id gets a fresh one,
    and the results in the next user turn follow their uses in order (results always answer
    the turn just before them, so nothing becomes ambiguous)."""
    seen: set[str] = set()
    renamed: dict[str, list[str]] = {}  # client's Q id -> the ids its uses got, in order
    for turn in turns:
        if turn.role == "user":
            for result in turn.tool_results if renamed else ():
                queue = renamed.get(result["toolUseId"])
                if queue:
                    result["toolUseId"] = queue.pop(0)
            renamed = {}
            continue
        renamed = {}
        uses = turn.tool_uses
        ids = {use["toolUseId"] for use in uses}
        if len(ids) == len(uses) and seen.isdisjoint(ids):
            seen |= ids  # every id new (the common case): every result keeps its id
            continue
        for use in uses:
            original = new = use["toolUseId"]
            n = 1
            while new in seen:
                n += 1
                new = f"{original[:63 - len(str(n))]}_{n}"  # still [a-zA-Z0-9_-]{1,64}
            seen.add(new)
            use["toolUseId"] = new
            renamed.setdefault(original, []).append(new)


def _pair_tool_results(turns: list[_Turn]) -> None:
    """Each tool use answered in the very next user turn, nothing else (rule 2 of
    docs/amazon-q-api.md, "Conversation rules").

    A missing result becomes an error result; a result that answers no tool use of the
    preceding assistant turn is kept as text, so nothing the client sent is lost.
    """
    previous_uses: list[str] = []
    for turn in turns:
        if turn.role == "assistant":
            previous_uses = [use["toolUseId"] for use in turn.tool_uses]
            continue
        if not previous_uses and not turn.tool_results:
            continue
        by_id = {}
        for result in turn.tool_results:
            if result["toolUseId"] in previous_uses and result["toolUseId"] not in by_id:
                by_id[result["toolUseId"]] = result
            else:
                text = result["content"][0]["text"]
                turn.texts.insert(0, f"[Result of tool call {result['toolUseId']}"
                                     f"{' (error)' if result['status'] == 'error' else ''}]: {text}")
        turn.tool_results = [
            by_id.get(use_id) or {"toolUseId": use_id, "status": "error",
                                  "content": [{"text": MISSING_TOOL_RESULT}]}
            for use_id in previous_uses
        ]
        previous_uses = []


def _user_message(turn: _Turn, origin: str, *, current: bool) -> dict:
    content = "\n\n".join(filter(None, turn.texts))
    if not content and not turn.tool_results and (current or not turn.images):
        content = EMPTY_USER
    message: dict = {"content": content, "origin": origin}
    images = turn.images
    if len(images) > MAX_IMAGES_PER_MESSAGE:
        dropped = len(images) - MAX_IMAGES_PER_MESSAGE
        images = images[-MAX_IMAGES_PER_MESSAGE:]
        message["content"] = (f"[{dropped} earlier image(s) omitted: Amazon Q accepts at most "
                              f"{MAX_IMAGES_PER_MESSAGE} per message]\n\n" + message["content"])
    if images:
        message["images"] = images
    if turn.tool_results:
        message["userInputMessageContext"] = {"toolResults": turn.tool_results}
    return {"userInputMessage": message}


def _assistant_message(turn: _Turn) -> dict:
    content = "\n\n".join(filter(None, turn.texts))
    message: dict = {"content": content or ("" if turn.tool_uses else EMPTY_ASSISTANT)}
    if turn.tool_uses:
        message["toolUses"] = turn.tool_uses
    return {"assistantResponseMessage": message}


def convert_request(request: dict, *, origin: str, conversation_id: str | None = None) -> Conversion:
    """The whole conversion: check each block, merge, pair, and lay out history and currentMessage.

    The body has no model yet: `Conversion.for_model` adds it (and the profile ARN) once the
    request is valid and its model resolved.

    :raises InvalidRequest: naming the offending field.
    """
    context: list[str] = []
    if request.get("system") not in (None, "", []):
        context.append(_text_of(request["system"], "system"))
    skipped: list[str] = []
    specs, tool_names = _tools(request.get("tools"), context, skipped)
    choice = _tool_choice_text(request.get("tool_choice"))
    if choice:
        context.append(choice)

    turns = _turns(request.get("messages"))
    if turns[0].role == "assistant":
        turns.insert(0, _Turn("user"))  # history must open with a user turn
    if turns[-1].role == "assistant":
        prefill = _Turn("user")  # Q has no prefill: ask for the continuation instead
        prefill.texts.append(CONTINUE_PREFILL)
        turns.append(prefill)
    _unique_tool_use_ids(turns)
    _pair_tool_results(turns)

    # Tool names used in history must exist in the current tool list (rule 3 of
    # docs/amazon-q-api.md, "Conversation rules").
    for turn in turns:
        for use, client_name in zip(turn.tool_uses, turn.client_names, strict=True):
            if use["name"] not in tool_names:
                tool_names[use["name"]] = client_name
                specs.append({"toolSpecification": {
                    "name": use["name"], "description": STUB_TOOL_DESCRIPTION,
                    "inputSchema": {"json": {"type": "object", "properties": {}}}}})

    history: list[dict] = []
    if context:
        history.append({"userInputMessage": {"content": "\n\n".join(context), "origin": origin}})
        history.append({"assistantResponseMessage": {"content": CONTEXT_ACK}})
    for turn in turns[:-1]:
        history.append(_user_message(turn, origin, current=False) if turn.role == "user"
                       else _assistant_message(turn))

    current = _user_message(turns[-1], origin, current=True)
    if specs:
        current["userInputMessage"].setdefault("userInputMessageContext", {})["tools"] = specs

    state: dict = {"conversationId": conversation_id or str(uuid.uuid4()),
                   "chatTriggerType": "MANUAL", "currentMessage": current}
    if history:
        state["history"] = history
    try:
        body: dict = {"conversationState": state if _is_wire_safe(request, turns, specs) else _wire_safe(state)}
    except RecursionError:
        raise InvalidRequest("the request is nested too deeply") from None
    if len(turns) >= GIVE_WAY_EVERY:
        give_way()  # before the upstream call of a long conversation
    return Conversion(body=body, tool_names=tool_names, skipped_tools=skipped)
