"""A strict local fake of Amazon Q's GenerateAssistantResponse and the SSO-OIDC token endpoint.

The fake exists so amq's tests meet an upstream at least as picky as the real one
(docs/amazon-q-api.md: "Request body" and "Conversation rules" for the body, "Response stream",
"Errors" and docs/event-stream.md for the answer, "Models" for ListAvailableModels;
docs/oidc.md for /token). Tests script the answers with the reply builders (`text_reply`,
`tool_reply`, `events_reply`, `raw_reply`, `http_error`) and inspect what amq sent through
`FakeQ.requests`, `FakeQ.token_requests` and `FakeQ.rejections`.

The OIDC side (docs/oidc.md) has RegisterClient, StartDeviceAuthorization and CreateToken for the
refresh-token and device-code grants. Refresh tokens rotate at every refresh (the old one stops
working at once, also when the client never reads the answer); the device flow answers
authorization_pending until `approve(user_code)`, slow_down to polls faster than the interval,
expired_token after `device_expires_in`. `token_log` records every CreateToken outcome.

Streams go out as HTTP/1.1 chunked bodies cut into uneven, seeded chunk sizes, so event-stream
frames straddle chunk boundaries the way they do over a real network.

Run it by hand with `python -m tests.fakeq --port 8900` (see `main`).
"""
from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import json
import logging
import random
import re
import select
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

from .eventstream_encode import encode_event

logger = logging.getLogger(__name__)

DEFAULT_MODELS = ["claude-sonnet-4.5", "claude-sonnet-4", "claude-haiku-4.5", "claude-opus-4.5",
                  "claude-3.7-sonnet", "claude-sonnet-4.6", "claude-opus-4.6", "claude-opus-4.7", "auto"]

GAR_TARGET = "AmazonCodeWhispererStreamingService.GenerateAssistantResponse"
LIST_MODELS_TARGET = "AmazonCodeWhispererService.ListAvailableModels"
RPC_CONTENT_TYPE = "application/x-amz-json-1.0"
REST_CONTENT_TYPE = "application/json"
EVENTSTREAM_CONTENT_TYPE = "application/vnd.amazon.eventstream"
CW_ERROR_SUFFIX = ":http://internal.amazon.com/coral/com.amazon.aws.codewhisperer/"
OIDC_ERROR_SUFFIX = ":http://internal.amazon.com/coral/com.amazonaws.sso.oidc/"

IMPROPER = "Improperly formed request."
TOO_LONG = "Input is too long."
INVALID_MODEL = "Invalid model. Please select a different model to continue the conversation."
BAD_BEARER = "The bearer token included in the request is invalid."
MAX_BODY_BYTES = 2_000_000  # whole-request ceiling is UNCONFIRMED (docs/amazon-q-api.md, "Limits"); generous

# Field lists from docs/amazon-q-api.md, "Request body"; anything else is rejected.
TOP_KEYS = {"conversationState", "profileArn", "agentMode"}
STATE_KEYS = {"conversationId", "workspaceId", "history", "currentMessage", "chatTriggerType",
              "customizationArn", "agentContinuationId", "agentTaskType"}
USER_KEYS = {"content", "userInputMessageContext", "userIntent", "origin", "images", "modelId",
             "cachePoint", "clientCacheConfig", "documents"}
CONTEXT_KEYS = {"envState", "editorState", "shellState", "gitState", "appStudioContext", "diagnostic",
                "consoleState", "userSettings", "additionalContext", "toolResults", "tools"}
ASSISTANT_KEYS = {"messageId", "content", "toolUses", "supplementaryWebLinks", "references",
                  "followupPrompt", "cachePoint", "reasoningContent"}
ENV_STATE_KEYS = {"operatingSystem", "currentWorkingDirectory", "environmentVariables", "timezoneOffset"}
ORIGINS = {"AI_EDITOR", "CHATBOT", "CLI", "CONSOLE", "DOCUMENTATION", "GITLAB", "IDE", "INLINE_CHAT",
           "KIRO_CLI", "MARKETING", "MD", "MD_CE", "MD_IDE", "MOBILE", "OPENSEARCH_DASHBOARD", "Q_DEV_BEXT",
           "SAGE_MAKER", "SERVICE_INTERNAL", "SM_AI_STUDIO_IDE", "UNIFIED_SEARCH", "UNKNOWN"}
USER_INTENTS = {"SUGGEST_ALTERNATE_IMPLEMENTATION", "APPLY_COMMON_BEST_PRACTICES", "IMPROVE_CODE",
                "SHOW_EXAMPLES", "CITE_SOURCES", "EXPLAIN_LINE_BY_LINE", "EXPLAIN_CODE_SELECTION",
                "GENERATE_CLOUDFORMATION_TEMPLATE", "GENERATE_UNIT_TESTS", "CODE_GENERATION"}
TRIGGERS = {"MANUAL", "DIAGNOSTIC", "INLINE_CHAT"}
IMAGE_FORMATS = {"png", "jpeg", "gif", "webp"}
ID_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # tool names and toolUseIds alike
PROFILE_ARN_RE = re.compile(r"^arn:aws:(codewhisperer|transform):[-.a-z0-9]{1,63}:\d{12}:profile/[a-zA-Z0-9]{12}$")


# --------------------------------------------------------------------------- validation

class Rejection(str):
    """A validation failure message; `reason` is the service's reason code (None for the plain 400)."""

    reason: str | None = None

    def __new__(cls, message: str, reason: str | None = None):
        obj = super().__new__(cls, message)
        obj.reason = reason
        return obj


class _Invalid(Exception):
    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason


def _require(ok, message: str, reason: str | None = None):
    if not ok:
        raise _Invalid(message, reason)


def _check_keys(obj, allowed: set, where: str):
    _require(isinstance(obj, dict), f"{where} must be an object")
    unknown = sorted(set(obj) - allowed)
    _require(not unknown, f"unknown key(s) {unknown} in {where}")
    nulls = sorted(k for k, v in obj.items() if v is None)
    _require(not nulls, f"null value(s) for {nulls} in {where}")


def _union(obj, members: set, where: str) -> tuple[str, object]:
    """Unions are objects with exactly one member key (docs/amazon-q-api.md, "Request body")."""
    _require(isinstance(obj, dict) and len(obj) == 1 and next(iter(obj)) in members,
             f"{where} must be exactly one of {sorted(members)}")
    key = next(iter(obj))
    return key, obj[key]


