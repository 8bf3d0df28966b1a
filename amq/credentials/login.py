"""`login`: the SSO-OIDC device authorization flow, as the Q CLI performs it (docs/oidc.md).

RegisterClient (reused while the stored registration is valid), StartDeviceAuthorization, then
CreateToken with the device code every `interval` seconds until the user approves, honouring
authorization_pending, slow_down (+5 s, RFC 8628) and the code's expiry. The result is a
credential-store record: the registration and the first refresh and access tokens.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..config import DEFAULT_REGION
from .oidc import SCOPES, LoginError, OidcClient, OidcError
from .record import LoginRecord

__all__ = ["BUILDER_ID_START_URL", "SCOPES", "DeviceAuthorization", "LoginError", "OidcClient", "device_login",
           "finish_device_login", "start_device_login"]

BUILDER_ID_START_URL = "https://view.awsapps.com/start"
REGISTRATION_MARGIN = 60.0  # re-register this long before the registration expires (as the Q CLI)


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


@dataclass(frozen=True)
class DeviceAuthorization:
    """A started device login: what the user must open and type, and what polling needs."""

    registration: dict = field(repr=False)  # clientId, clientSecret, clientSecretExpiresAt
    device_code: str = field(repr=False)
    user_code: str
    url: str  # the complete verification URL (with the code) when the service gives one
    verification_uri: str  # the page where the code is typed ("" if only the complete URL came)
    expires_in: float
    interval: float
    start_url: str
    region: str


def start_device_login(oidc: OidcClient, *, start_url: str = BUILDER_ID_START_URL,
                       region: str = DEFAULT_REGION, previous: LoginRecord | None = None,
                       wall: Callable[[], float] = time.time) -> DeviceAuthorization:
    """Register (or reuse `previous`'s registration) and start the device authorization.

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
        return DeviceAuthorization(
            registration=registration, device_code=str(auth["deviceCode"]),
            user_code=str(auth.get("userCode") or ""),
            url=str(auth.get("verificationUriComplete") or auth["verificationUri"]),
            verification_uri=str(auth.get("verificationUri") or ""),
            expires_in=float(auth.get("expiresIn") or 600),
            interval=max(1.0, float(auth.get("interval") or 5)), start_url=start_url, region=region)
    except (KeyError, TypeError, ValueError):
        raise LoginError("StartDeviceAuthorization answered without a device code") from None


def finish_device_login(oidc: OidcClient, auth: DeviceAuthorization, *,
                        echo: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep,
                        clock: Callable[[], float] = time.monotonic,
                        wall: Callable[[], float] = time.time) -> LoginRecord:
    """Poll until the user approves `auth`; return the record to put into the credential store.

    :raises LoginError: with a message for the user.
    """
    obtained_at, answer = poll_for_token(oidc, auth.registration, auth.device_code,
                                         interval=auth.interval, expires_in=auth.expires_in,
                                         echo=echo, sleep=sleep, clock=clock, wall=wall)
    try:
        access_token, expires_at = str(answer["accessToken"]), obtained_at + float(answer["expiresIn"])
        refresh_token = str(answer["refreshToken"])
    except (KeyError, TypeError, ValueError):
        raise LoginError("CreateToken answered without an access and a refresh token") from None
    record = {**auth.registration, "region": auth.region, "startUrl": auth.start_url,
              "tokenEndpoint": oidc.token_endpoint, "source": "login", "seed": "",
              "refreshToken": refresh_token, "accessToken": access_token,
              "expiresAt": expires_at, "obtainedAt": obtained_at, "loggedInAt": wall()}
    return {key: value for key, value in record.items() if value is not None}


def device_login(oidc: OidcClient, *, start_url: str = BUILDER_ID_START_URL,
                 region: str = DEFAULT_REGION, previous: LoginRecord | None = None,
                 echo: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> LoginRecord:
    """Run the device flow on a terminal; return the record to put into the credential store.

    `previous` is the store's current contents (its registration is reused when it fits).
    :raises LoginError: with a message for the user.
    """
    auth = start_device_login(oidc, start_url=start_url, region=region, previous=previous, wall=wall)
    echo(f"Open this URL in a browser, sign in and confirm the code {auth.user_code}:\n\n    {auth.url}\n")
    if auth.url != auth.verification_uri and auth.verification_uri:
        echo(f"(or open {auth.verification_uri} and type the code)")
    echo(f"Waiting for approval (the code expires in {int(auth.expires_in // 60)} min "
         f"{int(auth.expires_in % 60)} s)...")
    return finish_device_login(oidc, auth, echo=echo, sleep=sleep, clock=clock, wall=wall)


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
