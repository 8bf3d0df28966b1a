"""The proxy's exceptions: each carries its HTTP status and Anthropic error type.

One handler in the app factory renders them as JSON; a stream that has begun ends with the
same body as its `error` event (`amq.sse.error_event`). Which Amazon Q failure becomes which
of these is decided in one table, `amq.q_errors`.
"""
from __future__ import annotations

# What a client is told about a bug in amq (the log has the traceback).
INTERNAL_ERROR = "internal error in amq"


class ProxyError(Exception):
    """A failure with an Anthropic error type and HTTP status; one handler renders them all."""

    status = 500
    error_type = "api_error"
    retryable = False  # worth another upstream attempt before the client sees anything
    q_exception = ""  # Amazon Q's exception name, when Q sent this error
    q_reason = ""  # and its `reason`
    retry_after: str | None = None  # Q's Retry-After header, when it sent one
    # What the error says about the account that met it (amq.q_errors.DISPOSITIONS); "" for
    # failures that are nobody's account's (a bug, the store).
    disposition = ""

    def __init__(self, message: str, *, headers: dict | None = None):
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})

    def to_dict(self, request_id: str | None = None) -> dict:
        """The Anthropic error body, which is also the in-stream `error` event."""
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


class MonthlyLimitReached(RateLimited):
    """The account's monthly request allowance is spent: the same 429 for the client, but not
    worth a retry until the month turns (unlike throttling, which passes in seconds)."""

    retryable = False

    def __init__(self, message: str, *, headers: dict | None = None):
        super().__init__(message, headers={"x-should-retry": "false", **(headers or {})})


class UpstreamFailure(ProxyError):
    retryable = True
    disposition = "transient"
    status, error_type = 500, "api_error"


class BadGateway(ProxyError):
    retryable = True
    disposition = "transient"
    status, error_type = 502, "api_error"


class GatewayTimeout(ProxyError):
    disposition = "transient"
    status, error_type = 504, "timeout_error"


class Overloaded(ProxyError):
    retryable = True
    status, error_type = 529, "overloaded_error"


class CredentialsRejected(AuthenticationFailed):
    """The login itself was refused or is missing: only a new login fixes it (the token
    manager words the message, as it knows where the login came from)."""

    disposition = "invalid"


class NoAccountAvailable(RateLimited):
    """Every account of the pool is resting, spent, suspended or disabled: a 429 whose
    retry-after says when the first one is back (none when none comes back by itself)."""

    retryable = False


class StoreUnavailable(ProxyError):
    """The credential store (Redis) does not answer: only a request that needs a refresh fails."""

    status, error_type = 503, "api_error"

    def __init__(self, message: str):
        super().__init__(message, headers={"retry-after": "5"})
