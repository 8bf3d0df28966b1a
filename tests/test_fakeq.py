"""Tests for the fake Amazon Q server: its validation rules, token endpoint and stream framing."""
from __future__ import annotations

import base64
import copy
import json
import socket
import time

import pytest
import requests
from botocore.eventstream import EventStreamBuffer

from tests.eventstream_encode import encode_error, encode_event, encode_exception
from tests.fakeq import (
    GAR_TARGET,
    LIST_MODELS_TARGET,
    FakeQ,
    events_reply,
    http_error,
    raw_reply,
    text_reply,
    tool_reply,
    typical_reply,
    validate_request,
)

RPC_HEADERS = {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": GAR_TARGET}

# A request in the shape the Q CLI sends: history with a tool use, its result in the current
# message (docs/amazon-q-api.md, "Request body").
SPEC_EXAMPLE = {
    "conversationState": {
        "conversationId": "3d6c1d0e-4a5b-4a57-8f0e-2b3c4d5e6f70",
        "chatTriggerType": "MANUAL",
        "history": [
            {"userInputMessage": {
                "content": "List the files in /tmp",
                "origin": "CLI",
                "userInputMessageContext": {"envState": {"operatingSystem": "linux",
                                                         "currentWorkingDirectory": "/home/u"}}}},
            {"assistantResponseMessage": {
                "messageId": "b3f1e2d4-0000-4000-8000-000000000001",
                "content": "I'll list them.",
                "toolUses": [{"toolUseId": "tooluse_abc123", "name": "execute_bash",
                              "input": {"command": "ls /tmp"}}]}},
        ],
        "currentMessage": {
            "userInputMessage": {
                "content": "",
                "origin": "CLI",
                "modelId": "claude-sonnet-4",
                "userInputMessageContext": {
                    "envState": {"operatingSystem": "linux", "currentWorkingDirectory": "/home/u"},
                    "toolResults": [
                        {"toolUseId": "tooluse_abc123", "status": "success",
                         "content": [{"json": {"exit_status": "0", "stdout": "a.txt\nb.txt\n", "stderr": ""}}]}],
                    "tools": [
                        {"toolSpecification": {
                            "name": "execute_bash",
                            "description": "Run a shell command",
                            "inputSchema": {"json": {"type": "object", "properties": {"command": {"type": "string"}},
                                                     "required": ["command"]}}}}],
                },
            }
        },
    }
}

MINIMAL = {"conversationState": {"chatTriggerType": "MANUAL",
                                 "currentMessage": {"userInputMessage": {"content": "Hi"}}}}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()


# ---------------------------------------------------------------- validate_request

def _state(body):
    return body["conversationState"]


def _cur(body):
    return body["conversationState"]["currentMessage"]["userInputMessage"]


def _ctx(body):
    return _cur(body)["userInputMessageContext"]


def _hist(body, i):
    return next(iter(body["conversationState"]["history"][i].values()))


def _tool(body):
    return _ctx(body)["tools"][0]["toolSpecification"]


def _set(getter, key, value):
    def mutate(body):
        getter(body)[key] = value
    return mutate


def _del(getter, key):
    def mutate(body):
        del getter(body)[key]
    return mutate


def _add_image(n=1, **image):
    def mutate(body):
        _cur(body)["images"] = [{"format": "png", "source": {"bytes": PNG}, **image} for _ in range(n)]
    return mutate


def _append_history(*entries):
    def mutate(body):
        _state(body)["history"] += copy.deepcopy(list(entries))
    return mutate


def _extra_tool_use(**use):
    def mutate(body):
        _hist(body, 1)["toolUses"].append({"toolUseId": "tooluse_2", "name": "execute_bash", "input": {}, **use})
    return mutate


def _dup_tool(body):
    _ctx(body)["tools"].append(copy.deepcopy(_ctx(body)["tools"][0]))


def _second_result(body):
    _ctx(body)["toolResults"].append(copy.deepcopy(_ctx(body)["toolResults"][0]))


def _no_tools(body):
    del _ctx(body)["tools"]


def _first_turn_results(body):
    _hist(body, 0)["userInputMessageContext"]["toolResults"] = copy.deepcopy(_ctx(body)["toolResults"])


def _results_without_use(body):
    _hist(body, 1)["toolUses"] = []


def _strip_results(body):
    del _ctx(body)["toolResults"]
    _cur(body)["content"] = "never mind"


def _empty_current(body):
    del _ctx(body)["toolResults"]
    del _hist(body, 1)["toolUses"]


def _reused_tool_use_id(body):
    # a second round that reuses the first round's id
    _state(body)["history"] += [
        {"userInputMessage": copy.deepcopy(_cur(body))},
        {"assistantResponseMessage": {"content": "", "toolUses": [
            {"toolUseId": "tooluse_abc123", "name": "execute_bash", "input": {}}]}},
    ]
    del _state(body)["history"][2]["userInputMessage"]["userInputMessageContext"]["tools"]


USER = {"userInputMessage": {"content": "again"}}
ASSISTANT = {"assistantResponseMessage": {"content": "ok"}}

# (id, mutation of SPEC_EXAMPLE, expected substring of the rejection, expected reason)
NEGATIVE_CASES = [
    ("missing-conversationState", _del(lambda b: b, "conversationState"), "missing conversationState", None),
    ("unknown-top-level-key", _set(lambda b: b, "system", "x"), "unknown key(s) ['system'] in request body", None),
    ("bad-profileArn", _set(lambda b: b, "profileArn", "arn:aws:iam::1:role/x"), "profileArn", None),
    ("unknown-state-key", _set(_state, "messages", []), "in conversationState", None),
    ("missing-chatTriggerType", _del(_state, "chatTriggerType"), "chatTriggerType", None),
    ("bad-chatTriggerType", _set(_state, "chatTriggerType", "AUTO"), "chatTriggerType", None),
    ("empty-conversationId", _set(_state, "conversationId", ""), "conversationId must be 1-128", None),
    ("long-conversationId", _set(_state, "conversationId", "c" * 129), "conversationId must be 1-128", None),
    ("null-value", _set(_state, "history", None), "null value", None),
    ("missing-currentMessage", _del(_state, "currentMessage"), "missing currentMessage", None),
    ("currentMessage-assistant", _set(_state, "currentMessage", {"assistantResponseMessage": {"content": "x"}}),
     "currentMessage must be exactly", None),
    ("currentMessage-two-keys", lambda b: _state(b)["currentMessage"].update(assistantResponseMessage={"content": ""}),
     "currentMessage must be exactly", None),
    ("history-entry-two-keys", lambda b: _state(b)["history"][0].update(assistantResponseMessage={"content": ""}),
     "history[0] must be exactly one of", None),
    ("history-entry-unknown-kind", _append_history({"systemMessage": {"content": "x"}}),
     "history[2] must be exactly one of", None),
    ("history-starts-with-assistant", lambda b: _state(b)["history"].insert(0, copy.deepcopy(ASSISTANT)),
     "must alternate", None),
    ("history-two-users", _append_history(USER), "must alternate", None),
    ("history-ends-with-user", _append_history(ASSISTANT, USER), "must alternate", None),
    ("missing-content", _del(_cur, "content"), "currentMessage.content missing", None),
    ("content-not-string", _set(_cur, "content", ["x"]), "currentMessage.content missing or not a string", None),
    ("assistant-content-missing", _del(lambda b: _hist(b, 1), "content"), "history[1].content missing", None),
    ("bad-origin", _set(_cur, "origin", "cli"), "origin 'cli'", None),
    ("bad-userIntent", _set(_cur, "userIntent", "CHAT"), "userIntent", None),
    ("unknown-model", _set(_cur, "modelId", "gpt-4"), "modelId 'gpt-4'", "INVALID_MODEL_ID"),
    ("content-too-long", _set(_cur, "content", "x" * 600_001), "600001 chars", "CONTENT_LENGTH_EXCEEDS_THRESHOLD"),
    ("history-content-too-long", _set(lambda b: _hist(b, 0), "content", "x" * 600_001), "history[0].content",
     "CONTENT_LENGTH_EXCEEDS_THRESHOLD"),
    ("body-too-large", lambda b: _hist(b, 1).update(content="y" * 2_000_001), "request body is",
     "CONTENT_LENGTH_EXCEEDS_THRESHOLD"),
    ("unknown-user-key", _set(_cur, "role", "user"), "in currentMessage", None),
    ("unknown-context-key", _set(_ctx, "system", "x"), "in currentMessage.userInputMessageContext", None),
    ("unknown-assistant-key", _set(lambda b: _hist(b, 1), "stopReason", "end"), "in history[1]", None),
    ("bad-envState", _set(lambda b: _ctx(b)["envState"], "operatingSystem", "darwin"), "operatingSystem", None),
    ("long-cwd", _set(lambda b: _ctx(b)["envState"], "currentWorkingDirectory", "/" * 257),
     "currentWorkingDirectory", None),
    ("tools-on-history", _set(lambda b: _hist(b, 0)["userInputMessageContext"], "tools", []),
     "tools belong on currentMessage", None),
    ("tool-name-pattern", _set(_tool, "name", "exec bash"), "must match", None),
    ("tool-name-too-long", _set(_tool, "name", "t" * 65), "must match", None),
    ("tool-description-empty", _set(_tool, "description", ""), "description must be 1-10240", None),
    ("tool-description-too-long", _set(_tool, "description", "d" * 10241), "description must be 1-10240", None),
    ("tool-missing-inputSchema", _del(_tool, "inputSchema"), "inputSchema", None),
    ("tool-inputSchema-not-json", _set(_tool, "inputSchema", {"type": "object"}), "inputSchema", None),
    ("tool-not-a-union", lambda b: _ctx(b)["tools"].append({"name": "x"}), "tools[1] must be exactly one of", None),
    ("duplicate-tool-names", _dup_tool, "duplicate tool name", None),
    ("toolUse-missing-input", _del(lambda b: _hist(b, 1)["toolUses"][0], "input"),
     "needs toolUseId, name and input", None),
    ("toolUse-input-string", _set(lambda b: _hist(b, 1)["toolUses"][0], "input", '{"command": "ls"}'),
     "input must be a JSON object", None),
    ("toolUseId-pattern", _extra_tool_use(toolUseId="tool.use:1"), "must match", None),
    ("toolUse-unknown-name", _extra_tool_use(name="read_file"), "'read_file' is not in currentMessage tools", None),
    ("toolUse-without-tools", _no_tools, "offers no tools", None),
    ("toolUse-unanswered", _extra_tool_use(), "lacks toolResults for toolUseIds ['tooluse_2']", None),
    ("toolUse-answered-late", _strip_results, "lacks toolResults", None),
    ("toolUseId-reused", _reused_tool_use_id, "duplicate toolUseId", None),
    ("toolResult-answers-nothing", _results_without_use, "answers no toolUse", None),
    ("toolResult-twice", _second_result, "twice", None),
    ("toolResults-in-first-turn", _first_turn_results, "first user message", None),
    ("toolResult-empty-content", _set(lambda b: _ctx(b)["toolResults"][0], "content", []), "non-empty list", None),
    ("toolResult-content-block", _set(lambda b: _ctx(b)["toolResults"][0], "content", [{"type": "text", "text": "x"}]),
     "content[0] must be exactly one of", None),
    ("toolResult-text-not-string", _set(lambda b: _ctx(b)["toolResults"][0], "content", [{"text": 1}]),
     "text must be a string", None),
    ("toolResult-bad-status", _set(lambda b: _ctx(b)["toolResults"][0], "status", "SUCCESS"), "status", None),
    ("toolResult-missing-id", _del(lambda b: _ctx(b)["toolResults"][0], "toolUseId"), "toolUseId must match", None),
    ("too-many-images", _add_image(11), "at most 10", None),
    ("image-format", _add_image(format="image/png"), "format must be one of", None),
    ("image-source-shape", _add_image(source={"base64": PNG}), "source must be", None),
    ("image-bad-base64", _add_image(source={"bytes": "not base64!"}), "not valid base64", None),
    ("image-empty-bytes", _add_image(source={"bytes": ""}), "is empty", None),
    ("empty-current-message", _empty_current, "empty content and neither", None),
]


def test_minimal_body_is_valid():
    assert validate_request(MINIMAL) is None


def test_spec_example_is_valid():
    assert validate_request(SPEC_EXAMPLE) is None


def test_images_and_text_results_are_valid():
    body = copy.deepcopy(SPEC_EXAMPLE)
    _add_image(10)(body)
    _ctx(body)["toolResults"][0]["content"] = [{"text": "a"}, {"json": [1, 2]}]
    _ctx(body)["tools"].append({"cachePoint": {"type": "default"}})
    assert validate_request(body) is None


def test_empty_current_message_with_only_an_image_is_valid():
    body = copy.deepcopy(MINIMAL)
    _cur(body)["content"] = ""
    _add_image()(body)
    assert validate_request(body) is None


@pytest.mark.parametrize("mutate, expected, reason", [c[1:] for c in NEGATIVE_CASES],
                         ids=[c[0] for c in NEGATIVE_CASES])
def test_rejects(mutate, expected, reason):
    body = copy.deepcopy(SPEC_EXAMPLE)
    mutate(body)
    error = validate_request(body)
    assert error is not None and expected in error, error
    assert error.reason == reason


@pytest.mark.parametrize("body", [None, [], "x"], ids=["null", "list", "string"])
def test_rejects_non_object_bodies(body):
    assert "request body must be an object" in validate_request(body)


def test_models_argument_decides_model_ids():
    body = copy.deepcopy(MINIMAL)
    _cur(body)["modelId"] = "my-model"
    assert validate_request(body, ["my-model"]) is None
    assert validate_request(body).reason == "INVALID_MODEL_ID"


# ---------------------------------------------------------------- live server

def _auth(fake):
    return {**RPC_HEADERS, "Authorization": f"Bearer {fake.access_token}"}


def _post(fake, body=MINIMAL, headers=None, **kwargs):
    return requests.post(fake.url, data=json.dumps(body), headers=headers or _auth(fake), timeout=10, **kwargs)


def _decode(data: bytes) -> list[tuple[dict, dict]]:
    buf = EventStreamBuffer()
    buf.add_data(data)
    return [(m.headers, json.loads(m.payload) if m.payload else {}) for m in buf]


def _events(data: bytes) -> list[tuple[str, dict]]:
    return [(h[":event-type"], p) for h, p in _decode(data)]


def test_token_refresh_rotates(fake):
    old = fake.refresh_token
    body = {"clientId": fake.client_id, "clientSecret": fake.client_secret, "grantType": "refresh_token",
            "refreshToken": old}
    r = requests.post(fake.token_url, json=body, timeout=10)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["tokenType"] == "Bearer" and out["expiresIn"] == 3600
    assert out["refreshToken"] == fake.refresh_token != old
    assert fake.token_requests == [body]

    again = requests.post(fake.token_url, json=body, timeout=10)
    assert again.status_code == 400
    assert again.json() == {"error": "invalid_grant", "error_description": "Invalid refresh token provided"}
    assert again.headers["x-amzn-ErrorType"].startswith("InvalidGrantException:")

    # the new access token works against Q
    r = _post(fake, headers={**RPC_HEADERS, "Authorization": "Bearer " + out["accessToken"]})
    assert r.status_code == 200


def test_token_without_rotation_keeps_refresh_token():
    with FakeQ(rotate_refresh_tokens=False, access_token_ttl=60) as fake:
        body = {"clientId": fake.client_id, "clientSecret": fake.client_secret, "grantType": "refresh_token",
                "refreshToken": fake.refresh_token}
        for _ in range(2):
            r = requests.post(fake.token_url, json=body, timeout=10)
            assert r.status_code == 200 and r.json()["refreshToken"] == body["refreshToken"]
            assert r.json()["expiresIn"] == 60


@pytest.mark.parametrize("change, status, error", [
    ({"clientSecret": "wrong"}, 401, "invalid_client"),
    ({"grantType": "password"}, 400, "unsupported_grant_type"),
    ({"refresh_token": "x"}, 400, "invalid_request"),
], ids=["wrong-client", "grant-type", "snake-case"])
def test_token_errors(fake, change, status, error):
    body = {"clientId": fake.client_id, "clientSecret": fake.client_secret, "grantType": "refresh_token",
            "refreshToken": fake.refresh_token, **change}
    r = requests.post(fake.token_url, json=body, timeout=10)
    assert (r.status_code, r.json()["error"]) == (status, error)


def test_stream_decodes_to_scripted_events(fake):
    fake.enqueue(text_reply("Hello there, world", chunks=3),
                 tool_reply("execute_bash", {"command": "ls /tmp"}, tool_use_id="tooluse_1", text="Let me look."))
    r = _post(fake, SPEC_EXAMPLE)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/vnd.amazon.eventstream"
    assert r.headers["transfer-encoding"] == "chunked" and r.headers["x-amzn-requestid"]
    events = _events(r.content)
    assert events[0][0] == "messageMetadataEvent"
    assert events[0][1]["conversationId"] == SPEC_EXAMPLE["conversationState"]["conversationId"]
    assert events[1:] == [("assistantResponseEvent", {"content": c}) for c in ("Hello ", "there,", " world")]

    r = requests.post(fake.url + "generateAssistantResponse", data=json.dumps(MINIMAL), timeout=10,
                      headers={"Content-Type": "application/json", "Authorization": f"Bearer {fake.access_token}"})
    events = _events(r.content)
    assert events[1] == ("assistantResponseEvent", {"content": "Let me look."})
    assert events[2] == ("toolUseEvent", {"toolUseId": "tooluse_1", "name": "execute_bash"})
    tool = [p for t, p in events[3:]]
    assert all(t == "toolUseEvent" for t, _ in events[3:]) and len(tool) == 3
    assert json.loads("".join(p["input"] for p in tool)) == {"command": "ls /tmp"}
    assert [p.get("stop") for p in tool] == [None, None, True]
    assert [rec["target"] for rec in fake.requests] == [GAR_TARGET, None]
    assert fake.requests[1]["headers"]["authorization"] == f"Bearer {fake.access_token}"


def test_default_reply_and_raw_frames(fake):
    events = _events(_post(fake).content)
    assert events[0][0] == "messageMetadataEvent" and len(events) == 4
    assert "".join(p["content"] for _, p in events[1:]) == "Hello from fake Q."
    fake.enqueue(raw_reply([encode_event("assistantResponseEvent", {"content": "a"}),
                            encode_exception("ThrottlingException", "slow down"),
                            encode_error("InternalError", "boom")]))
    kinds = [h[":message-type"] for h, _ in _decode(_post(fake).content)]
    assert kinds == ["event", "exception", "error"]
    fake.enqueue(events_reply([("meteringEvent", {"usage": 0.01})]))
    assert _events(_post(fake).content) == [("meteringEvent", {"usage": 0.01})]


def test_typical_reply_has_about_fifty_text_frames(fake):
    fake.enqueue(typical_reply())
    events = _events(_post(fake).content)
    assert sum(t == "assistantResponseEvent" for t, _ in events) == 50


def test_http_error_reply(fake):
    fake.enqueue(http_error(429, "ThrottlingException", "Rate exceeded", "INSUFFICIENT_MODEL_CAPACITY",
                            headers={"Retry-After": "1"}))
    r = _post(fake)
    assert r.status_code == 429
    assert r.json() == {"__type": "com.amazon.aws.codewhisperer#ThrottlingException", "message": "Rate exceeded",
                        "reason": "INSUFFICIENT_MODEL_CAPACITY"}
    assert r.headers["x-amzn-errortype"] == "ThrottlingException:http://internal.amazon.com/coral/com.amazon.aws.codewhisperer/"
    assert r.headers["Retry-After"] == "1"
    assert _post(fake).status_code == 200  # the script moved on


def test_validation_error_over_http(fake):
    fake.enqueue(text_reply("kept for the next valid call"))
    body = copy.deepcopy(SPEC_EXAMPLE)
    _set(_cur, "modelId", "gpt-4")(body)
    r = _post(fake, body)
    assert r.status_code == 400 and r.json()["reason"] == "INVALID_MODEL_ID"
    assert r.json()["message"] == "Invalid model. Please select a different model to continue the conversation."
    del _hist(body, 1)["toolUses"][0]["input"]
    r = _post(fake, body)
    assert r.json() == {"__type": "com.amazon.aws.codewhisperer#ValidationException",
                        "message": "Improperly formed request.", "reason": None}
    assert r.headers["x-amzn-errortype"].startswith("ValidationException:")
    assert len(fake.rejections) == 2 and fake.requests[1]["error"] == fake.rejections[1]
    r = _post(fake, headers={**_auth(fake), "Content-Type": "application/json"})
    assert r.status_code == 400 and "content type" in fake.rejections[-1]
    assert "".join(p["content"] for _, p in _events(_post(fake).content)[1:]) == "kept for the next valid call"


def test_content_too_long_over_http():
    with FakeQ(max_content_chars=10) as fake:
        body = copy.deepcopy(MINIMAL)
        _cur(body)["content"] = "x" * 11
        r = _post(fake, body)
        assert r.status_code == 400
        assert r.json() == {"__type": "com.amazon.aws.codewhisperer#ValidationException",
                            "message": "Input is too long.", "reason": "CONTENT_LENGTH_EXCEEDS_THRESHOLD"}


def test_expired_access_tokens_get_403(fake):
    assert _post(fake).status_code == 200
    fake.expire_access_tokens()
    r = _post(fake)
    assert r.status_code == 403
    assert r.json()["__type"] == "com.amazon.aws.codewhisperer#AccessDeniedException"
    assert r.json()["message"] == "The bearer token included in the request is invalid."
    assert _post(fake, headers=RPC_HEADERS).status_code == 403
    assert len(fake.requests) == 1  # rejected auth is not recorded


def test_access_token_ttl():
    with FakeQ(access_token_ttl=0.2) as fake:
        assert _post(fake).status_code == 200
        time.sleep(0.3)
        assert _post(fake).status_code == 403


def test_require_auth_false():
    with FakeQ(require_auth=False) as fake:
        assert _post(fake, headers=RPC_HEADERS).status_code == 200


def test_unknown_operation(fake):
    r = _post(fake, headers={**_auth(fake), "X-Amz-Target": "AmazonCodeWhispererStreamingService.SendMessage"})
    assert r.status_code == 400 and "UnknownOperationException" in r.json()["__type"]
    assert requests.get(fake.url + "generateAssistantResponse", timeout=10).status_code == 400


def test_list_available_models_paginates(fake):
    headers = {**_auth(fake), "X-Amz-Target": LIST_MODELS_TARGET}
    ids, token = [], None
    while True:
        body = {"origin": "CLI", "maxResults": 4, **({"nextToken": token} if token else {})}
        out = requests.post(fake.url, json=body, headers=headers, timeout=10).json()
        ids += [m["modelId"] for m in out["models"]]
        assert out["defaultModel"] == {"modelId": "auto"}
        assert out["models"][0]["tokenLimits"] == {"maxInputTokens": 200000, "maxOutputTokens": 64000}
        token = out.get("nextToken")
        if not token:
            break
    assert ids == fake.models and len(fake.model_requests) == 3
    r = requests.post(fake.url, json={"maxResults": 0}, headers=headers, timeout=10)
    assert r.status_code == 400


def _raw_chunks(fake, body=MINIMAL) -> tuple[bytes, list[int]]:
    """Send one request over a bare socket and return (head, sizes of the HTTP chunks received)."""
    data = json.dumps(body).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in _auth(fake).items())
    req = (f"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len(data)}\r\n"
           f"{head}\r\n").encode() + data
    port = int(fake.url.rsplit(":", 1)[1].strip("/"))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(req)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, rest = raw.partition(b"\r\n\r\n")
    sizes = []
    while True:
        line, _, rest = rest.partition(b"\r\n")
        size = int(line, 16)
        if size == 0:
            break
        sizes.append(size)
        assert rest[size:size + 2] == b"\r\n"
        rest = rest[size + 2:]
    return head, sizes


