"""The Redis backend of the credential store: logins shared by every instance that uses one Redis.

Keys (all under REDIS_KEY_PREFIX, default `amq:`; account names are plain, never secrets):

| key               | type   | holds                                                        |
|-------------------|--------|--------------------------------------------------------------|
| `login:{account}` | hash   | `record` (the login record as JSON), `version` (an integer)  |
| `lock:{account}`  | string | the refresh lock: its holder's random token, with a TTL      |
| `accounts`        | set    | names of the accounts that have a record                     |

The lock is redis-py's `redis.lock.Lock` (SET NX PX with a random token; released by a Lua
compare-and-delete, so only its holder frees it; a killed holder's lock expires with its TTL;
waiting sleeps with time.sleep, which gevent makes cooperative). A lock alone cannot stop a
holder that paused past its TTL, so every write is fenced: one Lua script writes the record
only if its version is still the one the writer read, and bumps it in the same step.

Every Redis failure becomes StoreUnavailable (HTTP 503 for a request that needs a refresh).
A Redis that stops answering costs one short socket timeout; then a breaker in the client
(FailFastRedis, which every user of `store.client` goes through) makes calls fail at once with
redis.ConnectionError for a growing back-off, so the request path never waits on it.
"""
from __future__ import annotations

import json
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.lock import Lock
from redis.retry import Retry

from ..config import ConfigError, Settings
from ..errors import StoreUnavailable
from .record import DEFAULT_ACCOUNT, LoginRecord
from .store import LockTimeout, StaleWrite, check_account, lock_ttl

logger = logging.getLogger(__name__)

# A Redis command takes about a millisecond; a Redis that does not answer must not hold a request
# for seconds. A call fails after SOCKET_TIMEOUT without an answer (a timeout is not retried; a
# dropped connection is retried once, at once), and then the breaker makes the calls that follow
# fail at once for BREAKER_FIRST s, doubling per failed trial up to BREAKER_MOST s.
SOCKET_TIMEOUT = 0.5
CONNECT_TIMEOUT = 1.0
BREAKER_FIRST = 1.0
BREAKER_MOST = 30.0
BREAKER_SLOW = 0.2  # only failures that cost this long open it: a refused connection costs nothing

# KEYS: login hash, accounts set. ARGV: record JSON, expected version ("" = any), account name.
# Returns the new version, or -1 - current version when the fence refuses the write.
_SAVE = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if ARGV[2] ~= '' and current ~= tonumber(ARGV[2]) then
  return -1 - current
end
redis.call('HSET', KEYS[1], 'record', ARGV[1], 'version', current + 1)
redis.call('SADD', KEYS[2], ARGV[3])
return current + 1
"""


_QUERY_PASSWORD = re.compile(r"((?:^|[&;])password=)[^&;]*", re.IGNORECASE)


def redact(url: str) -> str:
    """The URL without its password (safe for logs and `status`): the one after the user name
    and a `password=` in the query string, which redis-py accepts too."""
    parts = urlsplit(url)
    query = _QUERY_PASSWORD.sub(r"\1***", parts.query)
    netloc = parts.netloc
    if parts.password is not None:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        netloc = (f"{parts.username}:***@" if parts.username else ":***@") + host
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _unavailable(exc: Exception, location: str) -> StoreUnavailable:
    return StoreUnavailable(f"the credential store (Redis at {location}) is unreachable "
                            f"({type(exc).__name__}); try again when it is back")


class Breaker:
    """Fail fast while Redis does not answer.

    After a call that failed slowly (a timeout), calls fail at once with redis.ConnectionError
    for a back-off that starts at `first` s and doubles up to `most` s; then one call goes
    through as a trial while the others still fail at once. Its success closes the breaker.
    Failures that cost nothing (a refused connection) do not open it: failing fast would save
    nothing and only delay the recovery."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, first: float = BREAKER_FIRST,
                 most: float = BREAKER_MOST, slow: float = BREAKER_SLOW):
        self.clock, self.first, self.most, self.slow = clock, first, most, slow
        self._mutex = threading.Lock()  # gevent patches it; held only around the bookkeeping
        self._failures = 0
        self._open_until = 0.0
        self._trial = False

    def call(self, function: Callable, *args, **kwargs):
        with self._mutex:
            now = self.clock()
            if self._failures and (now < self._open_until or self._trial):
                raise redis.ConnectionError(
                    f"Redis did not answer; failing fast for {max(0.0, self._open_until - now):.1f}s more")
            trial = self._trial = bool(self._failures)
        started = self.clock()
        try:
            result = function(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError):
            with self._mutex:
                if trial:
                    self._trial = False
                if trial or self.clock() - started >= self.slow:
                    self._failures += 1
                    delay = min(self.most, self.first * 2 ** (self._failures - 1))
                    self._open_until = self.clock() + delay
                    logger.warning("Redis did not answer in time; its calls fail at once for %.0fs", delay)
            raise
        except BaseException:
            if trial:
                with self._mutex:
                    self._trial = False
            raise
        if self._failures:
            with self._mutex:
                self._failures, self._trial = 0, False
            logger.info("Redis answers again")
        return result


