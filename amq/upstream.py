"""The Amazon Q client: sends GenerateAssistantResponse and yields the decoded events."""
from __future__ import annotations

import logging
import queue
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import requests
from requests.adapters import HTTPAdapter
from requests.utils import get_netrc_auth

from . import metrics
from .cooperative import start_helper
from .errors import ProxyError, UpstreamFailure
from .eventstream import EventStreamDecoder, EventStreamError
from .jsonio import dumps, loads_event
from .models import QModel
from .q_errors import error_frame, is_invalid_bearer, map_upstream_error, parse_upstream_error
from .transport import transport_errors

if TYPE_CHECKING:
    from .credentials.manager import TokenManager

logger = logging.getLogger(__name__)

RPC_TARGET = "AmazonCodeWhispererStreamingService.GenerateAssistantResponse"
LIST_MODELS_TARGET = "AmazonCodeWhispererService.ListAvailableModels"
MAX_ERROR_BODY = 64 * 1024
class EnvironmentOnceSession(requests.Session):
    """A Session that reads the environment once per origin instead of on every call.

    With trust_env, requests looks up the proxy variables (walking os.environ, twice), the CA
    bundle variables and ~/.netrc for each request: about a quarter of the CPU of a call to Q
    in the profile. Here the first call to an origin (scheme://host:port) does that lookup and
    later calls reuse it, so NO_PROXY is still decided per host, as requests decides it;
    changes to the environment after the first call are not seen. Calls given their own
    proxies or auth, and URLs with credentials in them, take requests' own path.
    """

    def __init__(self):
        super().__init__()
        self._environment: dict = {}  # (origin, stream, verify, cert) -> merged settings
        self._netrc: dict = {}  # origin -> what ~/.netrc says for it, or _no_netrc_auth

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        origin = _origin(url)
        if proxies or not self.trust_env or "@" in origin:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        key = (origin, stream, verify, cert)
        settings = self._environment.get(key)
        if settings is None:
            settings = super().merge_environment_settings(url, {}, stream, verify, cert)
            self._environment[key] = settings
        return dict(settings, proxies=dict(settings["proxies"]))

    def prepare_request(self, request):
        if self.trust_env and not request.auth and not self.auth and request.url:
            origin = _origin(request.url)
            if "@" not in origin:
                auth = self._netrc.get(origin)
                if auth is None:
                    auth = self._netrc[origin] = get_netrc_auth(request.url) or _no_netrc_auth
                request.auth = auth
        return super().prepare_request(request)


def _origin(url: str) -> str:
    return "/".join(url.split("/", 3)[:3]).lower()


def _no_netrc_auth(prepared: requests.PreparedRequest) -> requests.PreparedRequest:
    """The auth of a URL ~/.netrc has nothing for: none (truthy, so requests does not look again)."""
    return prepared


def new_session(pool_size: int) -> requests.Session:
    """One pooled session for every upstream call; sized like the worker's connection limit so
    busy streams do not each open (and TLS-handshake) a connection of their own."""
    session = EnvironmentOnceSession()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["User-Agent"] = "amq/0.1 (Amazon Q proxy for Claude clients)"
    return session


def encode_body(body: dict) -> bytes:
    """A Q request body as the compact UTF-8 JSON sent on the wire."""
    return dumps(body)


