"""The credential store and the token manager.

One JSON file (AMAZONQ_TOKEN_CACHE, mode 0600) holds the login that every amq process shares:
the OIDC client registration, the newest refresh token and the current access token. The OIDC
service may rotate the refresh token at each refresh (the old one then stops working), so:

* refreshes are serialised across processes by an exclusive lock on `<store>.lock`
  (fcntl.flock, taken by polling so a waiting gevent worker keeps serving);
* under that lock the store is read again first: when another process has refreshed already,
  its token is used instead of refreshing again;
* the store is replaced atomically (temp file, fsync, rename, directory fsync), so a reader
  never sees a partial file and a killed writer leaves the old file or the new one;
* before CreateToken is sent, the store records that a refresh is in flight (`refreshStartedAt`,
  write-ahead); the answer is written to the store before anything else is done with it.

What a client alone cannot close: the service has issued (and maybe rotated to) a new refresh
token, but the process dies or the connection breaks before that answer reaches the rename. The
new token then exists only inside the dead process. The marker lets the next start say so
instead of failing obscurely, and `previousRefreshToken` is tried once if `refreshToken` is
rejected (it helps only where the service keeps the old token valid for a while).

Store keys: clientId, clientSecret, clientSecretExpiresAt, region, startUrl, tokenEndpoint,
source, refreshToken, previousRefreshToken, accessToken, expiresAt, obtainedAt (epoch seconds),
refreshStartedAt (write-ahead marker), seed (fingerprint of the environment credentials the
login came from; empty for `login` and `import-q-cli`).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from datetime import datetime, timezone
from typing import Callable, NamedTuple

import requests

from .config import DEFAULT_REGION, ConfigError, Settings, oidc_url
from .errors import (AuthenticationFailed, BadGateway, CredentialsRejected, GatewayTimeout,
                     ProxyError, UpstreamFailure)

logger = logging.getLogger(__name__)

LOGIN_HINT = ("Log in again with `flask --app app login` (or `flask --app app import-q-cli`); "
              "a running amq picks the new login up unless AMAZONQ_REFRESH_TOKEN is set.")


class AccessToken(NamedTuple):
    token: str
    expires_at: float  # epoch seconds
    obtained_at: float = 0.0  # when the refresh that minted it started (0: unknown)


class NoCredentials(AuthenticationFailed):
    """No login anywhere: neither the environment nor the credential store has one."""

    def __init__(self, missing: str):
        super().__init__(f"amq has no Amazon Q login ({missing} is not set and the credential "
                         "store holds none). Run `flask --app app login`.")


class RefreshRejected(CredentialsRejected):
    """The OIDC service refused the refresh token or the client registration."""

    def __init__(self, detail: str, *, grant: bool = False, interrupted_at: float | None = None):
        message = "Amazon Q refresh token is no longer valid" + (f" ({detail})" if detail else "") + "."
        if interrupted_at:
            message += (" An earlier refresh was interrupted at " + iso_time(interrupted_at)
                        + " before amq could store the refresh token the service issued then.")
        super().__init__(message + " " + LOGIN_HINT)
        self.grant = grant  # the refresh token itself was refused (not the registration)


class LockTimeout(TimeoutError):
    """The store's lock stayed taken for longer than the timeout."""


def iso_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class FileLock:
    """An exclusive lock shared by every process (flock on `path`), released when the holder
    exits or dies. Taken by polling a non-blocking flock with short sleeps: a blocking flock
    would stall every greenlet of a gevent worker, while time.sleep yields to them."""

    def __init__(self, path: str, timeout: float):
        self.path = path
        self.timeout = timeout
        self._fd: int | None = None

    def acquire(self) -> None:
        """:raises LockTimeout: after `timeout` seconds; OSError if the file cannot be opened."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + self.timeout
        delay = 0.001
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockTimeout(f"{self.path} stayed locked for {self.timeout:.0f}s") from None
                    time.sleep(delay)  # cooperative under gevent
                    delay = min(delay * 2, 0.05)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class TokenCache:
    """The credential store: one JSON file (mode 0600) and its lock file beside it."""

    def __init__(self, path: str, lock_timeout: float = 90.0):
        self.path = path
        self.lock_path = path + ".lock"
        self.lock_timeout = lock_timeout
        self._temp_prefix = "." + os.path.basename(path) + ".tmp-"

    def load(self) -> dict:
        """The store's contents ({} if absent). Safe without the lock: the file is only ever
        replaced whole."""
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("token cache %s unreadable (%s); ignoring it", self.path, type(exc).__name__)
            return {}
        return data if isinstance(data, dict) else {}

    def lock(self) -> FileLock:
        """A new (not yet acquired) lock on the store; use as a context manager."""
        self._make_directory()
        return FileLock(self.lock_path, self.lock_timeout)

    def save(self, data: dict) -> None:
        """Replace the file atomically: temp file, fsync, rename, fsync of the directory.

        Call it holding `lock()` (or where no other writer can exist): temp files left by a
        writer that died are removed here, which is safe only while no one else writes.
        """
        directory = self._make_directory()
        self._remove_stale_temp_files(directory)
        fd, tmp = tempfile.mkstemp(prefix=self._temp_prefix, dir=directory)  # created 0600
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
        try:  # make the rename itself durable (power loss; a killed process needs no fsync)
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            pass

    def replace_login(self, data: dict) -> None:
        """Store a new login (from `login` or an import) in place of whatever was there."""
        with self.lock():
            self.save(data)

    def _make_directory(self) -> str:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        return directory

    def _remove_stale_temp_files(self, directory: str) -> None:
        try:
            names = [n for n in os.listdir(directory) if n.startswith(self._temp_prefix)]
        except OSError:
            return
        for name in names:
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass


def _seed(client_id: str, refresh_token: str) -> str:
    """Fingerprint of the environment's credentials, to tell a new login from a spent token."""
    return hashlib.sha256(f"{client_id}\n{refresh_token}".encode("utf-8")).hexdigest()


