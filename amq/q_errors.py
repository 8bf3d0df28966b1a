"""Amazon Q's failures, read where they enter (amq/upstream.py) and mapped onto our errors.

The one table from a Q error to the Anthropic error a client gets; the facts it rests on are in
docs/amazon-q-api.md, "Errors".
"""
from __future__ import annotations

import json

from .errors import (
    AuthenticationFailed,
    InvalidRequest,
    MonthlyLimitReached,
    NotFound,
    Overloaded,
    PermissionDenied,
    ProxyError,
    RateLimited,
    UpstreamFailure,
)

RETRY_AFTER = {"retry-after": "5"}

# What an error says about the account that met it; the account pool (amq/credentials/pool.py)
# decides what each means for the account's health (docs/amazon-q-api.md, "Account-level errors").
DISPOSITIONS = {
    "request": "the request's own fault: back to the client, never held against the account",
    "model": "the account does not offer this model: try another, no penalty",
    "throttled": "per-user rate: a short rest, honouring Retry-After, never escalated",
    "risk": "'suspicious activity ... temporary limits': a long rest",
    "monthly": "the monthly or overage allowance is spent: out until the reset",
    "suspended": "suspended: out until an operator enables it",
    "invalid": "the login was refused: out until a new login",
    "transient": "5xx or a connection fault: a rest only after several in a row",
}
MONTHLY_REASONS = ("MONTHLY_REQUEST_COUNT", "OVERAGE_REQUEST_LIMIT_EXCEEDED")


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
    """The one table from a Q error to the Anthropic error a client understands; the error
    keeps Q's exception name (`q_exception`) for the error counts by name.

    Keyed on the error code and reason first, status last: the statuses Q sends for the same
    error vary (docs/amazon-q-api.md, "Errors").
    """
    error = _classify(status, code, reason, message)
    error.q_exception = code
    error.q_reason = reason
    error.disposition = _disposition(status, code, reason, message, error)
    return error


def _disposition(status: int, code: str, reason: str, message: str, error: ProxyError) -> str:
    """Which of DISPOSITIONS the error is: Q's name and reason first, message text next."""
    lowered = message.lower()
    if reason == "INVALID_MODEL_ID":
        return "model"
    if isinstance(error, MonthlyLimitReached):
        return "monthly"
    if isinstance(error, PermissionDenied) and (reason == "TEMPORARILY_SUSPENDED" or "suspended" in lowered):
        return "suspended"
    if "suspicious activity" in lowered:
        return "risk"
    if isinstance(error, RateLimited):
        return "throttled"
    if isinstance(error, (Overloaded, UpstreamFailure)):
        return "transient"
    return "request"


def _classify(status: int, code: str, reason: str, message: str) -> ProxyError:
    shown = message or code or f"HTTP {status}"
    text = f"{shown} (Amazon Q {code or status}{', ' + reason if reason else ''})"
    if code == "ValidationException" or (status == 400 and not code):
        if reason == "CONTENT_LENGTH_EXCEEDS_THRESHOLD" or "input is too long" in message.lower():
            # Claude Code compacts its context when the message starts like this.
            return InvalidRequest(f"prompt is too long: {text}")
        return InvalidRequest(text)
    if reason in MONTHLY_REASONS or "reached for this month" in message or "limit for overages" in message \
            or (code == "ServiceQuotaExceededException" and reason != "CONVERSATION_LIMIT_EXCEEDED"):
        return MonthlyLimitReached(f"Amazon Q monthly request limit reached: {text}")
    if reason == "INSUFFICIENT_MODEL_CAPACITY":
        return Overloaded(text, headers=RETRY_AFTER)
    if code in ("ThrottlingException", "ServiceQuotaExceededException") or status in (402, 429):
        return RateLimited(text, headers=RETRY_AFTER)
    if code == "AccessDeniedException" or status == 403:
        if reason == "TEMPORARILY_SUSPENDED" or "suspended" in message.lower():
            return PermissionDenied(f"Amazon Q account is suspended: {text}")
        return PermissionDenied(text)
    if status == 401:
        return AuthenticationFailed(text)
    if code == "ResourceNotFoundException" or status == 404:
        return NotFound(text)
    if "high load" in message.lower() or code == "ServiceUnavailableException" or status == 503:
        return Overloaded(text, headers=RETRY_AFTER)
    if status >= 500 or code == "InternalServerException":
        return UpstreamFailure(text)
    return InvalidRequest(text) if 400 <= status < 500 else UpstreamFailure(text)


def error_frame(headers: dict, payload: bytes) -> ProxyError:
    """The error an in-stream error frame (`exception` or `error` message type) stands for."""
    if headers.get(":message-type") == "exception":
        code, reason, text = parse_upstream_error(500, payload, {})
        exception_type = str(headers.get(":exception-type", ""))
        if exception_type and exception_type != "error":
            code = exception_type
        return map_upstream_error(500, code or "InternalServerException", reason, text)
    return map_upstream_error(500, str(headers.get(":error-code", "InternalServerException")),
                              "", str(headers.get(":error-message", "")))
