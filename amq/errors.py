"""The proxy's exceptions and the one table that maps Amazon Q failures onto Anthropic errors."""
from __future__ import annotations

import json
import logging

logger = logging.getLogger(__name__)


class ProxyError(Exception):
    """A failure with an Anthropic error type and HTTP status; one handler renders them all."""

    status = 500
    error_type = "api_error"
    retryable = False  # worth another upstream attempt before the client sees anything

    def __init__(self, message: str, *, headers: dict | None = None):
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})

    def to_dict(self, request_id: str | None = None) -> dict:
        body = {"type": "error", "error": {"type": self.error_type, "message": self.message}}
        if request_id:
            body["request_id"] = request_id
        return body


class InvalidRequest(ProxyError):
    status, error_type = 400, "invalid_request_error"


class AuthenticationFailed(ProxyError):
    status, error_type = 401, "authentication_error"


class PermissionDenied(ProxyError):
    status, error_type = 403, "permission_error"


class NotFound(ProxyError):
    status, error_type = 404, "not_found_error"


class MethodNotAllowed(ProxyError):
    status, error_type = 405, "invalid_request_error"


class RequestTooLarge(ProxyError):
    status, error_type = 413, "request_too_large"


class RateLimited(ProxyError):
    retryable = True
    status, error_type = 429, "rate_limit_error"


class UpstreamFailure(ProxyError):
    retryable = True
    status, error_type = 500, "api_error"


class BadGateway(ProxyError):
    retryable = True
    status, error_type = 502, "api_error"


class GatewayTimeout(ProxyError):
    status, error_type = 504, "timeout_error"


class Overloaded(ProxyError):
    retryable = True
    status, error_type = 529, "overloaded_error"


class CredentialsRejected(AuthenticationFailed):
    """The login itself was refused or is missing: only a new login fixes it (the token
    manager words the message, as it knows where the login came from)."""


def error_code(raw: str | None) -> str:
    """Reduce `ns#ThrottlingException:http://...` to `ThrottlingException`, as the AWS SDKs do."""
    if not raw:
        return ""
    return raw.split(":", 1)[0].rsplit("#", 1)[-1].strip()


def parse_upstream_error(status: int, body: bytes, headers) -> tuple[str, str, str]:
    """(code, reason, message) of a Q error response; the header code wins over the body's."""
    try:
        data = json.loads(body.decode("utf-8")) if body else {}
    except (UnicodeDecodeError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    code = error_code(headers.get("x-amzn-errortype")) or error_code(
        data.get("__type") or data.get("code")
    )
    message = data.get("message") or data.get("Message") or ""
    if not message and body and not data:
        message = body[:300].decode("utf-8", "replace")
    return code, str(data.get("reason") or ""), str(message)


def is_invalid_bearer(status: int, message: str) -> bool:
    """Q's answer to an expired or revoked access token (refresh once and retry)."""
    return status == 403 and "bearer token" in message.lower() and "invalid" in message.lower()


def map_upstream_error(status: int, code: str, reason: str, message: str) -> ProxyError:
    """The one table from a Q error to the Anthropic error a client understands.

    Keyed on the error code and reason first (statuses vary, spec section 2.5), status last.
    """
    shown = message or code or f"HTTP {status}"
    text = f"{shown} (Amazon Q {code or status}{', ' + reason if reason else ''})"
    if code == "ValidationException" or (status == 400 and not code):
        if reason == "CONTENT_LENGTH_EXCEEDS_THRESHOLD" or "input is too long" in message.lower():
            # Claude Code compacts its context when the message starts like this.
            return InvalidRequest(f"prompt is too long: {text}")
        return InvalidRequest(text)
    if reason == "MONTHLY_REQUEST_COUNT" or "reached for this month" in message:
        spent = RateLimited(f"Amazon Q monthly request limit reached: {text}",
                            headers={"x-should-retry": "false"})
        spent.retryable = False  # nothing changes until the month turns
        return spent
    if reason == "INSUFFICIENT_MODEL_CAPACITY":
        return Overloaded(text, headers={"retry-after": "5"})
    if code in ("ThrottlingException", "ServiceQuotaExceededException") or status == 429:
        return RateLimited(text, headers={"retry-after": "5"})
    if code == "AccessDeniedException" or status == 403:
        if reason == "TEMPORARILY_SUSPENDED" or "suspended" in message.lower():
            return PermissionDenied(f"Amazon Q account is suspended: {text}")
        return PermissionDenied(text)
    if status in (401,):
        return AuthenticationFailed(text)
    if code == "ResourceNotFoundException" or status == 404:
        return NotFound(text)
    if "high load" in message.lower() or code == "ServiceUnavailableException" or status == 503:
        return Overloaded(text, headers={"retry-after": "5"})
    if status >= 500 or code == "InternalServerException":
        return UpstreamFailure(text)
    return InvalidRequest(text) if 400 <= status < 500 else UpstreamFailure(text)



class StoreUnavailable(ProxyError):
    """The credential store (Redis) does not answer: only a request that needs a refresh fails."""

    status, error_type = 503, "api_error"

    def __init__(self, message: str):
        super().__init__(message, headers={"retry-after": "5"})