def stored_token(stored: dict) -> AccessToken | None:
    try:
        if stored.get("accessToken") and stored.get("expiresAt"):
            return AccessToken(str(stored["accessToken"]), float(stored["expiresAt"]),
                               float(stored.get("obtainedAt") or 0.0))
    except (TypeError, ValueError):
        pass
    return None


class TokenManager:
    """Hands out access tokens. One refresh at a time per process (waiters reuse its result)
    and, through the store's lock, one at a time across processes."""

    REFRESH_MARGIN = 300.0  # refresh this many seconds before expiry...
    MARGIN_FRACTION = 0.2  # ...or this share of the token's lifetime, if that is shorter

    def __init__(self, *, client_id: str, client_secret: str, refresh_token: str,
                 token_endpoint: str, cache: TokenCache, session: requests.Session,
                 timeout: tuple[float, float] = (10.0, 30.0),
                 clock: Callable[[], float] = time.time, env_seed: str = "",
                 endpoint_from_env: bool = True):
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
        # The last refresh attempt's failure: callers that waited for that attempt get it too
        # instead of queueing one doomed refresh each behind a slow or broken token service.
        self._attempts = 0  # finished refresh attempts
        self._failure: ProxyError | None = None
        # Non-empty when the login came from the environment: then the store is used only
        # while it holds that same login (a new login in the environment wins over it).
        self._env_seed = env_seed
        self._endpoint_from_env = endpoint_from_env
        self.missing = ""  # the first credential found nowhere (managers built with required=False)
        self.source = "environment" if env_seed else ""

    @classmethod
    def from_settings(cls, settings: Settings, session: requests.Session, *, required: bool = True,
                      **kwargs) -> "TokenManager":
        """Combine the environment with the store; the store's refresh token wins unless the
        environment now holds different credentials (a new login).

        :raises ConfigError: naming a credential found in neither place, if `required`.
        """
        read_timeout = min(settings.read_timeout, 60.0)
        cache = TokenCache(settings.token_cache,
                           lock_timeout=settings.connect_timeout + read_timeout + 30.0)
        stored = cache.load()
        client_id = settings.client_id or stored.get("clientId", "")
        client_secret = settings.client_secret or stored.get("clientSecret", "")
        env_seed = _seed(settings.client_id, settings.refresh_token) if settings.refresh_token else ""
        refresh_token = settings.refresh_token
        same_login = stored.get("clientId") == client_id and (
            not settings.refresh_token or stored.get("seed") == env_seed)
        if same_login and stored.get("refreshToken"):
            refresh_token = stored["refreshToken"]
        missing = next((name for name, value in (("AMAZONQ_REFRESH_TOKEN", refresh_token),
                                                 ("AMAZONQ_CLIENT_ID", client_id),
                                                 ("AMAZONQ_CLIENT_SECRET", client_secret))
                        if not value), "")
        if missing and required:
            raise ConfigError(f"{missing} is not set. Run `flask --app app login`, or set it in the "
                              "environment or in a .env file (see .env.example and the README).")
        endpoint = settings.token_endpoint or (same_login and stored.get("tokenEndpoint")) or (
            oidc_url((same_login and stored.get("region")) or DEFAULT_REGION) + "/token")
        manager = cls(client_id=client_id, client_secret=client_secret,
                      refresh_token=refresh_token, token_endpoint=endpoint,
                      cache=cache, session=session, timeout=(settings.connect_timeout, read_timeout),
                      env_seed=env_seed, endpoint_from_env=bool(settings.token_endpoint), **kwargs)
        manager.missing = missing
        if same_login:
            manager._token = stored_token(stored)
            if stored.get("refreshToken"):
                manager.source = stored.get("source") or manager.source or "token cache"
        return manager

    # ------------------------------------------------------------------ public

    def get_token(self) -> str:
        """A valid access token, refreshed first when it is within the margin of expiry."""
        token, generation, attempts = self._token, self._generation, self._attempts
        if self._fresh(token):
            return token.token
        with self._lock:
            # Someone in this process refreshed while we waited: use theirs.
            if self._generation != generation and self._usable(self._token):
                return self._token.token
            if self._fresh(self._token):
                return self._token.token
            return self._attempt(token.token if token else None, attempts).token

    def refresh_after_rejection(self, rejected: str) -> str:
        """Q called `rejected` invalid: refresh unless another request already did."""
        attempts = self._attempts
        with self._lock:
            if self._token is not None and self._token.token != rejected and self._usable(self._token):
                return self._token.token
            return self._attempt(rejected, attempts).token

    def _attempt(self, stale: str | None, attempts_seen: int) -> AccessToken:
        """One refresh attempt, unless one failed while this caller waited. Lock held."""
        if self._attempts != attempts_seen and self._failure is not None:
            raise self._failure
        try:
            token = self._renew(stale=stale)
        except ProxyError as exc:
            self._failure = exc
            raise
        else:
            self._failure = None
        finally:
            self._attempts += 1  # counts finished attempts: waiters compare against it
        return token

    def status(self) -> dict:
        """For /health: whether a token is held and whether it has expired; no secrets."""
        token = self._token
        return {"has_token": token is not None,
                "token_expired": token is not None and not self._usable(token)}

    @property
    def token(self) -> AccessToken | None:
        """The access token held in memory (for `status`; never log its value)."""
        return self._token

    # ------------------------------------------------------------------ internals

    def _margin(self, token: AccessToken) -> float:
        lifetime = token.expires_at - token.obtained_at if token.obtained_at else float("inf")
        return min(self.REFRESH_MARGIN, max(lifetime, 0.0) * self.MARGIN_FRACTION)

    def _fresh(self, token: AccessToken | None) -> bool:
        return token is not None and token.expires_at - self._margin(token) > self._clock()

    def _usable(self, token: AccessToken | None) -> bool:
        return token is not None and token.expires_at > self._clock()

    def _set_token(self, token: AccessToken) -> None:
        self._token = token
        self._generation += 1

    def owns(self, stored: dict) -> bool:
        """Whether the store holds this process's login, so its newer tokens are ours to use.

        A login from the environment owns the store only once written there (same seed); a
        login from the store follows whatever the store holds (including a new `login`).
        """
        if not stored.get("refreshToken"):
            return False
        if self._env_seed:
            return stored.get("seed") == self._env_seed and stored.get("clientId") == self.client_id
        return True

    def _adopt(self, stored: dict) -> AccessToken | None:
        """Take the store's credentials if they are ours; return its access token if fresh."""
        if not self.owns(stored):
            return None
        self.client_id = stored.get("clientId") or self.client_id
        self._client_secret = stored.get("clientSecret") or self._client_secret
        self._refresh_token = stored["refreshToken"]
        if not self._endpoint_from_env and stored.get("tokenEndpoint"):
            self.token_endpoint = stored["tokenEndpoint"]
        self.missing = ""
        return stored_token(stored)

    def _take_stored(self, stored: dict, stale: str | None) -> AccessToken | None:
        token = self._adopt(stored)
        if token is not None and token.token != stale and self._fresh(token):
            self._set_token(token)
            return token
        return None

    def _renew(self, stale: str | None) -> AccessToken:
        """A fresh token from the store if another process has one, else a refresh. In-process
        lock held."""
        token = self._take_stored(self.cache.load(), stale)  # cheap first look, no lock
        if token is not None:
            return token
        lock = None
        try:
            lock = self.cache.lock()
            lock.acquire()
        except LockTimeout:
            raise GatewayTimeout("another amq process is still refreshing the Amazon Q access "
                                 f"token (lock {self.cache.lock_path})") from None
        except OSError as exc:
            logger.error("cannot lock token cache %s (%s): refreshes are not serialised across "
                         "processes", self.cache.lock_path, exc.strerror or exc)
            lock = None
        try:
            stored = self.cache.load()
            token = self._take_stored(stored, stale)  # another process refreshed meanwhile
            if token is not None:
                return token
            return self._refresh(stored)
        finally:
            if lock is not None:
                lock.release()

    def _record(self, stored: dict) -> dict:
        """What the store will hold for this login: its current contents if they are ours."""
        if self.owns(stored):
            record = dict(stored)
        else:
            record = {"seed": self._env_seed, "source": self.source or "environment"}
        record.update(clientId=self.client_id, clientSecret=self._client_secret,
                      tokenEndpoint=self.token_endpoint, refreshToken=self._refresh_token)
        return record

    def _refresh(self, stored: dict) -> AccessToken:
        """Refresh with the newest refresh token, then (once) the previous one. Locks held."""
        if not self._refresh_token:
            raise NoCredentials(self.missing or "AMAZONQ_REFRESH_TOKEN")
        record = self._record(stored)
        interrupted = record.pop("refreshStartedAt", None)
        previous = record.get("previousRefreshToken")
        # Another login in the store (the environment's differs) is replaced only on success.
        write_ahead = self.owns(stored) or not stored.get("refreshToken")
        try:
            return self._create_token(record, record["refreshToken"], interrupted, write_ahead)
        except RefreshRejected as exc:
            if not (exc.grant and previous and previous != record["refreshToken"]):
                raise
            logger.warning("refresh token rejected; trying the previous one once")
            try:
                token = self._create_token(record, previous, interrupted, write_ahead)
            except RefreshRejected:
                raise exc from None
            logger.warning("the previous refresh token was accepted")
            return token

    def _create_token(self, record: dict, sent: str, interrupted: float | None,
                      write_ahead: bool) -> AccessToken:
        """CreateToken with grantType refresh_token (camelCase body, spec 4.1); `record` is
        what the store holds for this login, `sent` the refresh token to send, `write_ahead`
        whether the store may be written before the answer is known."""
        body = {"clientId": self.client_id, "clientSecret": self._client_secret,
                "grantType": "refresh_token", "refreshToken": sent}
        # Write-ahead: once the request leaves, the service may rotate `sent` away.
        if write_ahead:
            self._save(dict(record, refreshStartedAt=self._clock()))
        started = self._clock()
        try:
            response = self._session.post(self.token_endpoint, json=body, timeout=self._timeout)
        except requests.Timeout:
            raise GatewayTimeout("timed out refreshing the Amazon Q access token") from None
        except requests.RequestException as exc:
            raise BadGateway(f"cannot reach the Amazon Q token service ({type(exc).__name__})") from None
        if response.status_code != 200:
            # A definite answer: nothing was issued, so only an earlier interruption stays marked.
            if write_ahead:
                self._save(dict(record, refreshStartedAt=interrupted) if interrupted else record)
            raise self._refresh_error(response, interrupted)
        try:
            data = response.json()
        except ValueError:
            data = None
        data = data if isinstance(data, dict) else {}
        rotated = data.get("refreshToken") if isinstance(data.get("refreshToken"), str) else ""
        try:
            token = AccessToken(str(data["accessToken"]), started + float(data["expiresIn"]), started)
        except (KeyError, TypeError, ValueError):
            token = None
        # Store the answer before anything else: until the rename, a kill loses `rotated`.
        new = dict(record, refreshToken=rotated or sent)
        if rotated and rotated != sent:
            new["previousRefreshToken"] = sent
        if token is not None:
            new.update(accessToken=token.token, expiresAt=token.expires_at, obtainedAt=started)
        else:
            new["refreshStartedAt"] = started  # the service may have rotated without telling us
        self._save(new)
        self._refresh_token = new["refreshToken"]
        if token is None:
            raise UpstreamFailure("the Amazon Q token service sent an unreadable answer")
        self._set_token(token)
        logger.info("access token refreshed; valid for %ds%s", int(token.expires_at - started),
                    ", refresh token rotated" if rotated and rotated != sent else "")
        return token

    def _store(self) -> None:
        """Write the in-memory login and token to the store (under its lock)."""
        with self.cache.lock():
            record = self._record(self.cache.load())
            if self._token is not None:
                record.update(accessToken=self._token.token, expiresAt=self._token.expires_at,
                              obtainedAt=self._token.obtained_at)
            self._save(record)

    def _save(self, data: dict) -> None:
        try:
            self.cache.save(data)
        except OSError as exc:
            # The new refresh token lives on in this process only; other workers and the next
            # start will be refused, so say so loudly.
            logger.error("cannot write token cache %s (%s): a rotated refresh token will be "
                         "lost when amq stops", self.cache.path, exc.strerror or exc)

    def _refresh_error(self, response: requests.Response, interrupted: float | None) -> Exception:
        try:
            data = response.json()
        except ValueError:
            data = {}
        error = str(data.get("error") or "") if isinstance(data, dict) else ""
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
