"""Fail safe: access control, bad input, the upstream error table, retries, timeouts,
mid-stream faults and a client that goes away, all against the real app."""
import json
import socket
import time

import pytest
import requests
import responses

from amq.errors import BadGateway
from app import create_app
from tests.eventstream_encode import encode_error, encode_event, encode_exception
from tests.fakeq import FakeQ, http_error, raw_reply, text_reply
from tests.support import amq_env, free_port, running_amq, sse_events

HI = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
KEYS = ("key-one-3f9a", "key-two-77c1")


def assert_error(response, status, error_type):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == error_type
    assert body["request_id"] == response.headers["request-id"]
    return body["error"]["message"]


@pytest.fixture(scope="module")
def strict_fake():
    """This module's own fake Q. Several apps here log in with the same refresh token, so it
    does not rotate (rotation is the business of tests/test_tokens.py and the e2e suite)."""
    with FakeQ(rotate_refresh_tokens=False) as fake:
        yield fake


@pytest.fixture
def fake_q(strict_fake):
    return strict_fake.reset()


@pytest.fixture(scope="module")
def strict_server(strict_fake, tmp_path_factory):
    """amq with proxy keys, a small body limit, short timeouts and frequent pings."""
    with running_amq(strict_fake, tmp_path_factory.mktemp("strict"), PROXY_API_KEYS=",".join(KEYS),
                     MAX_REQUEST_BYTES="4096", UPSTREAM_READ_TIMEOUT="1.5", PING_INTERVAL="0.3") as server:
        yield server


def post(server, body=HI, key=KEYS[0], stream=False, **kwargs):
    headers = {"x-api-key": key} if key else {}
    headers.update(kwargs.pop("headers", {}))
    return requests.post(server.url + "/v1/messages", json=dict(body, stream=stream), headers=headers,
                         timeout=kwargs.pop("timeout", 30), **kwargs)


# -- access control -------------------------------------------------------------------------

@pytest.mark.parametrize("headers", [{}, {"x-api-key": "wrong"}, {"authorization": "Bearer wrong"},
                                     {"authorization": "Basic " + KEYS[0]}],
                         ids=["none", "wrong-x-api-key", "wrong-bearer", "not-bearer"])
def test_keys_required_when_configured(strict_server, fake_q, headers):
    response = requests.post(strict_server.url + "/v1/messages", json=HI, headers=headers, timeout=10)
    assert "PROXY_API_KEYS" in assert_error(response, 401, "authentication_error")
    assert fake_q.requests == []  # nothing went upstream


@pytest.mark.parametrize("headers", [{"x-api-key": KEYS[0]}, {"authorization": f"Bearer {KEYS[1]}"}],
                         ids=["x-api-key", "bearer"])
def test_configured_keys_are_accepted(strict_server, fake_q, headers):
    response = requests.post(strict_server.url + "/v1/messages", json=HI, headers=headers, timeout=10)
    assert response.status_code == 200 and response.json()["type"] == "message"


def test_other_v1_endpoints_are_guarded_too(strict_server):
    assert requests.get(strict_server.url + "/v1/models", timeout=10).status_code == 401
    assert requests.post(strict_server.url + "/v1/messages/count_tokens", json=HI, timeout=10).status_code == 401
    assert requests.get(strict_server.url + "/health", timeout=10).status_code == 200