def test_chunks_are_uneven_and_straddle_frames(fake):
    reply = text_reply("word " * 200, chunks=40, seed=7)
    fake.enqueue(reply)
    head, sizes = _raw_chunks(fake)
    assert b"Transfer-Encoding: chunked" in head
    assert sum(sizes) == sum(len(f) for f in reply.frames(None))
    assert len(set(sizes)) > 10 and min(sizes) < 10 and max(sizes) > 100
    fake.enqueue(text_reply("word " * 200, chunks=40, seed=7))
    assert _raw_chunks(fake)[1] == sizes  # seeded: same chunking again


def test_cut_after_drops_the_connection(fake):
    fake.enqueue(text_reply("abcdefghij" * 20, chunks=5, cut_after=150))
    received = b""
    with pytest.raises(requests.exceptions.ChunkedEncodingError), _post(fake, stream=True) as r:
        for chunk in r.iter_content(chunk_size=None):
            received += chunk
    assert len(received) == 150


def test_delay_spaces_frames(fake):
    fake.enqueue(text_reply("abc", chunks=3, delay=0.1))
    start = time.monotonic()
    assert len(_events(_post(fake).content)) == 4
    assert time.monotonic() - start >= 0.3


def _wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


@pytest.mark.parametrize("reply", [text_reply("a b c d", chunks=4, hang=True),
                                   text_reply("a b c d", chunks=4, delay=0.5)],
                         ids=["hang", "delay"])
def test_client_going_away_is_counted(fake, reply):
    fake.enqueue(reply)
    r = _post(fake, stream=True)
    buf = EventStreamBuffer()
    buf.add_data(next(r.iter_content(chunk_size=None)))
    r.close()
    assert _wait_for(lambda: fake.closed_early == 1)


def test_stop_ends_a_hanging_stream():
    fake = FakeQ().start()
    fake.enqueue(events_reply([("assistantResponseEvent", {"content": "x"})], hang=True))
    r = _post(fake, stream=True)
    buf = EventStreamBuffer()
    chunks = r.iter_content(chunk_size=None)
    while not (messages := list(buf)):
        buf.add_data(next(chunks))
    assert json.loads(messages[0].payload) == {"content": "x"}
    start = time.monotonic()
    fake.stop()
    assert time.monotonic() - start < 2
    with pytest.raises(requests.exceptions.RequestException):
        for _ in r.iter_content(chunk_size=None):
            pass
    assert fake.closed_early == 0