def validate_request(body, models=DEFAULT_MODELS, *, max_content_chars: int = 600_000,
                     body_bytes: int | None = None) -> Rejection | None:
    """Return why the real service would refuse `body` (a Rejection, i.e. a str), or None if it is fine.

    `body_bytes` is the raw request size; computed from `body` when not given.
    """
    try:
        _validate(body, models, max_content_chars, body_bytes)
    except _Invalid as exc:
        return Rejection(str(exc), exc.reason)
    return None


def _validate(body, models, max_content_chars, body_bytes):
    _check_keys(body, TOP_KEYS, "request body")
    if body_bytes is None:
        body_bytes = len(json.dumps(body, ensure_ascii=False).encode("utf-8"))
    _require(body_bytes <= MAX_BODY_BYTES, f"request body is {body_bytes} bytes (> {MAX_BODY_BYTES})",
             "CONTENT_LENGTH_EXCEEDS_THRESHOLD")
    _require("conversationState" in body, "missing conversationState")
    if "profileArn" in body:
        _require(isinstance(body["profileArn"], str) and PROFILE_ARN_RE.match(body["profileArn"]),
                 "profileArn does not match the profile ARN pattern")
    if "agentMode" in body:
        _require(isinstance(body["agentMode"], str), "agentMode must be a string")

    state = body["conversationState"]
    _check_keys(state, STATE_KEYS, "conversationState")
    _require(state.get("chatTriggerType") in TRIGGERS, f"chatTriggerType must be one of {sorted(TRIGGERS)}")
    if "conversationId" in state:
        cid = state["conversationId"]
        _require(isinstance(cid, str) and 1 <= len(cid) <= 128, "conversationId must be 1-128 chars")
    for key in ("workspaceId", "agentContinuationId"):
        if key in state:
            _require(isinstance(state[key], str) and len(state[key]) == 36, f"{key} must be a 36-char UUID")
    if "customizationArn" in state:
        _require(isinstance(state["customizationArn"], str) and len(state["customizationArn"]) <= 1224,
                 "customizationArn must be a string of at most 1224 chars")
    if "agentTaskType" in state:
        _require(state["agentTaskType"] in ("vibe", "spectask"), "agentTaskType must be vibe or spectask")

    _require("currentMessage" in state, "missing currentMessage")
    current = state["currentMessage"]
    _require(isinstance(current, dict) and list(current) == ["userInputMessage"],
             'currentMessage must be exactly {"userInputMessage": {...}}')
    history = state.get("history", [])
    _require(isinstance(history, list), "history must be a list")

    # Each entry as (role, message); the current message closes the list.
    turns = []
    for i, entry in enumerate(history):
        role, msg = _union(entry, {"userInputMessage", "assistantResponseMessage"}, f"history[{i}]")
        turns.append((role, msg, f"history[{i}]"))
    turns.append(("userInputMessage", current["userInputMessage"], "currentMessage"))

    for i, (role, _msg, where) in enumerate(turns):
        expected = "userInputMessage" if i % 2 == 0 else "assistantResponseMessage"
        _require(role == expected, f"{where} is a {role} but history must alternate user/assistant "
                 "starting with a user message and end with an assistant message")

    for role, msg, where in turns:
        if role == "userInputMessage":
            _check_user(msg, where, models, max_content_chars, is_current=where == "currentMessage")
        else:
            _check_assistant(msg, where)
    _check_tool_pairing(turns)


def _check_user(msg, where, models, max_content_chars, *, is_current):
    _check_keys(msg, USER_KEYS, where)
    _require(isinstance(msg.get("content"), str), f"{where}.content missing or not a string")
    _require(len(msg["content"]) <= max_content_chars,
             f"{where}.content has {len(msg['content'])} chars (> {max_content_chars})",
             "CONTENT_LENGTH_EXCEEDS_THRESHOLD")
    if "origin" in msg:
        _require(msg["origin"] in ORIGINS, f"{where}.origin {msg['origin']!r} is not a known Origin")
    if "userIntent" in msg:
        _require(msg["userIntent"] in USER_INTENTS, f"{where}.userIntent is not a known UserIntent")
    if "modelId" in msg:
        _require(msg["modelId"] in models, f"{where}.modelId {msg['modelId']!r} is not an available model",
                 "INVALID_MODEL_ID")
    if "cachePoint" in msg:
        _require(msg["cachePoint"] == {"type": "default"}, f'{where}.cachePoint must be {{"type": "default"}}')
    images = msg.get("images", [])
    _require(isinstance(images, list) and len(images) <= 10, f"{where}.images must be a list of at most 10")
    for j, image in enumerate(images):
        _check_image(image, f"{where}.images[{j}]")

    ctx = msg.get("userInputMessageContext", {})
    _check_keys(ctx, CONTEXT_KEYS, f"{where}.userInputMessageContext")
    if "envState" in ctx:
        _check_env_state(ctx["envState"], f"{where}.userInputMessageContext.envState")
    _require(is_current or "tools" not in ctx, f"{where} carries tools; tools belong on currentMessage only")
    if "tools" in ctx:
        _check_tools(ctx["tools"], where)
    results = ctx.get("toolResults", [])
    _require(isinstance(results, list), f"{where}.toolResults must be a list")
    for j, result in enumerate(results):
        _check_tool_result(result, f"{where}.toolResults[{j}]")
    if is_current:
        _require(msg["content"] or results or images,
                 "currentMessage has empty content and neither toolResults nor images")


def _check_image(image, where):
    _check_keys(image, {"format", "source"}, where)
    _require(image.get("format") in IMAGE_FORMATS, f"{where}.format must be one of {sorted(IMAGE_FORMATS)}")
    source = image.get("source")
    _require(isinstance(source, dict) and list(source) == ["bytes"] and isinstance(source["bytes"], str),
             f'{where}.source must be {{"bytes": "<base64>"}}')
    try:
        raw = base64.b64decode(source["bytes"], validate=True)
    except (binascii.Error, ValueError):
        raise _Invalid(f"{where}.source.bytes is not valid base64") from None
    _require(raw, f"{where}.source.bytes is empty")