def test_without_keys_remote_clients_are_refused(client, fake_q):
    remote = client.post("/v1/messages", json=HI, environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert remote.status_code == 401
    assert "set PROXY_API_KEYS" in remote.get_json()["error"]["message"]
    assert fake_q.requests == []
    health = client.get("/health", environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert health.status_code == 200 and fake_q.client_secret not in health.get_data(as_text=True)


@pytest.mark.parametrize("header", ["X-Forwarded-For", "Forwarded", "X-Real-IP"])
def test_without_keys_clients_behind_a_local_reverse_proxy_are_refused(client, fake_q, header):
    response = client.post("/v1/messages", json=HI, headers={header: "203.0.113.9"},
                           environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert response.status_code == 401 and "PROXY_API_KEYS" in response.get_json()["error"]["message"]
    assert fake_q.requests == []


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1"])
def test_without_keys_loopback_clients_are_served(client, fake_q, address):
    response = client.post("/v1/messages", json=HI, environ_base={"REMOTE_ADDR": address})
    assert response.status_code == 200


# -- bad input ------------------------------------------------------------------------------

def test_body_over_the_limit_is_413(strict_server, fake_q):
    big = dict(HI, messages=[{"role": "user", "content": "x" * 10_000}])
    assert_error(post(strict_server, big), 413, "request_too_large")


def test_chunked_body_over_the_limit_is_413_without_reading_it_whole(strict_server, fake_q):
    sent = []

    def body():
        for _ in range(2_000):  # 2 MB offered, the limit is 4 KB
            sent.append(1)
            yield b"x" * 1024

    try:
        response = requests.post(strict_server.url + "/v1/messages", data=body(), timeout=10,
                                 headers={"x-api-key": KEYS[0], "content-type": "application/json"})
    except requests.ConnectionError:
        pass  # the server may hang up once it has said no; what matters is it stopped reading
    else:
        assert_error(response, 413, "request_too_large")
    assert fake_q.requests == []


@pytest.mark.parametrize("field,value", [("max_tokens", "ten"), ("max_tokens", 0), ("stream", "yes"),
                                         ("stop_sequences", "STOP"), ("model", 5), ("system", {"a": 1}),
                                         ("tools", "Bash")])
def test_ill_typed_fields_are_400_naming_the_field(strict_server, fake_q, field, value):
    response = requests.post(strict_server.url + "/v1/messages", json=dict(HI, **{field: value}),
                             headers={"x-api-key": KEYS[0]}, timeout=10)
    assert field in assert_error(response, 400, "invalid_request_error")


# -- the upstream error table ---------------------------------------------------------------

TABLE = [
    # (scripted replies, status, error type, text in message, header that must be set)
    ([http_error(400, "ValidationException", "Improperly formed request.")], 400,
     "invalid_request_error", "Improperly formed request.", None),
    ([http_error(400, "ValidationException", "Input is too long.", reason="CONTENT_LENGTH_EXCEEDS_THRESHOLD")],
     400, "invalid_request_error", "prompt is too long", None),
    ([http_error(429, "ThrottlingException", "Rate exceeded")] * 3, 429, "rate_limit_error", "Rate exceeded",
     "retry-after"),
    ([http_error(400, "ThrottlingException", "Maximum requests reached for this month.",
                 reason="MONTHLY_REQUEST_COUNT")], 429, "rate_limit_error", "monthly", "x-should-retry"),
    ([http_error(403, "AccessDeniedException", "User is not authorized to make this call.")], 403,
     "permission_error", "not authorized", None),
    ([http_error(403, "AccessDeniedException", "Your User ID temporarily is suspended.",
                 reason="TEMPORARILY_SUSPENDED")], 403, "permission_error", "suspended", None),
    ([http_error(403, "AccessDeniedException", "The bearer token included in the request is invalid.")] * 2,
     403, "permission_error", "bearer token", None),
    ([http_error(500, "InternalServerException", "Encountered an unexpected error")] * 3, 500, "api_error",
     "unexpected error", None),
    ([http_error(400, "ThrottlingException", "I am experiencing high traffic",
                 reason="INSUFFICIENT_MODEL_CAPACITY")] * 3, 529, "overloaded_error", "high traffic", "retry-after"),
    ([http_error(500, "ServiceUnavailableException", "The service is temporarily unavailable.")] * 3, 529,
     "overloaded_error", "temporarily unavailable", None),
    ([http_error(500, "InternalServerException", "Encountered unexpectedly high load",
                 reason="MODEL_TEMPORARILY_UNAVAILABLE")] * 3, 529, "overloaded_error", "high load", None),
]


@pytest.mark.parametrize("replies,status,error_type,text,header", TABLE,
                         ids=["validation", "too-long", "throttled", "monthly-quota", "access-denied",
                              "suspended", "bearer-after-refresh", "5xx", "model-capacity",
                              "service-unavailable", "high-load"])
@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
def test_upstream_error_table(strict_server, fake_q, replies, status, error_type, text, header, stream):
    fake_q.enqueue(*replies)
    response = post(strict_server, stream=stream)
    message = assert_error(response, status, error_type)
    assert text.lower() in message.lower()
    if header:
        assert header in response.headers
    assert len(fake_q.requests) == len(replies)  # retried exactly as often as scripted


def test_refresh_token_rejected_is_401_saying_how_to_fix_it(tmp_path, fake_q):
    env = amq_env(fake_q, tmp_path / "token.json", AMAZONQ_REFRESH_TOKEN="aorAAAA-spent")
    response = create_app(env).test_client().post("/v1/messages", json=HI)
    assert response.status_code == 401
    message = response.get_json()["error"]["message"]
    assert "refresh token is no longer valid" in message and "AMAZONQ_REFRESH_TOKEN" in message
    assert "aorAAAA-spent" not in response.get_data(as_text=True)


def test_connection_refused_is_502(tmp_path, fake_q):
    closed = f"http://127.0.0.1:{free_port()}/"  # nothing listens there
    env = amq_env(fake_q, tmp_path / "token.json", AMAZONQ_API_ENDPOINT=closed, UPSTREAM_MAX_ATTEMPTS="2",
                  UPSTREAM_RETRY_BUDGET="3")
    response = create_app(env).test_client().post("/v1/messages", json=HI)
    assert response.status_code == 502 and response.get_json()["error"]["type"] == "api_error"
    assert "cannot reach Amazon Q" in response.get_json()["error"]["message"]


@responses.activate
def test_dns_failure_is_502(tmp_path):
    responses.post("https://oidc.example.invalid/token", json={"accessToken": "at", "expiresIn": 3600})
    responses.post("https://q.example.invalid/", body=requests.ConnectionError(
        "Failed to resolve 'q.example.invalid' ([Errno -2] Name or service not known)"))
    app = create_app({"AMAZONQ_REFRESH_TOKEN": "r", "AMAZONQ_CLIENT_ID": "c", "AMAZONQ_CLIENT_SECRET": "s",
                      "AMAZONQ_API_ENDPOINT": "https://q.example.invalid/", "UPSTREAM_MAX_ATTEMPTS": "1",
                      "AMAZONQ_TOKEN_ENDPOINT": "https://oidc.example.invalid/token",
                      "AMAZONQ_TOKEN_CACHE": str(tmp_path / "t.json")})
    proxy = app.extensions["amq"]
    proxy.models.stop_fetching()  # no model-list call in this test
    with pytest.raises(BadGateway):
        proxy.client.open({"conversationState": {}})
    response = app.test_client().post("/v1/messages", json=HI)
    assert response.status_code == 502


def test_upstream_timeout_is_504(strict_server, fake_q):
    fake_q.enqueue(http_error(500, "InternalServerException", "never sent", hang=True))
    started = time.monotonic()
    assert_error(post(strict_server), 504, "timeout_error")
    assert time.monotonic() - started < 10


# -- retries --------------------------------------------------------------------------------

@pytest.mark.parametrize("first", [http_error(429, "ThrottlingException", "Rate exceeded"),
                                   http_error(500, "InternalServerException", "oops")], ids=["429", "500"])
def test_transient_errors_are_retried_before_the_first_byte(strict_server, fake_q, first):
    fake_q.enqueue(first, text_reply("second time lucky"))
    response = post(strict_server)
    assert response.status_code == 200 and response.json()["content"][0]["text"] == "second time lucky"
    assert len(fake_q.requests) == 2


def test_no_retry_after_streaming_began(strict_server, fake_q):
    fake_q.enqueue(raw_reply([encode_event("assistantResponseEvent", {"content": "part"}),
                              encode_exception("ThrottlingException", "Rate exceeded")]))
    events = sse_events(post(strict_server, stream=True))
    assert events[-1][0] == "error" and events[-1][1]["error"]["type"] == "rate_limit_error"
    assert len(fake_q.requests) == 1


# -- timeouts and pings ---------------------------------------------------------------------

def test_stalled_stream_ends_with_timeout_error_within_the_read_timeout(strict_server, fake_q):
    fake_q.enqueue(text_reply("first words", chunks=2, hang=True))
    started = time.monotonic()
    events = sse_events(post(strict_server, stream=True))
    assert time.monotonic() - started < 6
    assert events[-1][0] == "error" and events[-1][1]["error"]["type"] == "timeout_error"
    assert "message_stop" not in [name for name, _ in events]


def test_pings_keep_a_slow_but_alive_stream_open(strict_server, fake_q):
    fake_q.enqueue(text_reply("slow but steady answer", chunks=3, delay=1.0))  # under the 1.5 s read timeout
    events = sse_events(post(strict_server, stream=True))
    names = [name for name, _ in events]
    assert names[-1] == "message_stop"
    first_delta = names.index("content_block_delta")
    assert "ping" in names[first_delta:]  # pings while Q was silent mid-answer
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == "slow but steady answer"


# -- mid-stream faults ----------------------------------------------------------------------

GOOD = encode_event("assistantResponseEvent", {"content": "partial "})
FAULTS = {
    "exception-frame": [GOOD, encode_exception("error", "Encountered an unexpected error")],
    "error-frame": [GOOD, encode_error("InternalError", "boom")],
    "crc-mismatch": [GOOD, GOOD[:-1] + bytes([GOOD[-1] ^ 1])],
    "frame-cut-at-end": [GOOD, GOOD[:40]],
}


@pytest.mark.parametrize("frames", FAULTS.values(), ids=FAULTS.keys())
def test_mid_stream_faults_end_with_an_error_event(strict_server, fake_q, frames):
    fake_q.enqueue(raw_reply(frames))
    response = post(strict_server, stream=True)
    events = sse_events(response)
    names = [name for name, _ in events]
    assert names[-1] == "error" and "message_stop" not in names
    assert events[-1][1]["error"]["type"] in ("api_error", "overloaded_error")
    assert events[-1][1]["request_id"] == response.headers["request-id"]


@pytest.mark.parametrize("frames", FAULTS.values(), ids=FAULTS.keys())
def test_mid_stream_faults_are_error_statuses_when_not_streaming(strict_server, fake_q, frames):
    fake_q.enqueue(raw_reply(frames))
    response = post(strict_server)
    assert response.status_code >= 500 and response.json()["type"] == "error"


def test_connection_reset_mid_stream(strict_server, fake_q):
    fake_q.enqueue(text_reply("a longer answer that is cut off partway through", chunks=8, cut_after=250))
    events = sse_events(post(strict_server, stream=True))
    assert events[-1][0] == "error" and "message_stop" not in [name for name, _ in events]
    fake_q.enqueue(text_reply("a longer answer that is cut off partway through", chunks=8, cut_after=250))
    response = post(strict_server)
    assert response.status_code == 502 and response.json()["error"]["type"] == "api_error"


# -- the client goes away -------------------------------------------------------------------

def test_client_gone_closes_the_upstream_at_once(strict_server, fake_q):
    fake_q.enqueue(text_reply("word " * 200, chunks=100, delay=0.1))
    before = fake_q.closed_early
    request = (f"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: {KEYS[0]}\r\n"
               "content-type: application/json\r\ncontent-length: {length}\r\n\r\n{body}")
    body = json.dumps(dict(HI, stream=True))
    with socket.create_connection(("127.0.0.1", strict_server.port), timeout=10) as sock:
        sock.sendall(request.format(length=len(body), body=body).encode())
        received = b""
        while b"content_block_delta" not in received:
            received += sock.recv(4096)
    gone_at = time.monotonic()
    while fake_q.closed_early == before and time.monotonic() - gone_at < 5:
        time.sleep(0.05)
    assert fake_q.closed_early > before
    assert time.monotonic() - gone_at < 3  # not after the remaining ~10 s of answer


# -- secrets --------------------------------------------------------------------------------

def test_keys_and_tokens_never_reach_the_log(strict_server, fake_q):
    fake_q.expire_access_tokens()
    post(strict_server, key=KEYS[1])
    post(strict_server, key="a-wrong-key-guess")
    log = strict_server.log_once("POST /v1/messages 200", "POST /v1/messages 401")
    for secret in (*KEYS, "a-wrong-key-guess", fake_q.refresh_token, fake_q.client_secret, fake_q.access_token):
        assert secret not in log
    assert "Bearer" not in log


def test_client_text_cannot_forge_log_lines(strict_server, fake_q):
    post(strict_server, dict(HI, model="m\n2026-01-01 INFO amq: GET /admin 200 forged"))
    assert "\n2026-01-01 INFO amq: GET /admin" not in strict_server.log()


def test_every_line_of_the_access_log_has_the_request_id(strict_server, fake_q):
    response = post(strict_server)
    request_id = response.headers["request-id"]
    strict_server.log_once(request_id)
    time.sleep(0.2)  # a second line, if there were one, would follow at once
    lines = [line for line in strict_server.log().splitlines() if request_id in line]
    assert len(lines) == 1
    # the Q model "m" resolved to, and no stream outcome for an answer that is not a stream
    assert "POST /v1/messages 200 outcome=none model=claude-sonnet-4.5 " in lines[0]


def test_length_delimited_answer_is_still_streamed(tmp_path, fake_q):
    """An answer with Content-Length (a proxy in between may send one) is not read whole first."""
    import threading

    first = encode_event("assistantResponseEvent", {"content": "early "})
    second = encode_event("assistantResponseEvent", {"content": "late"})
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    release = threading.Event()

    def serve():
        conn, _ = listener.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int([line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")][0])
            while len(body) < length:
                body += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/vnd.amazon.eventstream\r\n"
                         b"content-length: %d\r\n\r\n" % (len(first) + len(second)) + first)
            release.wait(5)
            conn.sendall(second)

    threading.Thread(target=serve, daemon=True).start()
    env = amq_env(fake_q, tmp_path / "token.json",
                  AMAZONQ_API_ENDPOINT=f"http://127.0.0.1:{listener.getsockname()[1]}/")
    app = create_app(env)
    app.extensions["amq"].models.stop_fetching()  # no model-list call to this server
    with app.test_client() as client:
        response = client.post("/v1/messages", json=dict(HI, stream=True), buffered=False)
        seen = b""
        for piece in response.response:
            seen += piece
            if b"early" in seen:
                break
        assert b"early" in seen and b"late" not in seen  # arrived before the rest was sent
        release.set()
        rest = b"".join(response.response)
        response.close()
    assert b"late" in rest and b"message_stop" in rest
    listener.close()
