"""The token manager: when to refresh one account's access token, and how to do it safely.

The store (file or Redis), the OIDC session and the clock are passed in. The OIDC service may
rotate the refresh token at each refresh (the old one then stops working), so:

* refreshes are serialised across processes and instances by the store's lock, and within a
  process by one lock per manager (waiters reuse the result);
* under the store's lock the record is read again first: when another process has refreshed
  already, its token is used instead of refreshing again;
* every write names the record version it read (the fence): a writer whose lock expired, or
  who read before someone else wrote, is refused and cannot replace a newer refresh token;
* before CreateToken is sent the record says a refresh is in flight (`refreshStartedAt`,
  write-ahead); the answer is written to the store before anything else is done with it.

What a client alone cannot close: the service has issued (and maybe rotated to) a new refresh
token, but the process dies or the connection breaks before that answer is stored. The new
token then exists only inside the dead process. The marker lets the next start say so instead
of failing obscurely, and `previousRefreshToken` is tried once if `refreshToken` is rejected
(it helps only where the service keeps the old token valid for a while). A token that was
issued but could not be stored is logged as lost, with the account and the time, never itself.

The request path costs no store round trip while the access token in memory is fresh, apart
from one cheap version read every RECHECK_INTERVAL seconds (so a worker notices another's
refresh or a new login) that never fails a request.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

import requests

from ..config import DEFAULT_REGION, ConfigError, Settings, oidc_url
from ..errors import AuthenticationFailed, GatewayTimeout, ProxyError, StoreUnavailable, UpstreamFailure
from .oidc import RefreshRejected, refresh_grant
from .record import DEFAULT_ACCOUNT, AccessToken, LoginRecord, iso_time, seed, stored_token
from .store import CredentialStore, LockTimeout, StaleWrite, open_store

logger = logging.getLogger(__name__)


class NoCredentials(AuthenticationFailed):
    """No login anywhere: neither the environment nor the credential store has one."""

    def __init__(self, missing: str):
        super().__init__(f"amq has no Amazon Q login ({missing} is not set and the credential "
                         "store holds none). Run `flask --app app login`.")


def _has_other_accounts(store: CredentialStore) -> bool:
    """Whether the pool has logins besides `default` (then `default` need not exist)."""
    try:
        return any(name != DEFAULT_ACCOUNT for name in store.accounts())
    except (StoreUnavailable, OSError):
        return False


def _version(record: LoginRecord) -> int:
    try:
        return int(record.get("version") or 0)
    except (TypeError, ValueError):
        return 0


class TokenManager:
    """Hands out one account's access tokens. One refresh at a time per process (waiters reuse
    its result) and, through the store's lock, one at a time across processes."""

    REFRESH_MARGIN = 300.0  # refresh this many seconds before expiry...
    MARGIN_FRACTION = 0.2  # ...or this share of the token's lifetime, if that is shorter
    RECHECK_INTERVAL = 3.0  # seconds between looks at the record's version on the request path

    def __init__(self, *, client_id: str, client_secret: str, refresh_token: str,
                 token_endpoint: str, store: CredentialStore, session: requests.Session,
                 timeout: tuple[float, float] = (10.0, 30.0),
                 clock: Callable[[], float] = time.time, env_seed: str = "",
                 endpoint_from_env: bool = True, account: str = DEFAULT_ACCOUNT,
                 monotonic: Callable[[], float] = time.monotonic,
                 on_refresh: Callable[[str, float], None] | None = None):
        self.client_id = client_id
        self._client_secret = client_secret
        self._refresh_token = refresh_token
        self.token_endpoint = token_endpoint
        self.store = store
        self.account = account
        self._session = session
        self._timeout = timeout
        self._clock = clock
        self._monotonic = monotonic
        # Told each refresh attempt's outcome and lock wait (the app passes the metrics' counter).
        self._on_refresh = on_refresh
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
        self._seen_version = 0  # version of the record this process last read or wrote
        self._expected = 0  # the version a fenced write names (refresh in progress)
        self._next_check = 0.0
        self.last_refresh: float | None = None  # epoch of this process's last successful refresh
        self.missing = ""  # the first credential found nowhere (managers built with required=False)
        self.source = "environment" if env_seed else ""

    @classmethod
    def from_settings(cls, settings: Settings, session: requests.Session, *, required: bool = True,
                      store: CredentialStore | None = None, account: str = DEFAULT_ACCOUNT,
                      store_outage_ok: bool = False, **kwargs) -> TokenManager:
        """Combine the environment with the store; the store's refresh token wins unless the
        environment now holds different credentials (a new login).

        `store_outage_ok`: a worker started while Redis is away (the start-up check passed
        earlier) serves anyway and takes the login from the store once it answers.
        :raises ConfigError: naming a credential found in neither place, if `required`, or
            naming REDIS_URL when the Redis store cannot be used.
        """
        read_timeout = min(settings.read_timeout, 60.0)
        store = store if store is not None else open_store(settings, check=not store_outage_ok)
        try:
            stored = store.load(account)
        except StoreUnavailable as exc:
            if not store_outage_ok:
                raise ConfigError(exc.message) from None
            logger.warning("%s; requests that need the login get 503 until it answers", exc.message)
            stored, required = {}, False
        client_id = settings.client_id or stored.get("clientId", "")
        client_secret = settings.client_secret or stored.get("clientSecret", "")
        env_seed = seed(settings.client_id, settings.refresh_token) if settings.refresh_token else ""
        refresh_token = settings.refresh_token
        same_login = stored.get("clientId") == client_id and (
            not settings.refresh_token or stored.get("seed") == env_seed)
        if same_login and stored.get("refreshToken"):
            refresh_token = stored["refreshToken"]
        missing = next((name for name, value in (("AMAZONQ_REFRESH_TOKEN", refresh_token),
                                                 ("AMAZONQ_CLIENT_ID", client_id),
                                                 ("AMAZONQ_CLIENT_SECRET", client_secret))
                        if not value), "")
        if missing and required and not (account == DEFAULT_ACCOUNT and _has_other_accounts(store)):
            raise ConfigError(f"{missing} is not set. Run `flask --app app login`, or set it in the "
                              "environment or in a .env file (see .env.example and the README).")
        endpoint = settings.token_endpoint or (same_login and stored.get("tokenEndpoint")) or (
            oidc_url((same_login and stored.get("region")) or DEFAULT_REGION) + "/token")
        manager = cls(client_id=client_id, client_secret=client_secret,
                      refresh_token=refresh_token, token_endpoint=endpoint,
                      store=store, session=session, timeout=(settings.connect_timeout, read_timeout),
                      env_seed=env_seed, endpoint_from_env=bool(settings.token_endpoint),
                      account=account, **kwargs)
        manager.missing = missing
        manager._seen_version = _version(stored)
        manager._next_check = manager._monotonic() + cls.RECHECK_INTERVAL
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
            if self._monotonic() >= self._next_check:
                self._recheck()
                if self._token is not token and self._fresh(self._token):
                    return self._token.token
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

    def status(self) -> dict:
        """For /health: whether a token is held and whether it has expired; no secrets."""
        token = self._token
        return {"has_token": token is not None,
                "token_expired": token is not None and not self._usable(token)}

    @property
    def token(self) -> AccessToken | None:
        """The access token held in memory (for `status`; never log its value)."""
        return self._token

    def owns(self, stored: LoginRecord) -> bool:
        """Whether the store holds this process's login, so its newer tokens are ours to use.

        A login from the environment owns the store only once written there (same seed); a
        login from the store follows whatever the store holds (including a new `login`).
        """
        if not stored.get("refreshToken"):
            return False
        if self._env_seed:
            return stored.get("seed") == self._env_seed and stored.get("clientId") == self.client_id
        return True

    # ------------------------------------------------------------------ internals

    def _recheck(self) -> None:
        """Take a newer record (someone else's refresh, a new login) if the version moved.
        One cheap read at most every RECHECK_INTERVAL; a store that does not answer is ignored
        here (the token in memory is still valid)."""
        if not self._lock.acquire(blocking=False):
            return  # a refresh is in progress in this process: it reads the store itself
        try:
            self._next_check = self._monotonic() + self.RECHECK_INTERVAL
            try:
                if self.store.version(self.account) == self._seen_version:
                    return
                stored = self.store.load(self.account)
            except (StoreUnavailable, OSError) as exc:
                logger.debug("store check skipped: %s", getattr(exc, "message", exc))
                return
            self._seen_version = _version(stored)
            token = self._adopt(stored)
            if token is not None and self._fresh(token) and token != self._token:
                self._set_token(token)
        finally:
            self._lock.release()

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

    def _adopt(self, stored: LoginRecord) -> AccessToken | None:
        """Take the store's credentials if they are ours; return its access token."""
        if not self.owns(stored):
            return None
        self.client_id = stored.get("clientId") or self.client_id
        self._client_secret = stored.get("clientSecret") or self._client_secret
        self._refresh_token = stored["refreshToken"]
        if not self._endpoint_from_env and stored.get("tokenEndpoint"):
            self.token_endpoint = stored["tokenEndpoint"]
        self.missing = ""
        return stored_token(stored)

    def _take_stored(self, stored: LoginRecord, stale: str | None) -> AccessToken | None:
        token = self._adopt(stored)
        if token is not None and token.token != stale and self._fresh(token):
            self._set_token(token)
            return token
        return None

    def _load(self) -> LoginRecord:
        stored = self.store.load(self.account)
        self._seen_version = self._expected = _version(stored)
        self._next_check = self._monotonic() + self.RECHECK_INTERVAL
        return stored

    def _renew(self, stale: str | None) -> AccessToken:
        """A fresh token from the store if another process has one, else a refresh. In-process
        lock held."""
        token = self._take_stored(self._load(), stale)  # cheap first look, no lock
        if token is not None:
            self._outcome("shared", 0.0)
            return token
        lock = self.store.lock(self.account)
        waited = self._monotonic()
        try:
            lock.acquire()
        except LockTimeout:
            self._outcome("lock_timeout", self._monotonic() - waited)
            raise GatewayTimeout("another amq process is still refreshing the Amazon Q access "
                                 f"token ({lock.description})") from None
        except StoreUnavailable:
            self._outcome("store_unavailable", self._monotonic() - waited)
            raise
        except OSError as exc:
            logger.error("cannot take the %s (%s): refreshes are not serialised across "
                         "processes", lock.description, exc.strerror or exc)
            lock = None
        lock_wait = self._monotonic() - waited
        outcome = "failed"
        try:
            stored = self._load()
            token = self._take_stored(stored, stale)  # another process refreshed meanwhile
            if token is not None:
                outcome = "shared"
                return token
            token = self._refresh(stored)
            outcome = "refreshed"
            return token
        except RefreshRejected:
            outcome = "rejected"
            raise
        except StoreUnavailable:
            outcome = "store_unavailable"
            raise
        finally:
            if lock is not None:
                try:
                    lock.release()
                except (StoreUnavailable, OSError) as exc:  # expired or unreachable: it frees itself
                    logger.warning("could not release the %s (%s); it expires by itself",
                                   lock.description, getattr(exc, "message", exc))
            self._outcome(outcome, lock_wait)

    def _outcome(self, outcome: str, lock_wait: float) -> None:
        """A refresh attempt ended: "refreshed", "shared" (another process had refreshed),
        "rejected", "failed", "lock_timeout" or "store_unavailable"."""
        logger.debug("token refresh outcome=%s lock_wait=%.3fs account=%s", outcome, lock_wait,
                     self.account)
        if self._on_refresh is not None:
            self._on_refresh(outcome, lock_wait)

    def _record(self, stored: LoginRecord) -> LoginRecord:
        """What the store will hold for this login: its current contents if they are ours."""
        if self.owns(stored):
            record: LoginRecord = dict(stored)  # type: ignore[assignment]
        else:
            record = {"seed": self._env_seed, "source": self.source or "environment"}
        record.pop("version", None)
        record.update(clientId=self.client_id, clientSecret=self._client_secret,
                      tokenEndpoint=self.token_endpoint, refreshToken=self._refresh_token)
        return record

    def _refresh(self, stored: LoginRecord) -> AccessToken:
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

    def _create_token(self, record: LoginRecord, sent: str, interrupted: float | None,
                      write_ahead: bool) -> AccessToken:
        """CreateToken with grantType refresh_token; `record` is what the store holds for this
        login, `sent` the refresh token to send, `write_ahead` whether the store may be written
        before the answer is known."""
        # Write-ahead: once the request leaves, the service may rotate `sent` away.
        if write_ahead:
            try:
                self._save(dict(record, refreshStartedAt=self._clock()))
            except StaleWrite:
                raise StoreUnavailable("the login in the credential store changed during the "
                                       "refresh; try again") from None
        started = self._clock()
        try:
            data = refresh_grant(self._session, self.token_endpoint, client_id=self.client_id,
                                 client_secret=self._client_secret, refresh_token=sent,
                                 timeout=self._timeout, interrupted_at=interrupted)
        except ProxyError as exc:
            # A definite answer: nothing was issued, so only an earlier interruption stays marked.
            if write_ahead and getattr(exc, "answered", False):
                with contextlib.suppress(StaleWrite, StoreUnavailable):
                    self._save(dict(record, refreshStartedAt=interrupted) if interrupted else record)
            raise
        rotated = data.get("refreshToken") if isinstance(data.get("refreshToken"), str) else ""
        try:
            token = AccessToken(str(data["accessToken"]), started + float(data["expiresIn"]), started)
        except (KeyError, TypeError, ValueError):
            token = None
        # Store the answer before anything else: until it is stored, a kill loses `rotated`.
        new: LoginRecord = dict(record, refreshToken=rotated or sent)  # type: ignore[assignment]
        if rotated and rotated != sent:
            new["previousRefreshToken"] = sent
        if token is not None:
            new.update(accessToken=token.token, expiresAt=token.expires_at, obtainedAt=started)
        else:
            new["refreshStartedAt"] = started  # the service may have rotated without telling us
        self._store_answer(new, started, sent)
        self._refresh_token = new["refreshToken"]
        if token is None:
            raise UpstreamFailure("the Amazon Q token service sent an unreadable answer")
        self._set_token(token)
        self.last_refresh = started
        logger.info("access token refreshed; valid for %ds%s", int(token.expires_at - started),
                    ", refresh token rotated" if rotated and rotated != sent else "")
        return token

    def _store_answer(self, new: LoginRecord, started: float, sent: str) -> None:
        """Write CreateToken's answer; if that is impossible, say the refresh token is lost.

        A refused (fenced) write is retried only while the store still holds the refresh token
        this refresh sent, or ours: then nothing newer is there (someone merely cleared a
        marker). Any other login there is newer than ours and stays.
        """
        for _ in range(3):
            try:
                self._save(new)
                return
            except StaleWrite as exc:
                reason = (f"the record changed meanwhile (version {exc.current}, this writer read "
                          f"{exc.expected})")
            except StoreUnavailable as exc:
                reason = exc.message
                break
            try:
                current = self._load()
            except StoreUnavailable as exc:
                reason = exc.message
                break
            if current.get("refreshToken") not in (sent, new.get("refreshToken")):
                reason += " and holds another login"
                break
        logger.error("the refresh token issued at %s for account %s could not be stored (%s): it is "
                     "lost when this process stops; the store keeps what it holds",
                     iso_time(started), self.account, reason)

    def _store(self) -> None:
        """Write the in-memory login and token to the store (under its lock)."""
        with self.store.lock(self.account):
            record = self._record(self.store.load(self.account))
            if self._token is not None:
                record.update(accessToken=self._token.token, expiresAt=self._token.expires_at,
                              obtainedAt=self._token.obtained_at)
            self.store.save(record, self.account)

    def _save(self, data: LoginRecord) -> None:
        """A fenced write. StaleWrite and StoreUnavailable go to the caller; a file that
        cannot be written is logged (the token lives on in this process only)."""
        try:
            self._expected = self._seen_version = self.store.save(
                data, self.account, expected_version=self._expected)
        except OSError as exc:
            # The new refresh token lives on in this process only; other workers and the next
            # start will be refused, so say so loudly.
            logger.error("cannot write the credential store %s (%s): a rotated refresh token will be "
                         "lost when amq stops", self.store.location, exc.strerror or exc)
