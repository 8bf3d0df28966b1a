"""Fuzzing the Messages endpoints with hypothesis: arbitrary JSON, arbitrary bytes, and valid
requests with random damage, through the Flask test client.

Nothing leaves the process: the app's one requests.Session gets a `post` that answers in
process (OIDC token, ListAvailableModels, GenerateAssistantResponse). The fake
GenerateAssistantResponse parses the exact bytes amq would send and judges them with
`tests.fakeq.validate_request`, as the strict fake Q server does. The properties:

- no client input gets a 5xx (Q being fine);
- every non-2xx answer is `{"type": "error", "error": {"type": ..., "message": ...}}`;
- whatever amq sends to Q is a body Q accepts (no "Improperly formed request.");
- an accepted request gets a whole answer (a Message, or an SSE stream to message_stop).
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import os
import signal
from dataclasses import dataclass, field

import pytest
import requests
import urllib3
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from requests.structures import CaseInsensitiveDict

from app import create_app
from tests.fakeq import DEFAULT_MODELS, IMPROPER, text_reply, tool_reply, validate_request

GAR_TARGET = "AmazonCodeWhispererStreamingService.GenerateAssistantResponse"
LIST_MODELS_TARGET = "AmazonCodeWhispererService.ListAvailableModels"
TOKEN_URL = "http://127.0.0.1:9/token"  # the discard port: were the stub bypassed, nothing answers
REQUEST_TIMEOUT = 10  # seconds one request may take before the test calls it a hang

FUZZ = settings(max_examples=300, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example,
                                       HealthCheck.function_scoped_fixture])
# The "thousands of inputs" run: about 3000 requests (and as many count_tokens calls).
THOUSANDS = settings(FUZZ, max_examples=int(os.environ.get("AMQ_FUZZ_EXAMPLES", "3000")))


# --------------------------------------------------------------------------- the fake network

@dataclass
class QCall:
    body: object
    rejection: str | None
    too_long: bool


@dataclass
class FakeNetwork:
    """Stands in for requests.Session.post: the OIDC token service and Amazon Q, in process."""

    upstream_down: bool = False
    calls: list = field(default_factory=list)      # GenerateAssistantResponse calls
    unexpected: list = field(default_factory=list)  # anything else amq tried

    def post(self, url, data=None, headers=None, **kwargs):
        headers = CaseInsensitiveDict(headers or {})
        target = headers.get("X-Amz-Target", "")
        if url == TOKEN_URL:
            return _response(200, _dumps({"accessToken": "fuzz-access", "expiresIn": 3600,
                                          "tokenType": "Bearer"}))
        if target == LIST_MODELS_TARGET:
            return _response(200, _dumps({"models": [{"modelId": m} for m in DEFAULT_MODELS],
                                          "defaultModel": {"modelId": "claude-sonnet-4.5"}}))
        if target == GAR_TARGET or url.endswith("/generateAssistantResponse"):
            return self._generate(data)
        self.unexpected.append((url, target))
        return _response(400, _dumps({"message": "not faked"}))

    def _generate(self, data):
        if self.upstream_down:
            self.calls.append(QCall(None, None, False))
            raise requests.ConnectionError("fuzz: Amazon Q is unreachable")
        assert isinstance(data, bytes), f"amq must send bytes, sent {type(data).__name__}"
        try:
            body = json.loads(data.decode("utf-8"), parse_constant=_no_constants)
        except (UnicodeDecodeError, ValueError) as exc:  # Q parses strict UTF-8 JSON
            body, rejection = None, f"not strict JSON: {exc}"
        else:
            rejection = validate_request(body, DEFAULT_MODELS, body_bytes=len(data))
        too_long = getattr(rejection, "reason", None) == "CONTENT_LENGTH_EXCEEDS_THRESHOLD"
        self.calls.append(QCall(body, rejection, too_long))
        if too_long:
            return _q_error("ValidationException", "Input is too long.",
                            "CONTENT_LENGTH_EXCEEDS_THRESHOLD")
        if rejection:
            return _q_error("ValidationException", IMPROPER)
        tools = body["conversationState"]["currentMessage"]["userInputMessage"] \
            .get("userInputMessageContext", {}).get("tools", [])
        names = [t["toolSpecification"]["name"] for t in tools if "toolSpecification" in t]
        # A tool call when tools were offered, so Q names are mapped back to the client's.
        reply = tool_reply(names[0], {"q": "ok"}, text="Sure.") if names else text_reply("Sure, done.")
        frames = reply.frames(body["conversationState"].get("conversationId"))
        return _response(200, b"".join(frames),
                         {"Content-Type": "application/vnd.amazon.eventstream"})


def _no_constants(name):
    raise ValueError(f"{name} is not JSON")


def _dumps(obj) -> bytes:
    return json.dumps(obj).encode()


def _q_error(code: str, message: str, reason: str | None = None):
    return _response(400, _dumps({"__type": f"com.amazon.aws.codewhisperer#{code}",
                                  "message": message, "reason": reason}),
                     {"x-amzn-errortype": code, "Content-Type": "application/x-amz-json-1.0"})


class _Body(io.BytesIO):
    """A socket-like body: closed once read to the end, as http.client's response is."""

    def isclosed(self) -> bool:
        return self.closed or self.tell() >= len(self.getvalue())