class QClient:
    """Opens the upstream stream (refreshing the token once on 403) and decodes its frames."""

    def __init__(self, *, endpoint: str, binding: str, tokens: TokenManager,
                 session: requests.Session, timeout: tuple[float, float],
                 max_attempts: int, retry_budget: float,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.binding = binding
        if binding == "rest":
            self.url = endpoint.rstrip("/") + "/generateAssistantResponse"
            self._headers = {"Content-Type": "application/json"}
        else:
            self.url = endpoint if endpoint.endswith("/") else endpoint + "/"
            self._headers = {"Content-Type": "application/x-amz-json-1.0",
                             "X-Amz-Target": RPC_TARGET}
        # Opt out of content sharing: a proxy should not volunteer its users' code.
        self._headers["x-amzn-codewhisperer-optout"] = "true"
        self.tokens = tokens
        self.session = session
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.retry_budget = retry_budget
        self._clock = clock
        self._wall_clock = time.time
        self.sleep = sleep  # cooperative under gevent; a test may replace it

    def open(self, body: dict, *, tokens: TokenManager | None = None, attempts: int | None = None,
             endpoint: str | None = None) -> requests.Response:
        """POST GenerateAssistantResponse with `tokens`' account (default: this client's);
        return the 200 response, body unread. `attempts` overrides UPSTREAM_MAX_ATTEMPTS (the
        account pool tries another account instead of the same one again); `endpoint`, an
        account's own regional endpoint.

        :raises ProxyError: the mapped Anthropic error for any non-200 answer or network fault.
        """
        url = self._url_for(endpoint) if endpoint else self.url
        return self._call(url, body, self._headers, stream=True, attempts=attempts, tokens=tokens)

    def _url_for(self, endpoint: str) -> str:
        if self.binding == "rest":
            return endpoint.rstrip("/") + "/generateAssistantResponse"
        return endpoint if endpoint.endswith("/") else endpoint + "/"

    def usage_limits(self, tokens: TokenManager, profile_arn: str = "",
                     endpoint: str | None = None) -> tuple[float | None, float | None]:
        """GetUsageLimits (docs/amazon-q-api.md, "Usage limits"): (credits left, monthly reset
        epoch), each None when the answer does not say."""
        base = (endpoint.rstrip("/") + "/") if endpoint else (
            self.url if self.binding == "rpc" else self.url.rsplit("/", 1)[0] + "/")
        query = {"origin": "AI_EDITOR", "resourceType": "AGENTIC_REQUEST"}
        if profile_arn:
            query["profileArn"] = profile_arn
        url = base + "getUsageLimits?" + urlencode(query)
        token = tokens.get_token()
        with transport_errors(url):
            response = self.session.get(url, headers={"Authorization": f"Bearer {token}"},
                                        timeout=(self.timeout[0], min(self.timeout[1], 10.0)))
        if response.status_code != 200:
            raw = _read_limited(response)
            raise map_upstream_error(response.status_code,
                                     *parse_upstream_error(response.status_code, raw, response.headers))
        try:
            data = response.json()
        except ValueError:
            raise UpstreamFailure("GetUsageLimits answered with something not JSON") from None
        return parse_usage_limits(data, self._wall_clock())

    def list_models(self, origin: str, profile_arn: str = "", *, tokens: TokenManager | None = None,
                    endpoint: str | None = None) -> tuple[list[QModel], str | None]:
        """ListAvailableModels, all pages (docs/amazon-q-api.md, "Models"): the models and the
        account's default."""
        headers = {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": LIST_MODELS_TARGET}
        url = (endpoint.rstrip("/") + "/") if endpoint else (
            self.url if self.binding == "rpc" else self.url.rsplit("/", 1)[0] + "/")
        models, default, next_token = [], None, None
        for _ in range(20):  # a bound on pages, whatever the service says
            body = {"origin": origin}
            if profile_arn:
                body["profileArn"] = profile_arn
            if next_token:
                body["nextToken"] = next_token
            # A short read timeout and one attempt: a slow list must not hold up messages.
            response = self._call(url, body, headers, stream=False, attempts=1, tokens=tokens,
                                  timeout=(self.timeout[0], min(self.timeout[1], 10.0)))
            try:
                data = response.json()
            except ValueError:
                raise UpstreamFailure("ListAvailableModels answered with something not JSON") from None
            for item in data.get("models") or []:
                limits = item.get("tokenLimits") or {}
                models.append(QModel(str(item["modelId"]), int(limits.get("maxInputTokens") or 200_000)))
            default = (data.get("defaultModel") or {}).get("modelId") or default
            next_token = data.get("nextToken")
            if not next_token:
                break
        return models, default

    def _call(self, url: str, body: dict, headers: dict, *, stream: bool, attempts: int | None = None,
              timeout: tuple[float, float] | None = None,
              tokens: TokenManager | None = None) -> requests.Response:
        """One Q call, retried with jittered backoff on throttling, 5xx and connection errors.

        Retries happen only here, before anything has reached the client.
        """
        data = encode_body(body)
        headers = dict(headers, **{"amz-sdk-invocation-id": str(uuid.uuid4())})
        deadline = self._clock() + self.retry_budget
        attempts = attempts or self.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                response = self._attempt(url, data, headers, stream, timeout or self.timeout,
                                         tokens or self.tokens)
                metrics.count_attempt(None)
                return response
            except ProxyError as exc:
                delay = min(8.0, 0.5 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                if not exc.retryable or attempt == attempts or self._clock() + delay > deadline:
                    metrics.count_attempt(exc)
                    raise
                metrics.count_attempt(exc, retried=True)
                logger.info("Amazon Q %s (attempt %d of %d); retrying in %.1fs", exc.error_type,
                            attempt, attempts, delay)
                self.sleep(delay)
        raise AssertionError("unreachable")

    def _attempt(self, url: str, data: bytes, headers: dict, stream: bool,
                 timeout: tuple[float, float], tokens: TokenManager) -> requests.Response:
        """POST with the bearer token; on 403 "bearer token invalid", refresh once and resend."""
        token = tokens.get_token()
        for first in (True, False):
            response = self._post(url, data, headers, token, stream, timeout)
            if response.status_code == 200:
                return response
            raw = _read_limited(response)
            code, reason, message = parse_upstream_error(response.status_code, raw, response.headers)
            if first and is_invalid_bearer(response.status_code, message):
                logger.info("Amazon Q rejected the access token; refreshing once")
                token = tokens.refresh_after_rejection(token)
                continue
            logger.warning("Amazon Q answered HTTP %s %s %s (request %s)", response.status_code,
                           code, reason, response.headers.get("x-amzn-requestid", "-"))
            error = map_upstream_error(response.status_code, code, reason, message)
            error.retry_after = response.headers.get("retry-after")
            raise error
        raise AssertionError("unreachable")

    def _post(self, url: str, data: bytes, headers: dict, token: str, stream: bool,
              timeout: tuple[float, float]) -> requests.Response:
        headers = dict(headers, Authorization=f"Bearer {token}")
        with transport_errors(url):
            return self.session.post(url, data=data, headers=headers, stream=stream, timeout=timeout)

    def events(self, response: requests.Response,
               ping_interval: float | None = None) -> Iterator[list[tuple[str, dict]] | None]:
        """Batches of (event type, payload) pairs, one batch per read from the socket, as they
        arrive; closes the response on any exit.

        A batch is what arrived together, so the caller can write it out in one go. With
        `ping_interval`, None is yielded whenever Q has been silent that long, so the caller
        can keep its own client's connection alive.
        :raises ProxyError: for error frames, corrupt frames and a cut or stalled connection;
            the events decoded before the fault are yielded first.
        """
        decoder = EventStreamDecoder()
        chunks = _chunks_with_pings(response, ping_interval) if ping_interval else \
            _body_chunks(response)
        try:
            with transport_errors(self.url, mid_answer=True):
                for chunk in chunks:
                    if chunk is None:
                        yield None
                        continue
                    batch = []
                    try:
                        for message in decoder.feed(chunk):
                            batch.append(_event(message))
                    except ProxyError:
                        if batch:
                            yield batch  # what came before an error frame still reaches the client
                        raise
                    if batch:
                        yield batch
                decoder.finish()
        except EventStreamError as exc:
            raise UpstreamFailure(f"Amazon Q sent a corrupt event stream: {exc}") from None
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
            response.close()


_END = object()


def _body_chunks(response: requests.Response) -> Iterator[bytes]:
    """The body as it arrives, whatever the socket has, never waiting to fill a size.

    iter_content(None) does that for chunked bodies only; a length- or close-delimited body
    (a proxy in between may send one) would be read whole first, so read1 serves those.
    """
    if response.raw.chunked:
        yield from response.iter_content(chunk_size=None)
        return
    while True:
        data = response.raw.read1(64 * 1024)  # urllib3 errors: see transport_errors
        if not data:
            return
        yield data


def _chunks_with_pings(response: requests.Response, interval: float) -> Iterator[bytes | None]:
    """Body chunks read by a helper; None after `interval` of silence from Q (give or take half
    of it), then once per `interval` while the silence lasts.

    A blocked socket read cannot be interrupted to write a ping, so the reading happens
    beside the writer. A second helper looks for silence every half interval: a timeout on
    each wait for a chunk cost a timer per frame, more than the frame's own translation.
    The bounded queue keeps backpressure on Q when the client is slow.
    """
    chunks: queue.Queue = queue.Queue(maxsize=32)
    stop = threading.Event()
    received = [0]  # chunks read so far; only the reader writes it

    def hand_over(item) -> None:
        while not stop.is_set():
            try:
                chunks.put(item, timeout=1.0)
                return
            except queue.Full:
                continue

    def pump() -> None:
        try:
            for chunk in _body_chunks(response):
                received[0] += 1
                hand_over(chunk)
                if stop.is_set():
                    return
            hand_over(_END)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the writer's side
            hand_over(exc)

    def watch() -> None:
        seen, silent_looks = received[0], 0
        while not stop.wait(interval / 2):
            if received[0] != seen or not chunks.empty():
                seen, silent_looks = received[0], 0
                continue
            silent_looks += 1
            if silent_looks % 2 == 1:  # the first silent look, then every other one: once per interval
                with suppress(queue.Full):
                    chunks.put_nowait(None)

    reader = start_helper(pump, "amq-upstream-reader")
    watcher = start_helper(watch, "amq-upstream-pings")
    try:
        while True:
            item = chunks.get()
            if item is None:
                yield None
                continue
            # Take whatever else has already arrived too (HTTP chunks are often one frame
            # each), so it is decoded and written as one batch; nothing waits for more.
            parts = []
            while isinstance(item, bytes):
                parts.append(item)
                item = None if chunks.empty() else chunks.get_nowait()
            if parts:
                yield b"".join(parts)
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
    finally:
        stop.set()
        _shutdown_socket(response)  # wakes the reader if it is blocked on the socket
        while not chunks.empty():  # ... or on a full queue (a client that stopped reading)
            chunks.get_nowait()
        reader.join(timeout=2.0)
        watcher.join(timeout=2.0)


def _shutdown_socket(response: requests.Response) -> None:
    """Interrupt a read in progress; closing the buffered reader under it is not allowed."""
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _read_limited(response: requests.Response) -> bytes:
    try:
        raw = response.raw.read(MAX_ERROR_BODY, decode_content=True)
    except Exception:  # noqa: BLE001 - an unreadable error body still has a status
        raw = b""
    finally:
        response.close()
    return raw or b""


def _event(message) -> tuple[str, dict]:
    """An event's type and JSON payload; error frames raise like the AWS SDKs do."""
    headers = message.headers
    kind = headers.get(":message-type")
    if kind == "event":
        try:
            payload = loads_event(message.payload) if message.payload else {}
        except ValueError:
            raise UpstreamFailure("Amazon Q sent an event whose payload is not JSON") from None
        return headers.get(":event-type", ""), payload if isinstance(payload, dict) else {}
    if kind in ("exception", "error"):
        raise error_frame(headers, message.payload)
    raise UpstreamFailure(f"Amazon Q sent a frame of unknown message type {kind!r}")



def parse_usage_limits(data: dict, now: float) -> tuple[float | None, float | None]:
    """Credits left and the reset time from either shape of GetUsageLimits' answer
    (docs/amazon-q-api.md, "Usage limits"); None for what it does not say."""
    remaining = None
    for item in data.get("usageBreakdownList") or []:
        if not isinstance(item, dict) or item.get("resourceType") not in (None, "CREDIT"):
            continue
        left = _number(item.get("usageLimitWithPrecision")) - _number(item.get("currentUsageWithPrecision"))
        trial = item.get("freeTrialInfo") or {}
        if trial.get("freeTrialStatus") == "ACTIVE":
            left += _number(trial.get("usageLimitWithPrecision")) - _number(trial.get("currentUsageWithPrecision"))
        for bonus in item.get("bonuses") or []:
            if isinstance(bonus, dict) and bonus.get("status") == "ACTIVE":
                left += _number(bonus.get("usageLimit")) - _number(bonus.get("currentUsage"))
        remaining = (remaining or 0.0) + max(left, 0.0)
    if remaining is None:
        for item in data.get("limits") or []:
            if isinstance(item, dict) and "totalUsageLimit" in item:
                left = _number(item.get("totalUsageLimit")) - _number(item.get("currentUsageLimit"))
                remaining = (remaining or 0.0) + max(left, 0.0)
    reset = None
    if isinstance(data.get("nextDateReset"), (int, float)):
        reset = float(data["nextDateReset"])
    elif isinstance(data.get("daysUntilReset"), (int, float)):
        reset = now + float(data["daysUntilReset"]) * 86400
    return remaining, reset


def _number(value) -> float:
    try:
        return float(value or 0)
    except (TypeError, ValueError):
        return 0.0
