"""A fast fake Amazon Q for benchmarks: gevent, keep-alive, pre-encoded answers.

tests/fakeq.py is the strict fake the tests need: it validates every field, and streams each
answer in 1-400 byte HTTP chunks with one write+flush per chunk, on a thread per connection.
That makes it the bottleneck of any throughput run (about a hundred writes per answer), so a
"direct" baseline against it would flatter amq. This one does the least a real service must:
parse the HTTP request, check the bearer token, parse the JSON body and look for the current
message, then send an answer encoded once at start-up: one HTTP chunk per event-stream frame,
all in one write (or, with --delay, one write per frame and a pause before each frame; a
current message containing "[fastq:no-delay]" is answered at once, for warm-ups).

    python bench/fastq.py --port 8900 [--delay 0.05 [--jitter 0.03]] [--reply typical|numbered]

It prints one JSON line (url, credentials, frames per answer) and serves until SIGTERM/SIGINT.
Endpoints: POST /token (OIDC refresh, no rotation), POST / with X-Amz-Target
GenerateAssistantResponse or ListAvailableModels (RPC binding), POST /generateAssistantResponse
(REST binding), and GET /stats (connections accepted, answers served) for the benches.
"""
from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import gevent
import gevent.event
from gevent.server import StreamServer

if __package__ in (None, ""):  # `python bench/fastq.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.eventstream_encode import encode_event  # noqa: E402
from tests.fakeq import DEFAULT_MODELS, GAR_TARGET, LIST_MODELS_TARGET, typical_reply  # noqa: E402

HEAD_END = b"\r\n\r\n"
NO_DELAY_MARKER = "[fastq:no-delay]"
MAX_HEAD = 64 * 1024


def typical_frames() -> list[bytes]:
    """tests.fakeq's typical answer: metadata, 50 text deltas, metering, context usage."""
    return typical_reply().frames("bench-conversation")


def numbered_frames(count: int = 20) -> list[bytes]:
    """Text frames whose content is `<k>`, so a client can match each SSE delta to its frame."""
    frames = [encode_event("messageMetadataEvent", {"conversationId": "bench-conversation",
                                                    "utteranceId": str(uuid.uuid4())})]
    frames += [encode_event("assistantResponseEvent", {"content": f"<{k}>"}) for k in range(count)]
    frames.append(encode_event("meteringEvent", {"usage": 0.01, "unit": "credit", "unitPlural": "credits"}))
    return frames


REPLIES: dict[str, Callable[[], list[bytes]]] = {"typical": typical_frames, "numbered": numbered_frames}


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _response(status: int, body: bytes, content_type: str, extra: str = "") -> bytes:
    reason = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found"}[status]
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nx-amzn-requestid: {uuid.uuid4()}\r\n{extra}\r\n").encode() + body