def _response(status: int, body: bytes, headers: dict | None = None) -> requests.Response:
    headers = {"Content-Type": "application/json", **(headers or {})}
    response = requests.Response()
    response.status_code = status
    response.headers = CaseInsensitiveDict(headers)
    response.raw = urllib3.HTTPResponse(body=_Body(body), headers=headers, status=status,
                                        preload_content=False)
    response.url = "http://fake-q.invalid/"
    return response


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):
    cache = tmp_path_factory.mktemp("fuzz") / "token.json"
    app = create_app({
        "AMAZONQ_REFRESH_TOKEN": "fuzz-refresh", "AMAZONQ_CLIENT_ID": "fuzz-client",
        "AMAZONQ_CLIENT_SECRET": "fuzz-secret", "AMAZONQ_PROFILE_ARN": "",
        "AMAZONQ_API_ENDPOINT": "http://127.0.0.1:9/", "AMAZONQ_TOKEN_ENDPOINT": TOKEN_URL,
        "AMAZONQ_TOKEN_CACHE": str(cache), "AMAZONQ_API_BINDING": "rpc", "AMAZONQ_ORIGIN": "CLI",
        "AMAZONQ_DEFAULT_MODEL": "claude-sonnet-4.5", "AMAZONQ_MODEL_MAP": "",
        "LOG_LEVEL": "CRITICAL",
    })
    network = FakeNetwork()
    proxy = app.extensions["amq"]
    proxy.client.sleep = lambda seconds: None  # retries with backoff: no real waiting in a fuzz run
    # Token service and Q share this session; patch whatever object each of them holds.
    for holder, attribute in ((proxy.client, "session"), (proxy.tokens, "_session")):
        session = getattr(holder, attribute, None)
        if session is not None:
            session.post = network.post
    return app, network


def _has_route(app, path: str) -> bool:
    return any(rule.rule == path and "POST" in rule.methods for rule in app.url_map.iter_rules())


class Hang(BaseException):
    """Not an Exception, so the app's catch-all handler cannot turn it into a 500."""


@contextlib.contextmanager
def _deadline(seconds: float):
    """A hang fails the test instead of stalling CI (the test client runs in this thread)."""
    if not hasattr(signal, "SIGALRM"):  # not on Windows: no watchdog there
        yield
        return

    def _timeout(signum, frame):
        raise Hang(f"request took longer than {seconds}s")
    previous = signal.signal(signal.SIGALRM, _timeout)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --------------------------------------------------------------------------- the properties