class FailFastPipeline(Pipeline):
    """redis-py's pipeline whose round trip (execute) goes through the client's breaker.
    (WATCH, sent at once, does not: amq uses no WATCH; MULTI/EXEC pipelines and Lua instead.)"""

    breaker: Breaker

    def execute(self, raise_on_error: bool = True):
        if not self.command_stack and not self.watching:
            return super().execute(raise_on_error)
        return self.breaker.call(super().execute, raise_on_error)


class FailFastRedis(redis.Redis):
    """redis.Redis with a Breaker in front of every round trip: commands, scripts, locks and
    pipelines all come through execute_command or the pipeline's execute."""

    def __init__(self, *args, breaker: Breaker | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.breaker = breaker or Breaker()

    def execute_command(self, *args, **options):
        return self.breaker.call(super().execute_command, *args, **options)

    def pipeline(self, transaction: bool = True, shard_hint=None) -> FailFastPipeline:
        pipe = FailFastPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.breaker = self.breaker
        return pipe


class RedisLock:
    """The refresh lock of one account; redis.lock.Lock with our errors."""

    def __init__(self, store: RedisStore, account: str):
        self._store = store
        self.name = store.key("lock", account)
        self.description = f"Redis lock {self.name}"
        self._lock = Lock(store.client, self.name, timeout=store.lock_ttl, sleep=0.02,
                          blocking_timeout=store.lock_wait, thread_local=False)

    def acquire(self) -> None:
        try:
            taken = self._lock.acquire()
        except redis.RedisError as exc:
            raise _unavailable(exc, self._store.location) from None
        if not taken:
            raise LockTimeout(f"{self.name} stayed taken for {self._store.lock_wait:.0f}s")

    def release(self) -> None:
        try:
            self._lock.release()
        except redis.exceptions.LockNotOwnedError:
            logger.warning("the %s expired before its holder released it (the refresh took "
                           "longer than its TTL)", self.description)
        except redis.RedisError as exc:
            raise _unavailable(exc, self._store.location) from None

    def __enter__(self) -> RedisLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class RedisStore:
    """Logins in Redis hashes; the same interface as amq.credentials.store.FileStore."""

    kind = "redis"

    def __init__(self, client: redis.Redis, *, prefix: str = "amq:", location: str = "redis",
                 lock_ttl: float = 90.0, lock_wait: float | None = None):
        self.client = client
        self.prefix = prefix
        self.location = location
        self.lock_ttl = lock_ttl
        # A waiter outlasts a holder that died (its lock expires after lock_ttl).
        self.lock_wait = lock_wait if lock_wait is not None else lock_ttl + 10.0
        self._save = client.register_script(_SAVE)

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisStore:
        return cls(connect(settings), prefix=settings.redis_key_prefix,
                   location=redact(settings.redis_url), lock_ttl=lock_ttl(settings))

    def key(self, kind: str, account: str | None = None) -> str:
        return self.prefix + kind + (f":{check_account(account)}" if account is not None else "")

    # ------------------------------------------------------------------ the interface

    def load(self, account: str = DEFAULT_ACCOUNT) -> LoginRecord:
        try:
            raw, version = self.client.hmget(self.key("login", account), ["record", "version"])
        except redis.RedisError as exc:
            raise _unavailable(exc, self.location) from None
        if raw is None:
            return {}
        try:
            record = json.loads(raw)
        except ValueError:
            logger.warning("the login of account %s in Redis is unreadable; ignoring it", account)
            return {}
        if not isinstance(record, dict):
            return {}
        record["version"] = int(version or 0)
        return record

    def version(self, account: str = DEFAULT_ACCOUNT) -> int:
        try:
            return int(self.client.hget(self.key("login", account), "version") or 0)
        except redis.RedisError as exc:
            raise _unavailable(exc, self.location) from None

    def save(self, record: LoginRecord, account: str = DEFAULT_ACCOUNT, *,
             expected_version: int | None = None) -> int:
        data = {key: value for key, value in record.items() if key != "version"}
        expected = "" if expected_version is None else str(int(expected_version))
        try:
            result = int(self._save(keys=[self.key("login", account), self.key("accounts")],
                                    args=[json.dumps(data), expected, account]))
        except redis.RedisError as exc:
            raise _unavailable(exc, self.location) from None
        if result < 0:
            raise StaleWrite(int(expected_version or 0), -1 - result)
        return result

    def replace_login(self, record: LoginRecord, account: str = DEFAULT_ACCOUNT) -> int:
        with self.lock(account):
            return self.save(record, account)

    def lock(self, account: str = DEFAULT_ACCOUNT) -> RedisLock:
        return RedisLock(self, account)

    def remove(self, account: str) -> None:
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(self.key("login", account))
            pipe.srem(self.key("accounts"), account)
            pipe.execute()
        except redis.RedisError as exc:
            raise _unavailable(exc, self.location) from None

    def accounts(self) -> list[str]:
        try:
            names = self.client.smembers(self.key("accounts"))
        except redis.RedisError as exc:
            raise _unavailable(exc, self.location) from None
        return sorted(name.decode() if isinstance(name, bytes) else name for name in names)

    def describe(self) -> dict:
        """Backend, lock state and persistence as the server reports them; no secret."""
        facts = {"backend": "redis", "location": self.location, "key prefix": self.prefix}
        try:
            ttl = self.client.pttl(self.key("lock", DEFAULT_ACCOUNT))
            facts["lock"] = (f"{self.key('lock', DEFAULT_ACCOUNT)}: taken, expires in {ttl / 1000:.1f}s"
                             if ttl and ttl > 0 else f"{self.key('lock', DEFAULT_ACCOUNT)}: free")
            facts["persistence"], facts["durable"] = self.persistence()
        except redis.RedisError as exc:
            raise _unavailable(exc, self.location) from None
        return facts

    # ------------------------------------------------------------------ start-up checks

    def check(self) -> None:
        """Fail at start, in one line naming REDIS_URL, when the server cannot be used.

        :raises ConfigError:
        """
        try:
            self.client.ping()
            self.version()
        except redis.AuthenticationError:
            raise ConfigError(f"REDIS_URL: the Redis server at {self.location} refused the "
                              "user name or password") from None
        except redis.ResponseError as exc:
            text = str(exc)
            if "DB index" in text or "invalid DB" in text.lower():
                raise ConfigError(f"REDIS_URL: the Redis server at {self.location} has no such "
                                  "database (the number after the last /)") from None
            if "NOAUTH" in text or "WRONGPASS" in text:
                raise ConfigError(f"REDIS_URL: the Redis server at {self.location} wants a "
                                  "password (redis://:PASSWORD@host:port/0)") from None
            raise ConfigError(f"REDIS_URL: the Redis server at {self.location} refused amq: "
                              f"{text[:200]}") from None
        except redis.RedisError as exc:
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise ConfigError(f"REDIS_URL: cannot reach Redis at {self.location} ({reason})") from None

    def persistence(self) -> tuple[str, bool]:
        """What the server says about keeping data across its restarts: (text, durable).

        INFO persistence always answers; CONFIG GET (the RDB save schedule) is refused by many
        managed services, so its answer is used only when given.
        """
        info = self.client.info("persistence")
        if int(info.get("aof_enabled") or 0):
            return "append-only file (AOF) on", True
        try:
            schedule = self.client.config_get("save").get("save", "")
        except redis.ResponseError:
            schedule = None
        if schedule:
            return f"RDB snapshots (save {schedule})", True
        if schedule is None:
            if int(info.get("rdb_saves") or 0) or int(info.get("rdb_bgsave_in_progress") or 0):
                return "RDB snapshots seen (CONFIG refused; schedule unknown)", True
            return "none reported (no AOF; CONFIG refused, no snapshot taken yet)", False
        return "none (no AOF, no RDB snapshots)", False


def connect(settings: Settings) -> FailFastRedis:
    """A client for REDIS_URL with short timeouts, one immediate retry of a dropped connection
    (not of a timeout) and the fail-fast breaker."""
    options: dict = {"socket_timeout": SOCKET_TIMEOUT, "socket_connect_timeout": CONNECT_TIMEOUT,
                     "retry": Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
                     "health_check_interval": 30}
    if settings.redis_url.startswith("rediss://") and settings.redis_tls_verify == "none":
        options.update(ssl_cert_reqs=ssl.CERT_NONE, ssl_check_hostname=False)
    return FailFastRedis.from_url(settings.redis_url, **options)


def warn_if_volatile(store: RedisStore) -> None:
    """One log line at start: whether this Redis keeps the logins across its own restarts."""
    try:
        text, durable = store.persistence()
    except redis.RedisError:
        return
    if durable:
        logger.info("credential store: Redis at %s (persistence: %s)", store.location, text)
    else:
        logger.warning("credential store: Redis at %s reports no persistence (%s): a restart of "
                       "Redis loses the login; turn on AOF or RDB, or choose a plan that keeps data",
                       store.location, text)
