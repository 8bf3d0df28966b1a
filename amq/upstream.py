"""The Amazon Q client: sends GenerateAssistantResponse and yields the decoded events."""
from __future__ import annotations

import json
import logging
import uuid
from typing import Iterator

import requests
from requests.adapters import HTTPAdapter

from .errors import (BadGateway, GatewayTimeout, UpstreamFailure, UpstreamStreamError,
                     is_invalid_bearer, map_upstream_error, parse_upstream_error)
from .eventstream import EventStreamDecoder, EventStreamError
from .models import QModel
from .tokens import TokenManager

logger = logging.getLogger(__name__)

RPC_TARGET = "AmazonCodeWhispererStreamingService.GenerateAssistantResponse"
LIST_MODELS_TARGET = "AmazonCodeWhispererService.ListAvailableModels"
MAX_ERROR_BODY = 64 * 1024


def new_session(pool_size: int = 256) -> requests.Session:
    """One pooled session for every upstream call; sized for many concurrent streams."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers["User-Agent"] = "amq/0.1 (Amazon Q proxy for Claude clients)"
    return session


class QClient:
    """Opens the upstream stream (refreshing the token once on 403) and decodes its frames."""

    def __init__(self, *, endpoint: str, binding: str, tokens: TokenManager,
                 session: requests.Session, timeout: tuple[float, float]):
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

    def open(self, body: dict) -> requests.Response:
        """POST GenerateAssistantResponse; return the 200 response, body unread.

        :raises ProxyError: the mapped Anthropic error for any non-200 answer or network fault.
        """
        return self._call(self.url, body, self._headers, stream=True)

    def list_models(self, origin: str, profile_arn: str = "") -> tuple[list[QModel], str | None]:
        """ListAvailableModels, all pages (spec 5.1): the models and the account's default."""
        headers = {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": LIST_MODELS_TARGET}
        url = self.url if self.binding == "rpc" else self.url.rsplit("/", 1)[0] + "/"
        models, default, next_token = [], None, None
        for _ in range(20):  # a bound on pages, whatever the service says
            body = {"origin": origin}
            if profile_arn:
                body["profileArn"] = profile_arn
            if next_token:
                body["nextToken"] = next_token
            response = self._call(url, body, headers, stream=False)
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

    def _call(self, url: str, body: dict, headers: dict, *, stream: bool) -> requests.Response:
        """One Q call with the bearer token; on 403 "bearer token invalid", refresh once, retry once."""
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        headers = dict(headers, **{"amz-sdk-invocation-id": str(uuid.uuid4())})
        token = self.tokens.get_token()
        for attempt in (1, 2):
            response = self._post(url, data, headers, token, stream)
            if response.status_code == 200:
                return response
            raw = _read_limited(response)
            code, reason, message = parse_upstream_error(response.status_code, raw, response.headers)
            if attempt == 1 and is_invalid_bearer(response.status_code, code, message):
                logger.info("Amazon Q rejected the access token; refreshing once")
                token = self.tokens.refresh_after_rejection(token)
                continue
            logger.warning("Amazon Q answered HTTP %s %s %s (request %s)", response.status_code,
                           code, reason, response.headers.get("x-amzn-requestid", "-"))
            raise map_upstream_error(response.status_code, code, reason, message)
        raise AssertionError("unreachable")

    def _post(self, url: str, data: bytes, headers: dict, token: str, stream: bool) -> requests.Response:
        headers = dict(headers, Authorization=f"Bearer {token}")
        try:
            return self.session.post(url, data=data, headers=headers, stream=stream,
                                     timeout=self.timeout)
        except requests.Timeout:
            raise GatewayTimeout("Amazon Q did not answer in time") from None
        except requests.RequestException as exc:
            raise BadGateway(f"cannot reach Amazon Q at {url} ({type(exc).__name__})") from None

    def events(self, response: requests.Response) -> Iterator[tuple[str, dict]]:
        """(event type, payload) pairs as frames arrive; closes the response on any exit.

        :raises ProxyError: for error frames, corrupt frames and a cut or stalled connection.
        """
        decoder = EventStreamDecoder()
        try:
            # chunk_size=None hands over whatever the socket has, without waiting to fill a size.
            for chunk in response.iter_content(chunk_size=None):
                for message in decoder.feed(chunk):
                    event = _event(message)
                    if event is not None:
                        yield event
            decoder.finish()
        except EventStreamError as exc:
            raise UpstreamFailure(f"Amazon Q sent a corrupt event stream: {exc}") from None
        except requests.RequestException as exc:
            if "timed out" in str(exc).lower():
                raise GatewayTimeout("Amazon Q stopped sending before the answer was complete "
                                     "(read timeout)") from None
            raise BadGateway(f"the connection to Amazon Q broke mid-answer ({type(exc).__name__})") from None
        finally:
            response.close()


def _read_limited(response: requests.Response) -> bytes:
    try:
        raw = response.raw.read(MAX_ERROR_BODY, decode_content=True)
    except Exception:  # noqa: BLE001 - an unreadable error body still has a status
        raw = b""
    finally:
        response.close()
    return raw or b""


def _event(message) -> tuple[str, dict] | None:
    """An event's type and JSON payload; error frames raise like the AWS SDKs do."""
    headers = message.headers
    kind = headers.get(":message-type")
    if kind == "event":
        try:
            payload = json.loads(message.payload) if message.payload else {}
        except ValueError:
            raise UpstreamFailure("Amazon Q sent an event whose payload is not JSON") from None
        return headers.get(":event-type", ""), payload if isinstance(payload, dict) else {}
    if kind == "exception":
        code, reason, text = parse_upstream_error(500, message.payload, {})
        exception_type = str(headers.get(":exception-type", ""))
        if exception_type and exception_type != "error":
            code = exception_type
        raise UpstreamStreamError(map_upstream_error(500, code or "InternalServerException",
                                                     reason, text))
    if kind == "error":
        raise UpstreamStreamError(map_upstream_error(
            500, str(headers.get(":error-code", "InternalServerException")), "",
            str(headers.get(":error-message", ""))))
    raise UpstreamFailure(f"Amazon Q sent a frame of unknown message type {kind!r}")