class FastQ:
    """The server; usable in-process (`start()`/`stop()`) or through `main()` as a process.

    `on_frame(tag, index, monotonic_time)` is called just before frame `index` of an answer is
    written, `tag` being the request's current message text (only with a delay, where frames
    are written one by one): the latency bench uses it.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, delay: float = 0.0,
                 frames: list[bytes] | None = None, on_frame: Callable[[str, int, float], None] | None = None,
                 jitter: float = 0.0):
        self.delay = delay
        self.jitter = jitter  # each pause is delay + uniform(0, jitter): a real pace is uneven
        self.frames = frames if frames is not None else typical_frames()
        self.on_frame = on_frame
        self.client_id = "fastq-" + uuid.uuid4().hex[:16]
        self.client_secret = "fastq-secret-" + uuid.uuid4().hex
        self.refresh_token = "aorAAAAA" + uuid.uuid4().hex
        self.access_token = "aoaAAAAA" + uuid.uuid4().hex
        self._bearer = b"Bearer " + self.access_token.encode()
        self.served = 0
        self.rejected = 0
        self.connections = 0  # accepted so far: how well the client reuses its connections
        # Encoded once: the whole chunked body, and the frames as chunks for the slow path.
        self._stream_head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.amazon.eventstream\r\n"
                             b"Transfer-Encoding: chunked\r\nx-amzn-requestid: fastq\r\n\r\n")
        self._chunks = [_chunk(frame) for frame in self.frames]
        self._whole = self._stream_head + b"".join(self._chunks) + b"0\r\n\r\n"
        models = [{"modelId": m, "modelName": m, "tokenLimits": {"maxInputTokens": 200000,
                                                                 "maxOutputTokens": 64000}}
                  for m in DEFAULT_MODELS]
        self._models = _response(200, json.dumps({"models": models, "defaultModel": {"modelId": "auto"}})
                                 .encode(), "application/x-amz-json-1.0")
        self._server = StreamServer((host, port), self._handle, backlog=4096)

    @property
    def port(self) -> int:
        return self._server.server_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def settings(self) -> dict:
        return {"url": self.url, "client_id": self.client_id, "client_secret": self.client_secret,
                "refresh_token": self.refresh_token, "access_token": self.access_token,
                "frames": len(self.frames), "body_bytes": sum(map(len, self.frames)),
                "delay": self.delay}

    def start(self) -> FastQ:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(timeout=1)

    # -- one connection: keep-alive loop ------------------------------------------------------

    def _handle(self, sock, _address) -> None:
        self.connections += 1
        buf = b""
        try:
            while True:
                end = buf.find(HEAD_END)
                while end < 0:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buf += data
                    if len(buf) > MAX_HEAD:
                        return
                    end = buf.find(HEAD_END)
                head, buf = buf[:end], buf[end + 4:]
                lines = head.split(b"\r\n")
                method, path, _version = lines[0].split(b" ", 2)
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    headers[name.strip().lower()] = value.strip()
                if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
                    body, buf = self._read_chunked(sock, buf)
                else:
                    length = int(headers.get(b"content-length", b"0"))
                    while len(buf) < length:
                        data = sock.recv(65536)
                        if not data:
                            return
                        buf += data
                    body, buf = buf[:length], buf[length:]
                self._answer(sock, method, path, headers, body)
                if headers.get(b"connection", b"").lower() == b"close":
                    return
        except OSError:
            return
        finally:
            sock.close()

    @staticmethod
    def _read_chunked(sock, buf: bytes) -> tuple[bytes, bytes]:
        body = bytearray()
        while True:
            while b"\r\n" not in buf:
                buf += sock.recv(65536)
            line, buf = buf.split(b"\r\n", 1)
            size = int(line.split(b";")[0], 16)
            while len(buf) < size + 2:
                buf += sock.recv(65536)
            body += buf[:size]
            buf = buf[size + 2:]
            if size == 0:
                return bytes(body), buf

    def _answer(self, sock, method: bytes, path: bytes, headers: dict, body: bytes) -> None:
        """Send one response."""
        target = headers.get(b"x-amz-target", b"").decode()
        if method == b"GET" and path == b"/stats":  # for the benches, not part of Q
            stats = {"connections": self.connections, "served": self.served, "rejected": self.rejected}
            sock.sendall(_response(200, json.dumps(stats).encode(), "application/json"))
            return
        if method == b"POST" and path == b"/token":
            sock.sendall(self._token(body))
            return
        if headers.get(b"authorization") != self._bearer:
            self.rejected += 1
            sock.sendall(_response(403, b'{"message":"The bearer token included in the request is invalid."}',
                                   "application/x-amz-json-1.0"))
            return
        if method == b"POST" and path == b"/" and target == LIST_MODELS_TARGET:
            sock.sendall(self._models)
            return
        if method != b"POST" or not ((path == b"/" and target == GAR_TARGET) or
                                     (path == b"/generateAssistantResponse" and not target)):
            self.rejected += 1
            sock.sendall(_response(404, b'{"message":"UnknownOperationException"}', "application/json"))
            return
        try:  # the least a real service does with the body
            message = json.loads(body)["conversationState"]["currentMessage"]["userInputMessage"]
            ok = isinstance(message["content"], str)
        except (ValueError, KeyError, TypeError):
            ok = False
        # Benches warm amq up without waiting for a slow answer: this marker skips the delay.
        delay = 0.0 if ok and NO_DELAY_MARKER in message["content"] else self.delay
        if not ok:
            self.rejected += 1
            sock.sendall(_response(400, b'{"message":"Improperly formed request."}', "application/json"))
            return
        self.served += 1
        if not delay:
            sock.sendall(self._whole)  # the whole answer in one write: the fake stays cheap
            return
        sock.sendall(self._stream_head)
        for index, chunk in enumerate(self._chunks):
            gevent.sleep(delay + random.uniform(0.0, self.jitter) if self.jitter else delay)
            if self.on_frame is not None:
                self.on_frame(message["content"], index, time.monotonic())
            sock.sendall(chunk)
        sock.sendall(b"0\r\n\r\n")

    def _token(self, body: bytes) -> bytes:
        try:
            data = json.loads(body)
            ok = (data["clientId"], data["clientSecret"], data["refreshToken"]) == \
                (self.client_id, self.client_secret, self.refresh_token)
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            return _response(400, b'{"error":"invalid_grant"}', "application/json")
        answer = {"accessToken": self.access_token, "tokenType": "Bearer", "expiresIn": 3600,
                  "refreshToken": self.refresh_token}
        return _response(200, json.dumps(answer).encode(), "application/json")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python bench/fastq.py", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each frame")
    parser.add_argument("--jitter", type=float, default=0.0, help="up to this many seconds more per pause")
    parser.add_argument("--reply", choices=sorted(REPLIES), default="typical")
    args = parser.parse_args(argv)
    fake = FastQ(port=args.port, delay=args.delay, frames=REPLIES[args.reply](), jitter=args.jitter).start()
    print(json.dumps(fake.settings()), flush=True)
    done = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, done.set)
    gevent.signal_handler(signal.SIGINT, done.set)
    done.wait()
    fake.stop()
    print(f"fastq: served {fake.served} answers, rejected {fake.rejected}", file=sys.stderr)


if __name__ == "__main__":
    main()