def _assert_error_shape(response, where: str) -> dict:
    assert response.mimetype == "application/json", (where, response.status_code, response.mimetype)
    body = response.get_json(silent=True)
    assert isinstance(body, dict) and body.get("type") == "error", (where, response.data[:300])
    error = body.get("error")
    assert isinstance(error, dict), (where, body)
    assert isinstance(error.get("type"), str) and error["type"], (where, body)
    assert isinstance(error.get("message"), str) and error["message"], (where, body)
    return error


def _sse_events(raw: bytes) -> list[tuple[str, dict]]:
    """(event, data) pairs; lines end at LF only, as in the SSE spec (a U+2028 in the JSON
    text is no line end, which str.splitlines would think)."""
    events = []
    for chunk in raw.strip(b"\n").split(b"\n\n"):
        lines = dict(line.decode("utf-8").split(": ", 1) for line in chunk.split(b"\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def exchange(app, network: FakeNetwork, raw: bytes, path: str = "/v1/messages") -> tuple[int, list]:
    """POST `raw`, check every property, return (status, Q calls made)."""
    network.calls.clear()
    client = app.test_client()
    with _deadline(REQUEST_TIMEOUT):
        response = client.post(path, data=raw, content_type="application/json",
                               headers={"anthropic-version": "2023-06-01", "x-api-key": "sk-fuzz"})
        payload = response.get_data()  # runs a streamed body to its end
    where = f"{path} {raw[:200]!r}"
    if currently_in_test_context():  # statistics for --hypothesis-show-statistics
        event(f"{path}: {response.status_code}{' after calling Q' if network.calls else ''}")
    assert response.status_code < 500, (where, response.status_code, payload[:500])
    assert not network.unexpected, network.unexpected
    for call in network.calls:
        assert call.rejection is None or call.too_long, (where, str(call.rejection), call.body)
    if response.status_code >= 300:
        error = _assert_error_shape(response, where)
        if network.calls:  # only Q's "input is too long" may turn an upstream call into a 4xx
            assert error["type"] == "invalid_request_error" and "too long" in error["message"], error
        return response.status_code, list(network.calls)
    assert response.status_code == 200, where
    if path.endswith("/count_tokens"):
        assert network.calls == [], "count_tokens must not call Amazon Q"
        body = json.loads(payload)
        assert isinstance(body.get("input_tokens"), int) and body["input_tokens"] >= 0, body
    elif response.mimetype == "text/event-stream":
        events = _sse_events(payload)
        kinds = [kind for kind, _ in events]
        assert "error" not in kinds, (where, events[-1])
        assert kinds[0] == "message_start" and kinds[-1] == "message_stop", (where, kinds)
        assert len(network.calls) == 1
    else:
        message = json.loads(payload)
        assert message.get("type") == "message" and message.get("content"), (where, message)
        assert len(network.calls) == 1
    return response.status_code, list(network.calls)


def check(app, network: FakeNetwork, raw: bytes) -> int:
    """/v1/messages, and count_tokens where it exists: it takes whatever /v1/messages takes."""
    status, _ = exchange(app, network, raw)
    if _has_route(app, "/v1/messages/count_tokens"):
        counted, _ = exchange(app, network, raw, "/v1/messages/count_tokens")
        if status == 200:
            assert counted == 200, f"count_tokens refused a request /v1/messages served: {raw[:300]!r}"
    return status


# --------------------------------------------------------------------------- strategies

# Lone surrogates come from "\\udXXX" escapes; one code-point range keeps generation fast.
near_surrogates = st.text(st.characters(min_codepoint=0xD7F0, max_codepoint=0xE00F), max_size=4)
any_text = st.one_of(st.text(max_size=12), near_surrogates)


def repeated(char: str, times: int):
    """A long string whose strategy repr stays short in hypothesis' reports."""
    return st.builds(str.__mul__, st.just(char), st.just(times))


# Valid Unicode (what a tool name may be), then anything a JSON string escape can carry.
odd_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(("", " ", "\x00", "\u2028", "😀", "\ufeff", "{}", "null", "tool_use", "Bash",
                     "../../etc/passwd", "x" * 65, "é" * 64)),
    repeated("a", 70_000),
)
odd_strings = st.one_of(odd_text, any_text,
                        st.sampled_from(("\ud800", "\udfff", "a\udc80b", "cut \ud83d", "\ud83d\ude00")))
huge_strings = st.one_of(repeated("z", 700_000), repeated("é", 1_100_000))  # over Q's limits
FIELD_NAMES = ("model", "messages", "max_tokens", "system", "tools", "tool_choice", "stream",
               "role", "content", "type", "text", "id", "name", "input", "tool_use_id", "source",
               "media_type", "data", "is_error", "input_schema", "description", "stop_sequences",
               "thinking", "title", "context", "url", "cache_control", "metadata", "temperature")
json_keys = st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=8), near_surrogates)


