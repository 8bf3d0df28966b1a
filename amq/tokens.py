"""The token manager: keeps a Q access token fresh through OIDC CreateToken, and never loses a
rotated refresh token."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from typing import Callable, NamedTuple

import requests

from .config import ConfigError, Settings
from .errors import BadGateway, CredentialsRejected, GatewayTimeout, UpstreamFailure

logger = logging.getLogger(__name__)


class AccessToken(NamedTuple):
    token: str
    expires_at: float  # epoch seconds


class TokenCache:
    """The JSON file holding the newest refresh token and access token (mode 0600)."""

    def __init__(self, path: str):
        self.path = path

    def load(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("token cache %s unreadable (%s); ignoring it", self.path, type(exc).__name__)
            return {}
        return data if isinstance(data, dict) else {}

    def save(self, data: dict) -> None:
        """Write atomically: a reader sees the old file or the new one, never a mix."""
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".token-", dir=directory)  # created 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


def _seed(client_id: str, refresh_token: str) -> str:
    """Fingerprint of the environment's credentials, to tell a new login from a spent token."""
    return hashlib.sha256(f"{client_id}\n{refresh_token}".encode("utf-8")).hexdigest()


class TokenManager:
    """Hands out access tokens; one refresh at a time per process, waiters reuse its result."""

    REFRESH_MARGIN = 300.0  # refresh this many seconds before expiry

    def __init__(self, *, client_id: str, client_secret: str, refresh_token: str,
                 token_endpoint: str, cache: TokenCache, session: requests.Session,
                 timeout: tuple[float, float] = (10.0, 30.0),
                 clock: Callable[[], float] = time.time):
        self.client_id = client_id
        self._client_secret = client_secret
        self._refresh_token = refresh_token
        self.token_endpoint = token_endpoint
        self.cache = cache
        self._session = session
        self._timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()  # cooperative once gevent has patched threading
        self._generation = 0
        self._token: AccessToken | None = None
        self._seed = ""

    @classmethod
    def from_settings(cls, settings: Settings, session: requests.Session, **kwargs) -> "TokenManager":
        """Combine the environment with the cache; the cache's refresh token wins unless the
        environment now holds different credentials (a new login).

        :raises ConfigError: naming a credential found in neither place.
        """
        cache = TokenCache(settings.token_cache)
        stored = cache.load()
        client_id = settings.client_id or stored.get("clientId", "")
        client_secret = settings.client_secret or stored.get("clientSecret", "")
        env_seed = _seed(settings.client_id, settings.refresh_token) if settings.refresh_token else ""
        refresh_token = settings.refresh_token
        same_login = stored.get("clientId") == client_id and (
            not settings.refresh_token or stored.get("seed") == env_seed)
        if same_login and stored.get("refreshToken"):
            refresh_token = stored["refreshToken"]
        for name, value in (("AMAZONQ_REFRESH_TOKEN", refresh_token),
                            ("AMAZONQ_CLIENT_ID", client_id),
                            ("AMAZONQ_CLIENT_SECRET", client_secret)):
            if not value:
                raise ConfigError(f"{name} is not set. Set it in the environment or in a .env "
                                  "file (see .env.example and the README).")
        manager = cls(client_id=client_id, client_secret=client_secret,
                      refresh_token=refresh_token, token_endpoint=settings.token_endpoint,
                      cache=cache, session=session,
                      timeout=(settings.connect_timeout, min(settings.read_timeout, 60.0)), **kwargs)
        manager._seed = env_seed or stored.get("seed", "")
        if same_login and stored.get("accessToken") and stored.get("expiresAt"):
            manager._token = AccessToken(stored["accessToken"], float(stored["expiresAt"]))
        return manager

    def _fresh(self, token: AccessToken | None) -> bool:
        return token is not None and token.expires_at - self.REFRESH_MARGIN > self._clock()

    def _usable(self, token: AccessToken | None) -> bool:
        return token is not None and token.expires_at > self._clock()

    def get_token(self) -> str:
        """A valid access token, refreshed first when it is within the margin of expiry."""
        token, generation = self._token, self._generation
        if self._fresh(token):
            return token.token
        with self._lock:
            # Someone refreshed while we waited: use theirs even if its lifetime is shorter
            # than the margin, or every waiter would refresh again in turn.
            if self._generation != generation and self._usable(self._token):
                return self._token.token
            if self._fresh(self._token):
                return self._token.token
            return self._refresh().token

    def refresh_after_rejection(self, rejected: str) -> str:
        """Q called `rejected` invalid: refresh unless another request already did."""
        with self._lock:
            if self._token is not None and self._token.token != rejected and self._usable(self._token):
                return self._token.token
            return self._refresh().token

    def status(self) -> dict:
        """For /health: whether a token is held and whether it has expired; no secrets."""
        token = self._token
        return {"has_token": token is not None,
                "token_expired": token is not None and not self._usable(token)}

    def _refresh(self) -> AccessToken:
        """CreateToken with grantType refresh_token (camelCase body, spec 4.1). Lock held."""
        body = {"clientId": self.client_id, "clientSecret": self._client_secret,
                "grantType": "refresh_token", "refreshToken": self._refresh_token}
        started = self._clock()
        try:
            response = self._session.post(self.token_endpoint, json=body, timeout=self._timeout)
        except requests.Timeout:
            raise GatewayTimeout("timed out refreshing the Amazon Q access token") from None
        except requests.RequestException as exc:
            raise BadGateway(f"cannot reach the Amazon Q token service ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise self._refresh_error(response)
        try:
            data = response.json()
            token = AccessToken(str(data["accessToken"]), started + float(data["expiresIn"]))
        except (ValueError, KeyError, TypeError):
            raise UpstreamFailure("the Amazon Q token service sent an unreadable answer") from None
        rotated = data.get("refreshToken")
        if rotated:
            self._refresh_token = rotated
        self._token = token
        self._generation += 1
        self._store()
        logger.info("access token refreshed; valid for %ds%s", int(token.expires_at - started),
                    ", refresh token rotated" if rotated and rotated != body["refreshToken"] else "")
        return token

    def _store(self) -> None:
        data = {"clientId": self.client_id, "refreshToken": self._refresh_token,
                "accessToken": self._token.token, "expiresAt": self._token.expires_at,
                "seed": self._seed}
        try:
            self.cache.save(data)
        except OSError as exc:
            # The new refresh token lives on in memory; losing it at restart would lock the
            # user out, so say so loudly.
            logger.error("cannot write token cache %s (%s): a rotated refresh token will be "
                         "lost when amq stops", self.cache.path, exc.strerror or exc)

    def _refresh_error(self, response: requests.Response) -> Exception:
        try:
            data = response.json()
        except ValueError:
            data = {}
        error = str(data.get("error") or "") if isinstance(data, dict) else ""
        kind = response.headers.get("x-amzn-ErrorType", "").split(":", 1)[0]
        logger.warning("token refresh failed: HTTP %s %s %s", response.status_code, error, kind)
        if error in ("invalid_grant", "expired_token") or kind in (
                "InvalidGrantException", "ExpiredTokenException"):
            return CredentialsRejected(error or kind)
        if error == "invalid_client" or response.status_code == 401:
            return CredentialsRejected("the client registration was rejected: " + (error or kind))
        if response.status_code >= 500:
            return UpstreamFailure(f"Amazon Q token service error (HTTP {response.status_code})")
        return UpstreamFailure(f"Amazon Q token refresh failed (HTTP {response.status_code} {error or kind})")
