"""`login`: the SSO-OIDC device authorization flow (spec 4.1-4.3), as the Q CLI performs it.

RegisterClient (reused while the stored registration is valid), StartDeviceAuthorization, then
CreateToken with the device code every `interval` seconds until the user approves, honouring
authorization_pending, slow_down (+5 s, RFC 8628) and the code's expiry. The result is a
credential-store record: the registration and the first refresh and access tokens.
"""
from __future__ import annotations

import time
from typing import Callable

import requests

from .config import DEFAULT_REGION

BUILDER_ID_START_URL = "https://view.awsapps.com/start"
SCOPES = ["codewhisperer:completions", "codewhisperer:analysis", "codewhisperer:conversations"]
CLIENT_NAME = "amq"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
REGISTRATION_MARGIN = 60.0  # re-register this long before the registration expires (as the Q CLI)

# x-amzn-ErrorType names and the OAuth `error` strings (the latter UNCONFIRMED, spec 4.3).
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
        try:
            data = response.json()
        except ValueError:
            data = {}
        data = data if isinstance(data, dict) else {}
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


def error_kind(response: requests.Response, data: dict) -> str:
    """The OAuth-style error code, from the x-amzn-ErrorType header or the body's `error`."""
    header = response.headers.get("x-amzn-ErrorType", "").split(":", 1)[0]
    return _ERROR_KINDS.get(header) or str(data.get("error") or header or "unknown_error")


def _reusable(previous: dict, token_endpoint: str, now: float) -> bool:
    """A registration of an earlier `login` for the same OIDC endpoint, valid for a while yet
    (an imported one belongs to the CLI it came from)."""
    try:
        expires = float(previous.get("clientSecretExpiresAt") or 0)
    except (TypeError, ValueError):
        return False
    return bool(previous.get("source") == "login" and previous.get("clientId")
                and previous.get("clientSecret") and previous.get("tokenEndpoint") == token_endpoint
                and expires > now + REGISTRATION_MARGIN)


def device_login(oidc: OidcClient, *, start_url: str = BUILDER_ID_START_URL,
                 region: str = DEFAULT_REGION, previous: dict | None = None,
                 echo: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> dict:
    """Run the device flow; return the record to put into the credential store.

    `previous` is the store's current contents (its registration is reused when it fits).
    :raises LoginError: with a message for the user.
    """
    previous = previous or {}
    if _reusable(previous, oidc.token_endpoint, wall()):
        registration = {"clientId": previous["clientId"], "clientSecret": previous["clientSecret"],
                        "clientSecretExpiresAt": previous["clientSecretExpiresAt"]}
        try:
            auth = oidc.start_device_authorization(registration["clientId"],
                                                   registration["clientSecret"], start_url)
        except OidcError as exc:
            if exc.kind != "invalid_client":
                raise
            registration, auth = None, None  # revoked: register anew
    else:
        registration, auth = None, None
    if registration is None:
        answer = oidc.register_client()
        try:
            registration = {"clientId": str(answer["clientId"]), "clientSecret": str(answer["clientSecret"]),
                            "clientSecretExpiresAt": float(answer.get("clientSecretExpiresAt") or 0) or None}
        except KeyError:
            raise LoginError("RegisterClient answered without a client id and secret") from None
        auth = oidc.start_device_authorization(registration["clientId"], registration["clientSecret"],
                                               start_url)
    try:
        device_code = str(auth["deviceCode"])
        user_code = str(auth.get("userCode") or "")
        url = str(auth.get("verificationUriComplete") or auth["verificationUri"])
        expires_in = float(auth.get("expiresIn") or 600)
        interval = max(1.0, float(auth.get("interval") or 5))
    except (KeyError, TypeError, ValueError):
        raise LoginError("StartDeviceAuthorization answered without a device code") from None

    echo(f"Open this URL in a browser, sign in and confirm the code {user_code}:\n\n    {url}\n")
    if auth.get("verificationUriComplete") and auth.get("verificationUri"):
        echo(f"(or open {auth['verificationUri']} and type the code)")
    echo(f"Waiting for approval (the code expires in {int(expires_in // 60)} min {int(expires_in % 60)} s)...")
    obtained_at, answer = poll_for_token(oidc, registration, device_code, interval=interval,
                                         expires_in=expires_in, echo=echo, sleep=sleep, clock=clock,
                                         wall=wall)
    try:
        access_token, expires_at = str(answer["accessToken"]), obtained_at + float(answer["expiresIn"])
        refresh_token = str(answer["refreshToken"])
    except (KeyError, TypeError, ValueError):
        raise LoginError("CreateToken answered without an access and a refresh token") from None
    record = {**registration, "region": region, "startUrl": start_url,
              "tokenEndpoint": oidc.token_endpoint, "source": "login", "seed": "",
              "refreshToken": refresh_token, "accessToken": access_token,
              "expiresAt": expires_at, "obtainedAt": obtained_at, "loggedInAt": wall()}
    return {key: value for key, value in record.items() if value is not None}


def poll_for_token(oidc: OidcClient, registration: dict, device_code: str, *, interval: float,
                   expires_in: float, echo: Callable[[str], None], sleep: Callable[[float], None],
                   clock: Callable[[], float], wall: Callable[[], float]) -> tuple[float, dict]:
    """CreateToken every `interval` s until approved: (epoch when the winning call started, answer)."""
    deadline = clock() + expires_in
    failures = 0
    while True:
        sleep(interval)
        if clock() >= deadline:
            raise LoginError("the code expired before the login was approved; run login again")
        started = wall()
        try:
            return started, oidc.create_token(registration["clientId"], registration["clientSecret"],
                                              device_code)
        except OidcError as exc:
            kind = exc.kind
            if kind == "authorization_pending":
                continue
            if kind == "slow_down":
                interval += 5
                continue
            if kind in ("expired_token", "invalid_grant"):
                raise LoginError("the code expired or was already used before the login was "
                                 "approved; run login again") from None
            if kind == "access_denied":
                raise LoginError("the login was denied in the browser") from None
            if exc.status < 500:
                raise
            error = exc
        except LoginError as exc:  # network trouble: keep polling until the code expires
            error = exc
        failures += 1
        if failures in (1, 10):
            echo(f"still waiting ({error})")