def _check_env_state(env, where):
    _check_keys(env, ENV_STATE_KEYS, where)
    if "operatingSystem" in env:
        _require(env["operatingSystem"] in ("macos", "linux", "windows"), f"{where}.operatingSystem invalid")
    if "currentWorkingDirectory" in env:
        cwd = env["currentWorkingDirectory"]
        _require(isinstance(cwd, str) and 1 <= len(cwd) <= 256, f"{where}.currentWorkingDirectory must be 1-256 chars")
    if "timezoneOffset" in env:
        tz = env["timezoneOffset"]
        _require(isinstance(tz, int) and -1440 <= tz <= 1440, f"{where}.timezoneOffset out of range")
    variables = env.get("environmentVariables", [])
    _require(isinstance(variables, list) and len(variables) <= 100, f"{where}.environmentVariables invalid")


def _check_tools(tools, where):
    _require(isinstance(tools, list), f"{where}.tools must be a list")
    seen = set()
    for j, tool in enumerate(tools):
        here = f"{where}.tools[{j}]"
        kind, spec = _union(tool, {"toolSpecification", "cachePoint"}, here)
        if kind == "cachePoint":
            _require(spec == {"type": "default"}, f'{here}.cachePoint must be {{"type": "default"}}')
            continue
        _check_keys(spec, {"name", "description", "inputSchema"}, f"{here}.toolSpecification")
        name = spec.get("name")
        _require(isinstance(name, str) and ID_RE.match(name), f"{here} name {name!r} must match [a-zA-Z0-9_-]{{1,64}}")
        _require(name not in seen, f"duplicate tool name {name!r}")
        seen.add(name)
        if "description" in spec:
            desc = spec["description"]
            _require(isinstance(desc, str) and 1 <= len(desc) <= 10240,
                     f"{here} description must be 1-10240 chars (got {len(desc) if isinstance(desc, str) else desc!r})")
        schema = spec.get("inputSchema")
        _require(isinstance(schema, dict) and list(schema) == ["json"], f'{here} inputSchema must be {{"json": ...}}')


def _check_tool_result(result, where):
    _check_keys(result, {"toolUseId", "content", "status"}, where)
    _require(isinstance(result.get("toolUseId"), str) and ID_RE.match(result["toolUseId"]),
             f"{where}.toolUseId must match [a-zA-Z0-9_-]{{1,64}}")
    content = result.get("content")
    _require(isinstance(content, list) and content, f"{where}.content must be a non-empty list")
    for k, block in enumerate(content):
        kind, value = _union(block, {"text", "json"}, f"{where}.content[{k}]")
        _require(kind == "json" or isinstance(value, str), f"{where}.content[{k}].text must be a string")
    if "status" in result:
        _require(result["status"] in ("success", "error"), f"{where}.status must be success or error")


def _check_assistant(msg, where):
    _check_keys(msg, ASSISTANT_KEYS, where)
    _require(isinstance(msg.get("content"), str), f"{where}.content missing or not a string")
    if "messageId" in msg:
        _require(isinstance(msg["messageId"], str) and len(msg["messageId"]) <= 128, f"{where}.messageId invalid")
    uses = msg.get("toolUses", [])
    _require(isinstance(uses, list), f"{where}.toolUses must be a list")
    for j, use in enumerate(uses):
        here = f"{where}.toolUses[{j}]"
        _check_keys(use, {"toolUseId", "name", "input"}, here)
        _require({"toolUseId", "name", "input"} <= set(use), f"{here} needs toolUseId, name and input")
        _require(isinstance(use["toolUseId"], str) and ID_RE.match(use["toolUseId"]),
                 f"{here}.toolUseId {use['toolUseId']!r} must match [a-zA-Z0-9_-]{{1,64}}")
        _require(isinstance(use["name"], str), f"{here}.name must be a string")
        _require(isinstance(use["input"], dict), f"{here}.input must be a JSON object")
    if "reasoningContent" in msg:
        _union(msg["reasoningContent"], {"reasoningText", "redactedContent"}, f"{where}.reasoningContent")


def _check_tool_pairing(turns):
    """Tool uses and results pair up across adjacent turns, names come from `tools` (rules 1-3
    of docs/amazon-q-api.md, "Conversation rules")."""
    current_ctx = turns[-1][1].get("userInputMessageContext", {})
    names = {t["toolSpecification"]["name"] for t in current_ctx.get("tools", []) if "toolSpecification" in t}
    all_ids = set()
    pending: dict[str, str] = {}  # tool uses of the previous assistant turn awaiting results
    for i, (role, msg, where) in enumerate(turns):
        if role == "assistantResponseMessage":
            pending = {}
            for use in msg.get("toolUses", []):
                _require(names, f"{where} has toolUse {use['name']!r} but currentMessage offers no tools")
                _require(use["name"] in names, f"{where} toolUse name {use['name']!r} is not in currentMessage tools")
                _require(use["toolUseId"] not in all_ids, f"duplicate toolUseId {use['toolUseId']!r}")
                all_ids.add(use["toolUseId"])
                pending[use["toolUseId"]] = use["name"]
            continue
        results = msg.get("userInputMessageContext", {}).get("toolResults", [])
        _require(i > 0 or not results, f"{where} carries toolResults in the first user message")
        answered = set()
        for result in results:
            rid = result["toolUseId"]
            _require(rid not in answered, f"{where} answers toolUseId {rid!r} twice")
            _require(rid in pending, f"{where} has a toolResult {rid!r} that answers no toolUse "
                                     "of the preceding assistant message")
            answered.add(rid)
        missing = sorted(set(pending) - answered)
        _require(not missing, f"{where} lacks toolResults for toolUseIds {missing} of the preceding assistant message")
        pending = {}


# --------------------------------------------------------------------------- scripted replies

_METADATA = ("messageMetadataEvent", None)  # filled in with the request's conversationId when sent


@dataclass
class Reply:
    """One scripted answer to a GenerateAssistantResponse call.

    `items` are (event_type, payload) pairs or pre-encoded frame bytes. A non-200 `status` makes it a
    plain JSON error (then `delay` waits before answering and `hang` never answers).
    """

    items: list = field(default_factory=list)
    status: int = 200
    error_body: dict | None = None
    headers: dict = field(default_factory=dict)
    delay: float = 0
    cut_after: int | None = None
    hang: bool = False
    seed: int = 0

    def frames(self, conversation_id: str | None = None) -> list[bytes]:
        """Encode the items; the metadata placeholder gets the conversation id, like the service's."""
        out = []
        for item in self.items:
            if item is _METADATA:
                item = ("messageMetadataEvent", {"conversationId": conversation_id or str(uuid.uuid4()),
                                                 "utteranceId": str(uuid.uuid4())})
            out.append(item if isinstance(item, bytes) else encode_event(*item))
        return out