def json_trees(scalars, max_leaves: int):
    return st.recursive(scalars, lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(json_keys, children, max_size=5)),
        max_leaves=max_leaves)


# Python's json module reads and writes NaN and Infinity, so clients can send them.
json_values = json_trees(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), odd_strings), 12)
finite_json_values = json_trees(st.one_of(st.none(), st.booleans(), st.integers(),
                                          st.floats(allow_nan=False, allow_infinity=False), odd_strings), 6)


# Arbitrary JSON documents, biased towards objects that use the Messages API's field names.
json_documents = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(FIELD_NAMES), json_values, max_size=6),
)

MODELS = st.one_of(st.sampled_from(("claude-sonnet-4-5-20250929", "claude-opus-4-5", "claude-haiku-4-5",
                                    "claude-3-7-sonnet-20250219", "claude-opus-5-5", "auto",
                                    "claude-sonnet-4.5", "claude-sonnet-4-5[1m]")), odd_text)
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()
ids = st.one_of(st.from_regex(r"toolu_[A-Za-z0-9]{6}", fullmatch=True), odd_strings.filter(bool))
tool_names = st.one_of(st.sampled_from(("Bash", "Read", "mcp__github__create_issue", "a.b", "x" * 80)),
                       odd_text.filter(bool))
tool_inputs = st.dictionaries(json_keys, finite_json_values, max_size=3)
schemas = st.one_of(st.builds(dict, type=st.just("object")), st.dictionaries(
    st.sampled_from(("type", "properties", "required")), finite_json_values, max_size=3))
text_lists = st.lists(st.builds(lambda text: {"type": "text", "text": text}, odd_strings), max_size=2)
result_contents = st.one_of(odd_strings, text_lists)
descriptions = st.one_of(odd_strings, repeated("d", 11_000))
USER_KINDS = st.sampled_from(("text", "text", "image", "image_url", "document", "search_result"))
MEDIA_TYPES = st.sampled_from(("image/png", "image/jpeg", "image/gif", "image/webp", "IMAGE/PNG"))
ASSISTANT_KINDS = st.sampled_from(("text", "tool_use", "tool_use", "thinking", "redacted_thinking",
                                   "server_tool_use"))
EXTRAS = {"thinking": {"type": "enabled", "budget_tokens": 1024}, "metadata": {"user_id": "u"},
          "temperature": 0.5, "stop_sequences": ["\n\nHuman:"], "top_k": 5,
          "cache_control": {"type": "ephemeral"}, "context_management": {"edits": []}}
extra_keys = st.lists(st.sampled_from(tuple(sorted(EXTRAS))), max_size=3, unique=True)


def text_block(text):
    return {"type": "text", "text": text}


@st.composite
def tool_defs(draw):
    tool = {"name": draw(tool_names), "input_schema": draw(schemas)}
    if draw(st.booleans()):
        tool["description"] = draw(descriptions)
    return tool


