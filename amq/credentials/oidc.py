"""The AWS SSO-OIDC client: RegisterClient, StartDeviceAuthorization, CreateToken, and their errors.

All three operations are unauthenticated REST-JSON calls with camelCase bodies; the facts and
their public sources are in docs/oidc.md. The errors live here (not with the login flow or the
manager) because both of those need them.
"""
from __future__ import annotations

import logging

import requests

from ..errors import CredentialsRejected, UpstreamFailure
from ..transport import transport_errors
from .record import iso_time

logger = logging.getLogger(__name__)

SCOPES = ["codewhisperer:completions", "codewhisperer:analysis", "codewhisperer:conversations"]
CLIENT_NAME = "amq"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"

LOGIN_HINT = ("Log in again with `flask --app app login` (or `flask --app app import-q-cli`); "
              "a running amq picks the new login up unless AMAZONQ_REFRESH_TOKEN is set.")

# x-amzn-ErrorType names and the OAuth `error` strings (the latter UNCONFIRMED: docs/oidc.md).
_ERROR_KINDS = {
    "AuthorizationPendingException": "authorization_pending",
    "SlowDownException": "slow_down",
    "ExpiredTokenException": "expired_token",
    "AccessDeniedException": "access_denied",
    "InvalidGrantException": "invalid_grant",
    "InvalidClientException": "invalid_client",
}


class LoginError(Exception):
    """The login cannot go on; the message says why and what to do."""


class OidcError(LoginError):
    def __init__(self, operation: str, status: int, kind: str, description: str):
        super().__init__(f"{operation} failed: HTTP {status} {kind}"
                         + (f" ({description})" if description else ""))
        self.status, self.kind = status, kind


class RefreshRejected(CredentialsRejected):
    """The OIDC service refused the refresh token or the client registration."""

    def __init__(self, detail: str, *, grant: bool = False, interrupted_at: float | None = None):
        message = "Amazon Q refresh token is no longer valid" + (f" ({detail})" if detail else "") + "."
        if interrupted_at:
            message += (" An earlier refresh was interrupted at " + iso_time(interrupted_at)
                        + " before amq could store the refresh token the service issued then.")
        super().__init__(message + " " + LOGIN_HINT)
        self.grant = grant  # the refresh token itself was refused (not the registration)


def error_kind(response: requests.Response, data: dict) -> str:
    """The OAuth-style error code, from the x-amzn-ErrorType header or the body's `error`."""
    header = response.headers.get("x-amzn-ErrorType", "").split(":", 1)[0]
    return _ERROR_KINDS.get(header) or str(data.get("error") or header or "unknown_error")


def _json(response: requests.Response) -> dict:
    try:
        data = response.json()
    except ValueError:
        data = None
    return data if isinstance(data, dict) else {}


class OidcClient:
    """The three unauthenticated SSO-OIDC operations, REST-JSON with camelCase bodies."""

    def __init__(self, base_url: str, session: requests.Session,
                 timeout: tuple[float, float] = (10.0, 30.0)):
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.timeout = timeout

    @property
    def token_endpoint(self) -> str:
        return self.base_url + "/token"

    def call(self, operation: str, path: str, body: dict) -> dict:
        """POST `body`; the JSON answer, or OidcError naming the error kind."""
        try:
            response = self.session.post(self.base_url + path, json=body, timeout=self.timeout)
        except requests.RequestException as exc:
            raise LoginError(f"{operation}: cannot reach {self.base_url} ({type(exc).__name__})") from None
        data = _json(response)
        if response.status_code == 200:
            return data
        raise OidcError(operation, response.status_code, error_kind(response, data),
                        str(data.get("error_description") or data.get("message") or ""))

    def register_client(self) -> dict:
        return self.call("RegisterClient", "/client/register",
                         {"clientName": CLIENT_NAME, "clientType": "public", "scopes": SCOPES})

    def start_device_authorization(self, client_id: str, client_secret: str, start_url: str) -> dict:
        return self.call("StartDeviceAuthorization", "/device_authorization",
                         {"clientId": client_id, "clientSecret": client_secret, "startUrl": start_url})

    def create_token(self, client_id: str, client_secret: str, device_code: str) -> dict:
        return self.call("CreateToken", "/token",
                         {"clientId": client_id, "clientSecret": client_secret,
                          "grantType": DEVICE_GRANT, "deviceCode": device_code})


def refresh_grant(session: requests.Session, endpoint: str, *, client_id: str, client_secret: str,
                  refresh_token: str, timeout: tuple[float, float],
                  interrupted_at: float | None = None) -> dict:
    """CreateToken with grantType refresh_token at `endpoint`; the answer's JSON (may lack keys).

    :raises RefreshRejected: the token or the registration was refused (a new login fixes it);
        GatewayTimeout, BadGateway, UpstreamFailure: the service failed (try again later).
    """
    body = {"clientId": client_id, "clientSecret": client_secret,
            "grantType": "refresh_token", "refreshToken": refresh_token}
    with transport_errors(endpoint, service="the Amazon Q token service"):
        response = session.post(endpoint, json=body, timeout=timeout)
    if response.status_code == 200:
        return _json(response)
    error = _refresh_error(response, interrupted_at)
    error.answered = True  # a definite answer: nothing was issued
    raise error


def _refresh_error(response: requests.Response, interrupted: float | None) -> Exception:
    data = _json(response)
    error = str(data.get("error") or "")
    kind = response.headers.get("x-amzn-ErrorType", "").split(":", 1)[0]
    logger.warning("token refresh failed: HTTP %s %s %s", response.status_code, error, kind)
    if error in ("invalid_grant", "expired_token") or kind in (
            "InvalidGrantException", "ExpiredTokenException"):
        return RefreshRejected(error or kind, grant=True, interrupted_at=interrupted)
    if error == "invalid_client" or response.status_code == 401:
        return RefreshRejected("the client registration was rejected: " + (error or kind))
    if response.status_code >= 500:
        return UpstreamFailure(f"Amazon Q token service error (HTTP {response.status_code})")
    return UpstreamFailure(f"Amazon Q token refresh failed (HTTP {response.status_code} {error or kind})")