def _split(text: str, pieces: int) -> list[str]:
    pieces = max(1, min(pieces, len(text) or 1))
    size, extra = divmod(len(text), pieces)
    out, pos = [], 0
    for i in range(pieces):
        end = pos + size + (1 if i < extra else 0)
        out.append(text[pos:end])
        pos = end
    return out


def text_reply(text: str, *, chunks: int = 3, **options) -> Reply:
    """A messageMetadataEvent, then `text` as `chunks` assistantResponseEvent frames."""
    events = [("assistantResponseEvent", {"content": piece}) for piece in _split(text, chunks)]
    return Reply([_METADATA, *events], **options)


def tool_reply(name: str, input: dict, *, tool_use_id: str | None = None, text: str | None = None,
               fragments: int = 3, **options) -> Reply:
    """Metadata, optional text, then one tool call streamed as string fragments
    (docs/amazon-q-api.md, "Response stream")."""
    tool_use_id = tool_use_id or "tooluse_" + uuid.uuid4().hex[:22]
    items = [_METADATA]
    if text:
        items.append(("assistantResponseEvent", {"content": text}))
    head = {"toolUseId": tool_use_id, "name": name}
    items.append(("toolUseEvent", dict(head)))
    pieces = _split(json.dumps(input), fragments) if fragments > 0 else []
    for i, piece in enumerate(pieces):
        event = {**head, "input": piece}
        if i == len(pieces) - 1:
            event["stop"] = True
        items.append(("toolUseEvent", event))
    if not pieces:
        items.append(("toolUseEvent", {**head, "stop": True}))
    return Reply(items, **options)


def events_reply(events: list[tuple[str, dict]], **options) -> Reply:
    """Arbitrary event frames, exactly as given (no metadata added)."""
    return Reply(list(events), **options)


def raw_reply(frames: list[bytes], **options) -> Reply:
    """Pre-encoded bytes, for corrupt frames and exception/error frames."""
    return Reply(list(frames), **options)


def http_error(status: int, error_type: str, message: str, reason: str | None = None,
               headers: dict | None = None, **options) -> Reply:
    """A JSON error response shaped like the service's (docs/amazon-q-api.md, "Errors")."""
    body = {"__type": f"com.amazon.aws.codewhisperer#{error_type}", "message": message, "reason": reason}
    all_headers = {"x-amzn-errortype": error_type + CW_ERROR_SUFFIX, **(headers or {})}
    return Reply(status=status, error_body=body, headers=all_headers, **options)


_TYPICAL_TEXT = ("Sure. Here is a short overview of how the pieces fit together, followed by an example you "
                 "can adapt. First, the client sends a request with the conversation so far; the service "
                 "streams back small text deltas, each in its own frame, until the answer is complete. "
                 "```python\ndef greet(name):\n    return f\"Hello, {name}!\"\n```\n"
                 "That function returns a greeting. Let me know if you want tests for it as well.")


def typical_reply(**options) -> Reply:
    """A realistic answer: ~50 text frames plus the metering/context events the service appends."""
    reply = text_reply(_TYPICAL_TEXT, chunks=50, **options)
    reply.items += [("meteringEvent", {"usage": 0.0097, "unit": "credit", "unitPlural": "credits"}),
                    ("contextUsageEvent", {"contextUsagePercentage": 1.2})]
    return reply


# --------------------------------------------------------------------------- server

class _HeaderDict(dict):
    """Request headers with lower-cased keys and case-insensitive lookup."""

    def __getitem__(self, key):
        return super().__getitem__(key.lower())

    def get(self, key, default=None):
        return super().get(key.lower(), default)

    def __contains__(self, key):
        return super().__contains__(key.lower())


DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
# OAuth error code -> (HTTP status, exception name, description); shapes per docs/oidc.md.
OIDC_ERRORS = {
    "authorization_pending": (400, "AuthorizationPendingException", "Authorization is still pending"),
    "slow_down": (400, "SlowDownException", "Client is polling too quickly"),
    "expired_token": (400, "ExpiredTokenException", "Device code has expired"),
    "access_denied": (400, "AccessDeniedException", "Authorization was denied"),
    "invalid_grant": (400, "InvalidGrantException", "Invalid grant provided"),
}
REGISTER_KEYS = {"clientName", "clientType", "scopes", "redirectUris", "grantTypes", "issuerUrl",
                 "entitledApplicationArn"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() shuts the sockets down instead, so nothing can hang teardown

    def handle_error(self, request, client_address):
        """A client dropping a kept-alive connection is normal (amq hangs up on purpose)."""
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


@dataclass
class FakeAccount:
    """One Q account behind the fake: its refresh tokens lead to its access tokens, and calls
    made with those meet its behaviour (docs/amazon-q-api.md, "Account-level errors")."""

    name: str
    throttled: int = 0  # the next N calls get per-user throttling (429)
    retry_after: str | None = None  # sent with that throttling
    risk: int = 0  # the next N calls get the "suspicious activity" 429
    monthly: bool = False  # the monthly limit is reached
    suspended: bool = False
    delay: float = 0.0  # seconds before answering (a slow account)
    failures: int = 0  # the next N calls get a 500 InternalServerException
    limit: int | None = None  # after this many served calls, the monthly limit is reached
    credits_limit: float = 1000.0  # what GetUsageLimits reports
    credits_used: float = 0.0
    days_until_reset: int = 12
    served: int = 0  # successful GenerateAssistantResponse calls
    calls: int = 0  # every GenerateAssistantResponse call that reached the account

    def answer(self) -> Reply | None:
        """The error this account answers now, or None to serve normally."""
        if self.suspended:
            return http_error(403, "AccessDeniedException", SUSPENDED, reason="TEMPORARILY_SUSPENDED")
        if self.monthly or (self.limit is not None and self.served >= self.limit):
            return http_error(400, "ThrottlingException", MONTHLY, reason="MONTHLY_REQUEST_COUNT")
        if self.risk > 0:
            self.risk -= 1
            return http_error(429, "ThrottlingException", RISK)
        if self.throttled > 0:
            self.throttled -= 1
            headers = {"Retry-After": self.retry_after} if self.retry_after else None
            return http_error(429, "ThrottlingException", "Too many requests, please wait before trying again.",
                              reason="USER_REQUEST_RATE_EXCEEDED", headers=headers)
        if self.failures > 0:
            self.failures -= 1
            return http_error(500, "InternalServerException", "Encountered an unexpected error when "
                              "processing the request, please try again.")
        return None


SUSPENDED = ("Your User ID (d-0000000000.00000000-0000-0000-0000-000000000000) temporarily is suspended. "
             "We've locked your account as a security precaution.")
MONTHLY = "Maximum com.amazon.aws.codewhisperer.streaming.GenerateAssistantResponse reached for this month."
RISK = ("Due to suspicious activity, we are imposing temporary limits on how frequently your account "
        "(d-0000000000) can send a request while we investigate.")
USAGE_LIMITS_QUERY = {"origin", "resourceType", "profileArn"}


class FakeQ:
    """The fake service: Q's two GenerateAssistantResponse bindings, ListAvailableModels,
    GetUsageLimits and /token; `add_account` puts more accounts behind it."""

    def __init__(self, *, models=DEFAULT_MODELS, max_content_chars=600_000, access_token_ttl=3600,
                 rotate_refresh_tokens=True, require_auth=True, host="127.0.0.1", port=0):
        self.models = list(models)
        self.max_content_chars = max_content_chars
        self.access_token_ttl = access_token_ttl
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.require_auth = require_auth
        self.default_reply = text_reply("Hello from fake Q.")
        self.client_id = "fakeq-" + uuid.uuid4().hex[:16]
        self.client_secret = "fakeq-secret-" + uuid.uuid4().hex
        self.refresh_token = _token("aor")
        self.requests: list[dict] = []
        self.model_requests: list[dict] = []
        self.token_requests: list[dict] = []
        self.rejections: list[str] = []
        # OIDC: registrations, device flow, and every CreateToken outcome with its time.
        self.token_delay = 0.0  # seconds between issuing a token and sending the answer
        # The next `hold_token_requests` CreateToken calls wait (issuing nothing) until
        # `release_held` is set, then are dropped unanswered: a refresh held open at the service.
        self.hold_token_requests = 0
        self.held_token_requests = 0
        self.release_held = threading.Event()
        self.client_secret_ttl = 90 * 86400
        self.device_interval = 1
        self.device_expires_in = 600
        self.enforce_poll_interval = True  # slow_down for polls sooner than the interval
        self.device_script: list[str] = []  # OAuth errors answered to the next device polls
        self.auto_approve = False
        self.registrations: list[dict] = []
        self.device_authorizations: list[dict] = []
        self.token_log: list[dict] = []  # {"at": monotonic, "grantType", "error" or None}
        self.bearer_rejections = 0
        self._clients: dict[str, tuple[str, float]] = {
            self.client_id: (self.client_secret, time.time() + self.client_secret_ttl)}
        self._grants: dict[str, str] = {self.refresh_token: self.client_id}  # valid refresh token -> client
        self._devices: dict[str, dict] = {}
        self.closed_early = 0
        self._lock = threading.Lock()
        self._script: list[Reply] = []
        self._access_tokens: dict[str, float] = {}  # token -> monotonic expiry
        self.accounts: dict[str, FakeAccount] = {}
        self._refresh_account: dict[str, str] = {}  # refresh token -> account name
        self._access_account: dict[str, str] = {}  # access token -> account name
        self.usage_requests: list[dict] = []
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._address = (host, port)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.access_token = self.issue_access_token()

    # lifecycle
    def start(self) -> FakeQ:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = _Server(self._address, handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fakeq", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        with self._lock:
            conns = list(self._connections)
        for conn in conns:  # wakes handlers blocked on idle keep-alive reads
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        self._thread.join(5)
        self._server = None

    def __enter__(self) -> FakeQ:
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    @property
    def token_url(self) -> str:
        return self.url + "token"

    # scripting and tokens
    def reset(self) -> FakeQ:
        """Empty the script and the request logs, so a shared fake starts each test clean."""
        with self._lock:
            self._script.clear()
        self.requests.clear()
        self.rejections.clear()
        self.token_requests.clear()
        self.usage_requests.clear()
        return self

    def add_account(self, name: str, **behaviour) -> str:
        """A new account (a login for the pre-registered client); returns its refresh token."""
        account = FakeAccount(name, **behaviour)
        refresh_token = self.new_login()
        with self._lock:
            self.accounts[name] = account
            self._refresh_account[refresh_token] = name
        return refresh_token

    def revoke(self, name: str) -> None:
        """Every refresh token of the account stops working (invalid_grant)."""
        with self._lock:
            for token in [t for t, owner in self._refresh_account.items() if owner == name]:
                self._grants.pop(token, None)

    def account_of(self, access_token: str) -> FakeAccount | None:
        with self._lock:
            name = self._access_account.get(access_token)
            return self.accounts.get(name) if name else None

    def enqueue(self, *replies: Reply):
        with self._lock:
            self._script.extend(replies)

    def next_reply(self) -> Reply:
        with self._lock:
            return self._script.pop(0) if self._script else self.default_reply

    def issue_access_token(self) -> str:
        token = _token("aoa")
        with self._lock:
            self._access_tokens[token] = time.monotonic() + self.access_token_ttl
        return token

    def expire_access_tokens(self):
        with self._lock:
            self._access_tokens.clear()

    def access_token_valid(self, token: str) -> bool:
        with self._lock:
            return self._access_tokens.get(token, 0) > time.monotonic()

    def _check_body(self, body, required) -> tuple[int, dict, dict] | None:
        if not isinstance(body, dict) or any("_" in key for key in body):
            return _oidc_error(400, "InvalidRequestException", "invalid_request",
                               "Request body must be a JSON object with camelCase keys")
        missing = [k for k in required if not isinstance(body.get(k), str)]
        if missing:
            return _oidc_error(400, "InvalidRequestException", "invalid_request", f"Missing {missing}")
        return None

    def _client_valid(self, body) -> bool:
        with self._lock:
            secret, expires = self._clients.get(body["clientId"], (None, 0))
        return secret == body["clientSecret"] and expires > time.time()

    def register_client(self, body) -> tuple[int, dict, dict]:
        """RegisterClient (docs/oidc.md): a public client for the device flow."""
        if isinstance(body, dict) and set(body) - REGISTER_KEYS:
            return _oidc_error(400, "InvalidRequestException", "invalid_request",
                               f"Unknown keys {sorted(set(body) - REGISTER_KEYS)}")
        error = self._check_body(body, ("clientName", "clientType"))
        if error:
            return error
        if body["clientType"] != "public" or not all(isinstance(x, str) for x in body.get("scopes", [])):
            return _oidc_error(400, "InvalidClientMetadataException", "invalid_client_metadata",
                               "Invalid client metadata")
        client_id, secret = "fakeq-" + uuid.uuid4().hex[:16], "fakeq-secret-" + uuid.uuid4().hex
        now = time.time()
        with self._lock:
            self.registrations.append(body)
            self._clients[client_id] = (secret, now + self.client_secret_ttl)
        return 200, {"clientId": client_id, "clientSecret": secret, "clientIdIssuedAt": int(now),
                     "clientSecretExpiresAt": int(now + self.client_secret_ttl)}, {}

    def start_device_authorization(self, body) -> tuple[int, dict, dict]:
        """StartDeviceAuthorization (docs/oidc.md)."""
        error = self._check_body(body, ("clientId", "clientSecret", "startUrl"))
        if error:
            return error
        if not self._client_valid(body):
            return _oidc_error(401, "InvalidClientException", "invalid_client", "Invalid client provided")
        device_code = _token("dc")
        user_code = "-".join(uuid.uuid4().hex[i:i + 4].upper() for i in (0, 4))
        now = time.monotonic()
        with self._lock:
            self.device_authorizations.append(body)
            self._devices[device_code] = {
                "client": body["clientId"], "user_code": user_code, "expires": now + self.device_expires_in,
                "interval": self.device_interval, "last_poll": now, "approved": False, "denied": False,
                "used": False, "start_url": body["startUrl"]}
        verify = self.url + "device/"
        return 200, {"deviceCode": device_code, "userCode": user_code, "verificationUri": verify,
                     "verificationUriComplete": f"{verify}?user_code={user_code}",
                     "expiresIn": self.device_expires_in, "interval": self.device_interval}, {}

    def approve(self, user_code: str, deny: bool = False):
        """What the user does in the browser: approve (or deny) the code."""
        with self._lock:
            for device in self._devices.values():
                if device["user_code"] == user_code:
                    device["denied" if deny else "approved"] = True
                    return
        raise KeyError(user_code)

    def create_token(self, body) -> tuple[int, dict, dict]:
        """CreateToken (docs/oidc.md): (status, json body, extra headers); logged in token_log."""
        status, payload, headers = self._create_token(body)
        with self._lock:
            self.token_log.append({"at": time.monotonic(), "grantType": (body or {}).get("grantType")
                                   if isinstance(body, dict) else None,
                                   "error": payload.get("error") if status != 200 else None})
        return status, payload, headers

    refresh = create_token  # the name older tests use

    def _create_token(self, body) -> tuple[int, dict, dict]:
        error = self._check_body(body, ("clientId", "clientSecret", "grantType"))
        if error:
            return error
        if not self._client_valid(body):
            return _oidc_error(401, "InvalidClientException", "invalid_client", "Invalid client provided")
        if body["grantType"] == DEVICE_GRANT:
            return self._device_token(body)
        if body["grantType"] != "refresh_token":
            return _oidc_error(400, "UnsupportedGrantTypeException", "unsupported_grant_type",
                               f"Unsupported grant type {body['grantType']!r}")
        with self._lock:
            sent = body.get("refreshToken")
            if self._grants.get(sent) != body["clientId"]:
                return _oidc_error(400, "InvalidGrantException", "invalid_grant", "Invalid refresh token provided")
            refresh_token = sent
            if self.rotate_refresh_tokens:  # the old token stops working at once
                refresh_token = _token("aor")
                del self._grants[sent]
                self._grants[refresh_token] = body["clientId"]
                if sent in self._refresh_account:
                    self._refresh_account[refresh_token] = self._refresh_account[sent]
                if sent == self.refresh_token:
                    self.refresh_token = refresh_token
        return 200, self._issue(refresh_token), {}

    def _device_token(self, body) -> tuple[int, dict, dict]:
        now = time.monotonic()
        with self._lock:
            device = self._devices.get(body.get("deviceCode"))
            if device is None or device["client"] != body["clientId"] or device["used"]:
                outcome = "invalid_grant"
            elif now >= device["expires"]:
                outcome = "expired_token"
            elif self.device_script:
                outcome = self.device_script.pop(0)
            elif self.enforce_poll_interval and now - device["last_poll"] < device["interval"] * 0.8:
                outcome = "slow_down"
            elif device["denied"]:
                outcome = "access_denied"
            elif not (device["approved"] or self.auto_approve):
                outcome = "authorization_pending"
            else:
                outcome = None
            if device is not None:
                device["last_poll"] = now
                if outcome == "slow_down":
                    device["interval"] += 5  # RFC 8628 3.5
            if outcome is None:
                device["used"] = True
                refresh_token = _token("aor")
                self._grants[refresh_token] = body["clientId"]
        if outcome is not None:
            status, exception, description = OIDC_ERRORS[outcome]
            return _oidc_error(status, exception, outcome, description)
        return 200, self._issue(refresh_token), {}

    def _issue(self, refresh_token: str) -> dict:
        access_token = self.issue_access_token()
        with self._lock:
            if refresh_token in self._refresh_account:
                self._access_account[access_token] = self._refresh_account[refresh_token]
        return {"accessToken": access_token, "tokenType": "Bearer",
                "expiresIn": self.access_token_ttl, "refreshToken": refresh_token}

    def usage_limits(self, query: dict, account: FakeAccount | None) -> tuple[int, dict]:
        """GetUsageLimits (docs/amazon-q-api.md, "Usage limits"), strict about its query."""
        if set(query) - USAGE_LIMITS_QUERY or query.get("origin") != ["AI_EDITOR"] \
                or query.get("resourceType") != ["AGENTIC_REQUEST"]:
            return 400, {"__type": "com.amazon.aws.codewhisperer#ValidationException", "message": IMPROPER,
                         "reason": None}
        account = account or FakeAccount("default")
        return 200, {"daysUntilReset": account.days_until_reset,
                     "nextDateReset": time.time() + account.days_until_reset * 86400,
                     "subscriptionInfo": {"subscriptionTitle": "Q Developer Pro"},
                     "usageBreakdownList": [{"resourceType": "CREDIT",
                                             "usageLimitWithPrecision": account.credits_limit,
                                             "currentUsageWithPrecision": account.credits_used}]}

    def new_login(self) -> str:
        """A refresh token for the pre-registered client, as a fresh login would yield."""
        refresh_token = _token("aor")
        with self._lock:
            self._grants[refresh_token] = self.client_id
        return refresh_token

    def refresh_token_valid(self, refresh_token: str) -> bool:
        with self._lock:
            return refresh_token in self._grants

    def list_models(self, body) -> tuple[int, dict]:
        """ListAvailableModels with nextToken pagination (docs/amazon-q-api.md, "Models")."""
        if not isinstance(body, dict) or set(body) - {"origin", "maxResults", "nextToken", "profileArn",
                                                      "modelProvider"}:
            return 400, {"__type": "com.amazon.aws.codewhisperer#ValidationException", "message": IMPROPER,
                         "reason": None}
        size = body.get("maxResults", 100)
        start = body.get("nextToken", "0")
        if (body.get("origin", "CLI") not in ORIGINS or not isinstance(size, int) or not 1 <= size <= 100
                or not isinstance(start, str) or not start.isdigit() or int(start) > len(self.models)):
            return 400, {"__type": "com.amazon.aws.codewhisperer#ValidationException", "message": IMPROPER,
                         "reason": None}
        start = int(start)
        page = [{"modelId": m, "modelName": m, "description": f"Fake {m}",
                 "tokenLimits": {"maxInputTokens": 200000, "maxOutputTokens": 64000},
                 "supportedInputTypes": ["TEXT", "IMAGE"]} for m in self.models[start:start + size]]
        out = {"models": page, "defaultModel": {"modelId": "auto"}}
        if start + size < len(self.models):
            out["nextToken"] = str(start + size)
        return 200, out


def _token(prefix: str) -> str:
    return prefix + "AAAAA" + uuid.uuid4().hex + uuid.uuid4().hex


def _oidc_error(status, exception, code, description):
    return (status, {"error": code, "error_description": description},
            {"x-amzn-ErrorType": exception + OIDC_ERROR_SUFFIX})


class _ClientGone(Exception):
    """The client closed its end before the reply finished."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeQ  # set on the per-server subclass

    def setup(self):
        super().setup()
        with self.fake._lock:
            self.fake._connections.add(self.connection)

    def finish(self):
        with self.fake._lock:
            self.fake._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def log_message(self, fmt, *args):
        logger.debug("fakeq: " + fmt, *args)

    def do_GET(self):
        self._read_body()
        path, _, query = self.path.partition("?")
        if path == "/getUsageLimits":
            return self._usage_limits(parse_qs(query, keep_blank_values=True))
        self._unknown_operation()

    def do_PUT(self):
        self._read_body()
        self._unknown_operation()

    do_DELETE = do_PATCH = do_PUT

    def do_POST(self):
        raw = self._read_body()
        target = self.headers.get("X-Amz-Target")
        if self.path == "/token":
            return self._token(raw)
        if self.path == "/client/register":
            return self._oidc(raw, self.fake.register_client)
        if self.path == "/device_authorization":
            return self._oidc(raw, self.fake.start_device_authorization)
        if self.path == "/" and target == GAR_TARGET:
            return self._generate(raw, target, RPC_CONTENT_TYPE)
        if self.path == "/generateAssistantResponse" and target is None:
            return self._generate(raw, None, REST_CONTENT_TYPE)
        if self.path == "/" and target == LIST_MODELS_TARGET:
            return self._list_models(raw)
        self._unknown_operation()

    # operations
    def _token(self, raw: bytes):
        with self.fake._lock:
            hold = self.fake.hold_token_requests > 0
            if hold:
                self.fake.hold_token_requests -= 1
                self.fake.held_token_requests += 1
        if hold:
            self.fake.release_held.wait(120)
            self.close_connection = True
            return
        body = _parse_json(raw)
        with self.fake._lock:
            self.fake.token_requests.append(body)
        status, payload, headers = self.fake.create_token(body)
        if self.fake.token_delay:  # issued (and rotated) already; the answer is on its way
            time.sleep(self.fake.token_delay)
        try:
            self._send_json(status, payload, headers, content_type="application/json")
        except OSError:  # the client died waiting; what was issued stays issued
            self.close_connection = True

    def _oidc(self, raw: bytes, operation):
        status, payload, headers = operation(_parse_json(raw))
        self._send_json(status, payload, headers, content_type="application/json")

    def _list_models(self, raw: bytes):
        if not self._authorized():
            return
        body = _parse_json(raw)
        with self.fake._lock:
            self.fake.model_requests.append({"headers": self._header_dict(), "body": body})
        status, payload = self.fake.list_models(body)
        self._send_json(status, payload)

    def _usage_limits(self, query: dict):
        if not self._authorized():
            return
        with self.fake._lock:
            self.fake.usage_requests.append({"query": query, "headers": self._header_dict()})
        status, payload = self.fake.usage_limits(query, self._account())
        self._send_json(status, payload, content_type="application/json")

    def _account(self) -> FakeAccount | None:
        auth = self.headers.get("Authorization") or ""
        return self.fake.account_of(auth[7:]) if auth.startswith("Bearer ") else None

    def _generate(self, raw: bytes, target: str | None, content_type: str):
        if not self._authorized():
            return
        account = self._account()
        if account is not None:
            with self.fake._lock:
                account.calls += 1
                refusal = account.answer()
            if account.delay:
                self._wait(account.delay)
            if refusal is not None:
                with self.fake._lock:
                    self.fake.requests.append({"path": self.path, "headers": self._header_dict(),
                                               "body": _parse_json(raw), "target": target, "error": None,
                                               "account": account.name, "refused": refusal.status})
                return self._send_scripted_error(refusal, content_type)
        body = _parse_json(raw)
        record = {"path": self.path, "headers": self._header_dict(), "body": body, "target": target, "error": None,
                  "account": account.name if account else None, "refused": None}
        sent_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if sent_type != content_type:
            error = Rejection(f"content type {sent_type!r} does not match the binding ({content_type})")
        elif body is None:
            error = Rejection("body is not valid JSON")
        else:
            error = validate_request(body, self.fake.models, max_content_chars=self.fake.max_content_chars,
                                     body_bytes=len(raw))
        record["error"] = error
        with self.fake._lock:
            self.fake.requests.append(record)
            if error:
                self.fake.rejections.append(str(error))
        if error:
            message = {"CONTENT_LENGTH_EXCEEDS_THRESHOLD": TOO_LONG,
                       "INVALID_MODEL_ID": INVALID_MODEL}.get(error.reason, IMPROPER)
            return self._send_error_json(400, "ValidationException", message, error.reason, content_type)
        reply = self.fake.next_reply()
        if account is not None and reply.status == 200:
            with self.fake._lock:
                account.served += 1
        try:
            if reply.status != 200:
                self._send_scripted_error(reply, content_type)
            else:
                self._stream(reply, body["conversationState"].get("conversationId"))
        except _ClientGone:
            with self.fake._lock:
                self.fake.closed_early += 1
            self.close_connection = True
        except OSError:  # stop() tore the socket down
            self.close_connection = True

    # auth and plumbing
    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization") or ""
        if not self.fake.require_auth or (auth.startswith("Bearer ") and self.fake.access_token_valid(auth[7:])):
            return True
        with self.fake._lock:
            self.fake.bearer_rejections += 1
        self._send_error_json(403, "AccessDeniedException", BAD_BEARER, None)
        return False

    def _header_dict(self) -> _HeaderDict:
        return _HeaderDict((k.lower(), v) for k, v in self.headers.items())

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = bytearray()
            while size := int(self.rfile.readline().split(b";")[0], 16):
                data += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return bytes(data)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _unknown_operation(self):
        target = self.headers.get("X-Amz-Target")
        self._send_json(400, {"__type": "com.amazon.coral.service#UnknownOperationException",
                              "message": f"Unknown operation {self.command} {self.path} target={target!r}"},
                        {"x-amzn-errortype": "UnknownOperationException:http://internal.amazon.com/coral/com.amazon.coral.service/"})

    def _send_error_json(self, status, error_type, message, reason, content_type=RPC_CONTENT_TYPE):
        body = {"__type": f"com.amazon.aws.codewhisperer#{error_type}", "message": message, "reason": reason}
        self._send_json(status, body, {"x-amzn-errortype": error_type + CW_ERROR_SUFFIX}, content_type)

    def _send_json(self, status, payload, headers=None, content_type=RPC_CONTENT_TYPE):
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-requestid", str(uuid.uuid4()))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _send_scripted_error(self, reply: Reply, content_type: str):
        if reply.hang:
            self._wait(None)
        if reply.delay:
            self._wait(reply.delay)
        self._send_json(reply.status, reply.error_body, reply.headers, content_type)

    def _stream(self, reply: Reply, conversation_id: str | None):
        """Send the reply's frames as a chunked event stream (docs/amazon-q-api.md, "Response stream"),
        honouring delay/cut_after/hang."""
        frames = reply.frames(conversation_id)
        self.send_response(200)
        self.send_header("Content-Type", EVENTSTREAM_CONTENT_TYPE)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-amzn-requestid", str(uuid.uuid4()))
        # The REST binding's header (docs/amazon-q-api.md, "Response stream").
        if conversation_id and self.path != "/":
            self.send_header("x-amzn-codewhisperer-conversation-id", conversation_id)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.flush()
        rng = random.Random(reply.seed)
        budget = reply.cut_after
        # Without a delay, chunk the whole stream so chunks also hold several frames;
        # with one, each frame is complete before the pause.
        groups = frames if reply.delay else [b"".join(frames)]
        for index, group in enumerate(groups):
            if index:
                self._wait(reply.delay)
            pos = 0
            while pos < len(group):
                piece = group[pos:pos + chunk_size(rng)]
                pos += len(piece)
                if budget is not None:
                    piece = piece[:budget]
                    budget -= len(piece)
                if piece:
                    self._write(b"%x\r\n%s\r\n" % (len(piece), piece))
                if budget == 0:
                    return self._abort()
        if budget == 0:
            return self._abort()
        if reply.hang:
            self._wait(None)
        self._write(b"0\r\n\r\n")

    def _abort(self):
        """Drop the connection mid-body (no terminating chunk)."""
        self.close_connection = True
        self.wfile.flush()
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _write(self, data: bytes):
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError) as exc:
            if self.fake._stopping.is_set():
                raise OSError("server stopping") from exc
            raise _ClientGone from exc

    def _wait(self, seconds: float | None):
        """Sleep `seconds` (forever if None), but notice the client leaving or the server stopping."""
        deadline = None if seconds is None else time.monotonic() + seconds
        while deadline is None or time.monotonic() < deadline:
            if self.fake._stopping.is_set():
                raise OSError("server stopping")
            timeout = 0.05 if deadline is None else max(0.0, min(0.05, deadline - time.monotonic()))
            readable, _, _ = select.select([self.connection], [], [], timeout)
            if readable:
                try:
                    gone = self.connection.recv(1, socket.MSG_PEEK) == b""
                except OSError:
                    gone = True
                if gone and self.fake._stopping.is_set():
                    raise OSError("server stopping")  # stop() shut the socket down, not the client
                if gone:
                    raise _ClientGone()
                time.sleep(timeout)  # a pipelined request is waiting; it is not a disconnect


def chunk_size(rng: random.Random) -> int:
    """Uneven sizes: mostly small, sometimes single bytes, sometimes a few hundred."""
    roll = rng.random()
    if roll < 0.15:
        return rng.randint(1, 4)
    if roll < 0.85:
        return rng.randint(5, 120)
    return rng.randint(121, 400)


def _parse_json(raw: bytes):
    try:
        return json.loads(raw.decode("utf-8")) if raw else None
    except (UnicodeDecodeError, ValueError):
        return None


def main(argv=None):
    """Serve forever for manual runs and benchmarks."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakeq", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--text", help="answer every call with this text")
    parser.add_argument("--fast", action="store_true", help="answer with a typical ~50-frame Q answer")
    parser.add_argument("--delay", type=float, default=0, help="seconds between frames")
    parser.add_argument("--no-auth", action="store_true", help="accept any bearer token")
    parser.add_argument("--no-rotate", action="store_true", help="keep the same refresh token")
    args = parser.parse_args(argv)
    fake = FakeQ(port=args.port, require_auth=not args.no_auth, rotate_refresh_tokens=not args.no_rotate)
    if args.fast:
        fake.default_reply = typical_reply(delay=args.delay)
    elif args.text is not None:
        fake.default_reply = text_reply(args.text, delay=args.delay)
    else:
        fake.default_reply.delay = args.delay
    fake.start()
    print(f"AMAZONQ_API_ENDPOINT={fake.url}\nAMAZONQ_TOKEN_ENDPOINT={fake.token_url}\n"
          f"client id:     {fake.client_id}\nclient secret: {fake.client_secret}\n"
          f"refresh token: {fake.refresh_token}\naccess token:  {fake.access_token}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