@st.composite
def user_blocks(draw, pending: list[str]):
    """Blocks of a user turn; `pending` are the previous assistant turn's tool-use ids."""
    blocks = [{"type": "tool_result", "tool_use_id": use_id,
               "content": draw(result_contents),
               **({"is_error": True} if draw(st.booleans()) else {})}
              for use_id in pending if draw(st.integers(0, 5))]
    for _ in range(draw(st.integers(0 if blocks else 1, 2))):
        kind = draw(USER_KINDS)
        if kind == "text":
            blocks.append(text_block(draw(odd_strings)))
        elif kind == "image":
            blocks.append({"type": "image", "source": {"type": "base64", "media_type": draw(MEDIA_TYPES),
                                                       "data": PNG}})
        elif kind == "image_url":
            blocks.append({"type": "image", "source": {"type": "url", "url": draw(odd_strings)}})
        elif kind == "document":
            blocks.append({"type": "document", "title": draw(odd_strings),
                           "source": {"type": "text", "media_type": "text/plain", "data": draw(odd_strings)}})
        else:
            blocks.append({"type": "search_result", "title": draw(odd_strings), "source": draw(odd_strings),
                           "content": [text_block(draw(odd_strings))]})
    return blocks


@st.composite
def assistant_blocks(draw, tools: list[dict]) -> list[dict]:
    blocks = []
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(ASSISTANT_KINDS)
        if kind == "text":
            blocks.append(text_block(draw(odd_strings)))
        elif kind == "tool_use":
            known = draw(st.integers(0, len(tools))) if tools else len(tools)
            name = tools[known]["name"] if known < len(tools) else draw(tool_names)
            blocks.append({"type": "tool_use", "id": draw(ids), "name": name, "input": draw(tool_inputs)})
        elif kind == "thinking":
            blocks.append({"type": "thinking", "thinking": draw(odd_strings), "signature": "sig"})
        elif kind == "redacted_thinking":
            blocks.append({"type": "redacted_thinking", "data": "abc"})
        else:
            blocks.append({"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search",
                           "input": {"query": draw(odd_strings)}})
            blocks.append({"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []})
    return blocks


@st.composite
def valid_requests(draw) -> dict:
    """Requests the Messages API accepts: tools, system, images, tool use and results, prefill."""
    tools = draw(st.lists(tool_defs(), max_size=3, unique_by=lambda t: t["name"]))
    request: dict = {"model": draw(MODELS), "max_tokens": draw(st.integers(1, 64_000))}
    messages, pending = [], []
    for turn in range(draw(st.integers(1, 5))):
        if turn % 2 == 0:
            content = draw(st.one_of(odd_strings, user_blocks(pending))) if not pending \
                else draw(user_blocks(pending))
            messages.append({"role": "user", "content": content})
            pending = []
        else:
            blocks = draw(assistant_blocks(tools))
            messages.append({"role": "assistant",
                             "content": blocks if blocks or draw(st.booleans()) else draw(odd_strings)})
            pending = [b["id"] for b in blocks if b["type"] == "tool_use"]
    if draw(st.integers(0, 4)) == 0:
        messages.insert(draw(st.integers(0, len(messages))),
                        {"role": "system", "content": draw(odd_strings)})
    request["messages"] = messages
    if tools:
        request["tools"] = tools
        if draw(st.booleans()):
            request["tool_choice"] = [{"type": "auto"}, {"type": "any"}, {"type": "none"},
                                      {"type": "tool", "name": tools[0]["name"]}][draw(st.integers(0, 3))]
    if draw(st.booleans()):
        request["system"] = draw(result_contents)
    if draw(st.booleans()):
        request["stream"] = draw(st.booleans())
    for key in draw(extra_keys):
        request[key] = json.loads(json.dumps(EXTRAS[key]))
    return request


def _slots(node, parent=None, key=None):
    """Every (container, key) in a JSON tree, the root's own keys included."""
    if parent is not None:
        yield parent, key
    if isinstance(node, dict):
        for k in list(node):
            yield from _slots(node[k], node, k)
    elif isinstance(node, list):
        for i in range(len(node)):
            yield from _slots(node[i], node, i)


BLOCK_TYPES = st.one_of(st.sampled_from((
    "text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking",
    "server_tool_use", "web_search_tool_result", "search_result", "container_upload",
    "mcp_tool_use", "Text", "", "tool_result ")), any_text)
MUTATIONS = st.sampled_from(("replace", "delete", "null", "odd", "wrong_type", "block", "duplicate", "huge"))
block_fields = st.dictionaries(json_keys, json_values, max_size=3)


@st.composite
def almost_valid_requests(draw) -> dict:
    """A valid request with 1-3 random mutations: wrong types, missing or null fields, unknown or
    misplaced blocks, duplicated elements, odd and huge strings."""
    request = draw(valid_requests())
    for _ in range(draw(st.integers(1, 3))):
        slots = list(_slots(request))
        parent, key = slots[draw(st.integers(0, len(slots) - 1))]
        kind = draw(MUTATIONS)
        value = parent[key]
        if kind == "replace":
            parent[key] = draw(json_values)
        elif kind == "delete":
            del parent[key]
        elif kind == "null":
            parent[key] = None
        elif kind == "odd":
            parent[key] = draw(odd_strings)
        elif kind == "wrong_type":
            parent[key] = [[value], {"value": value}, json.dumps(value), 0, True, 1.5, []][draw(st.integers(0, 6))]
        elif kind == "block":  # an unknown, misplaced or half-built block next to this one
            block = {"type": draw(BLOCK_TYPES)}
            block.update(draw(block_fields))
            target = parent if isinstance(parent, list) else parent.setdefault("content", [])
            if isinstance(target, list):
                target.insert(draw(st.integers(0, len(target))), block)
        elif kind == "duplicate" and isinstance(parent, list):
            parent.insert(key, json.loads(json.dumps(value)))
        elif kind == "huge":
            parent[key] = draw(huge_strings)
    return request


def _body(document) -> bytes:
    # ensure_ascii: lone surrogates travel as \\udXXX escapes, as a JSON client would send them.
    return json.dumps(document, ensure_ascii=True, allow_nan=True).encode()


raw_bodies = st.one_of(
    st.binary(max_size=200),
    st.sampled_from((b"", b"{", b"[]", b"null", b"\xff\xfe{}", b'{"messages": NaN}', b'\xef\xbb\xbf{}',
                     b'{"a": "\\ud800"}', b"{}" * 1000, b'{"model": 1e999}')),
)


# --------------------------------------------------------------------------- the tests

@FUZZ
@given(document=json_documents)
def test_arbitrary_json_never_5xx(fuzz_app, document):
    app, network = fuzz_app
    check(app, network, _body(document))


@FUZZ
@given(raw=raw_bodies)
def test_arbitrary_bytes_never_5xx(fuzz_app, raw):
    app, network = fuzz_app
    status = check(app, network, raw)
    assert status == 400 or raw.strip(b"\xef\xbb\xbf \t\r\n").startswith(b"{")


BASH = {"name": "Bash", "input_schema": {"type": "object"}}


def _tool_turns(*assistant_contents) -> list[dict]:
    """user, assistant (the given blocks), user answering each tool use, for each content."""
    messages = []
    for blocks in assistant_contents:
        messages.append({"role": "user", "content": "go"})
        messages.append({"role": "assistant", "content": blocks})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": b["id"], "content": "ok"} for b in blocks]})
    return messages


USE_0 = {"type": "tool_use", "id": "0", "name": "Bash", "input": {}}


@FUZZ
@given(request=valid_requests())
# Bug (fixed in amq/convert.py): a lone surrogate reached QClient's UTF-8 encoding: HTTP 500.
@example(request={"model": "claude-sonnet-4-5", "max_tokens": 1,
                  "messages": [{"role": "user", "content": "cut \ud83d"}]})
# Bug (fixed): a surrogate in a tool-use id or tool_choice name crashed the name hashing: 500.
@example(request={"model": "claude-sonnet-4-5", "max_tokens": 9, "tools": [BASH],
                  "tool_choice": {"type": "tool", "name": "B\udc80"},
                  "messages": _tool_turns([dict(USE_0, id="\udc80")])})
# Bug (fixed): a tool-use id used twice, in one turn or in two, made Q refuse the request.
@example(request={"model": "claude-sonnet-4-5", "max_tokens": 1, "tools": [BASH],
                  "messages": _tool_turns([USE_0, USE_0])})
@example(request={"model": "claude-sonnet-4-5", "max_tokens": 1, "tools": [BASH],
                  "messages": _tool_turns([USE_0], [USE_0], [USE_0, dict(USE_0, id="0_2")])})
def test_valid_requests_reach_q_in_a_shape_q_accepts(fuzz_app, request):
    app, network = fuzz_app
    status, calls = exchange(app, network, _body(request))
    if status != 200:  # the only refusals a valid request may get: odd model names, Q's size limit
        assert calls and calls[-1].too_long, (status, request)


@FUZZ
@given(request=almost_valid_requests())
# Bug (fixed in amq/convert.py): a search_result text that is not a string: HTTP 500.
@example(request={"model": "claude-sonnet-4-5", "max_tokens": 1, "messages": [{"role": "user", "content": [
    {"type": "search_result", "title": "", "source": "", "content": [{"type": "text", "text": None}]}]}]})
# Bug (fixed): Infinity and NaN went to Q as bare words, which are not JSON.
@example(request={"model": "claude-sonnet-4-5", "max_tokens": 1, "tools": [BASH],
                  "messages": _tool_turns([dict(USE_0, input={"n": math.inf})])})
# Bug (fixed): a tool name with a lone surrogate: hashing crashed (500); it is now a 400.
@example(request={"model": "claude-sonnet-4-5", "max_tokens": 1, "stream": True,
                  "tools": [dict(BASH, name="Bash\ud800")], "messages": [{"role": "user", "content": "hi"}]})
def test_almost_valid_requests(fuzz_app, request):
    app, network = fuzz_app
    check(app, network, _body(request))


@THOUSANDS
@given(raw=st.one_of(almost_valid_requests().map(_body), json_documents.map(_body), raw_bodies))
def test_thousands_of_inputs(fuzz_app, raw):
    """About 3000 mixed inputs (plus count_tokens); well under 60 s, each request under 10 s."""
    app, network = fuzz_app
    check(app, network, raw)


@settings(FUZZ, max_examples=150)
@given(request=almost_valid_requests())
def test_unreachable_q_is_a_502_never_a_500(fuzz_app, request):
    """With Q unreachable, what amq refuses by itself is refused the same way (it is checked
    before any call), and what it would send to Q is a 502, never a 500."""
    app, network = fuzz_app
    status, calls = exchange(app, network, _body(request))
    network.upstream_down = True
    try:
        network.calls.clear()
        with _deadline(REQUEST_TIMEOUT):
            response = app.test_client().post("/v1/messages", data=_body(request),
                                              content_type="application/json")
            response.get_data()
    finally:
        network.upstream_down = False
    error = _assert_error_shape(response, repr(request)[:300])
    if calls:  # amq called Q: now it cannot
        assert response.status_code == 502 and network.calls, (response.status_code, error)
    else:
        assert response.status_code == status and not network.calls, (status, response.status_code, error)


# --------------------------------------------------------------------------- regressions

def test_lone_surrogate_in_model_keeps_the_stream_whole(fuzz_app):
    app, network = fuzz_app
    exchange(app, network, _body({"model": "claude-\ud800", "max_tokens": 10, "stream": True,
                                  "messages": [{"role": "user", "content": "hi"}]}))


@pytest.mark.parametrize("raw", [b"[" * 100_000, b'{"messages": ' + b"[" * 100_000])
def test_deeply_nested_body_is_a_400(fuzz_app, raw):
    app, network = fuzz_app
    assert check(app, network, raw) == 400
