"""The one table from Amazon Q's errors to Anthropic's, tested with literal inputs."""
import pytest
import requests
import responses
import urllib3

from amq.credentials.oidc import refresh_grant
from amq.errors import (
    BadGateway,
    GatewayTimeout,
    InvalidRequest,
    MonthlyLimitReached,
    Overloaded,
    PermissionDenied,
    RateLimited,
)
from amq.q_errors import error_code, error_frame, map_upstream_error, parse_upstream_error
from amq.transport import transport_errors


@pytest.mark.parametrize("raw, code", [
    ("com.amazon.aws.codewhisperer#ThrottlingException:http://internal", "ThrottlingException"),
    ("ValidationException", "ValidationException"),
    (None, ""),
])
def test_error_codes_are_cut_as_the_sdks_do(raw, code):
    assert error_code(raw) == code


def test_header_code_wins_over_the_body():
    body = b'{"__type": "ValidationException", "message": "m", "reason": "R"}'
    assert parse_upstream_error(400, body, {"x-amzn-errortype": "ThrottlingException:x"}) == \
        ("ThrottlingException", "R", "m")


def test_monthly_limit_is_a_rate_limit_of_its_own_that_is_not_retried():
    error = map_upstream_error(400, "ThrottlingException", "MONTHLY_REQUEST_COUNT",
                               "Maximum ... reached for this month.")
    assert isinstance(error, MonthlyLimitReached) and isinstance(error, RateLimited)
    assert (error.status, error.error_type, error.retryable) == (429, "rate_limit_error", False)
    assert error.headers == {"x-should-retry": "false"}
    throttled = map_upstream_error(429, "ThrottlingException", "", "slow down")
    assert type(throttled) is RateLimited and throttled.retryable


@pytest.mark.parametrize("status, code, reason, message, kind, starts", [
    (400, "ValidationException", "CONTENT_LENGTH_EXCEEDS_THRESHOLD", "Input is too long.", InvalidRequest,
     "prompt is too long"),
    (400, "ThrottlingException", "INSUFFICIENT_MODEL_CAPACITY", "busy", Overloaded, "busy"),
    (403, "AccessDeniedException", "TEMPORARILY_SUSPENDED", "locked", PermissionDenied,
     "Amazon Q account is suspended"),
    (500, "InternalServerException", "", "Encountered unexpectedly high load", Overloaded, "Encountered"),
], ids=["too-long", "capacity", "suspended", "high-load"])
def test_code_and_reason_decide_before_status(status, code, reason, message, kind, starts):
    error = map_upstream_error(status, code, reason, message)
    assert type(error) is kind and error.message.startswith(starts)


def test_error_frames_map_like_error_responses():
    exception = error_frame({":message-type": "exception", ":exception-type": "ThrottlingException"},
                            b'{"message": "slow down"}')
    assert type(exception) is RateLimited
    unmodeled = error_frame({":message-type": "error", ":error-code": "ValidationException",
                             ":error-message": "bad"}, b"")
    assert type(unmodeled) is InvalidRequest and unmodeled.message.startswith("bad")


@pytest.mark.parametrize("raised, mid_answer, kind", [
    (requests.ConnectTimeout("connect"), False, BadGateway),
    (requests.ReadTimeout("read"), False, GatewayTimeout),
    (requests.ConnectionError("refused"), False, BadGateway),
    (urllib3.exceptions.ReadTimeoutError(None, "/", "Read timed out."), True, GatewayTimeout),
    (urllib3.exceptions.ProtocolError("Connection broken"), True, BadGateway),
    (ConnectionResetError(104, "reset"), True, BadGateway),
], ids=["connect-timeout", "read-timeout", "refused", "stalled", "cut", "socket-reset"])
def test_network_failures_become_ours_at_one_boundary(raised, mid_answer, kind):
    with pytest.raises(kind), transport_errors("http://q.example/", mid_answer=mid_answer):
        raise raised


@responses.activate
@pytest.mark.parametrize("raised, kind", [(requests.ConnectionError("refused"), BadGateway),
                                          (requests.ReadTimeout("read"), GatewayTimeout)],
                         ids=["refused", "timeout"])
def test_the_token_service_goes_through_the_same_boundary(raised, kind):
    responses.post("https://oidc.example/token", body=raised)
    with pytest.raises(kind, match="the Amazon Q token service"):
        refresh_grant(requests.Session(), "https://oidc.example/token", client_id="c", client_secret="s",
                      refresh_token="r", timeout=(1, 1))
