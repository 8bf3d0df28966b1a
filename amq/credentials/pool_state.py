"""The account pool's shared state: health, usage counters, streams in flight, per store backend.

Every worker keeps the pool's state in memory and calls `sync` at most about once a second:
one exchange with the store that adds the worker's counters since the last call, publishes its
streams in flight, and reads every account's health, in-flight total and login identity back.
A change of health (a cooldown, a suspension) is applied at once with `change_health`, where
health is stored and against what is stored now (`apply_change` holds the rules), so other
workers and instances stop choosing that account at their next sync and no worker's stale
copy undoes another's change.

* File store (one machine): one JSON file beside the token cache, `<stem>-pool.json`, read and
  replaced under an flock; every worker of the machine shares it.
* Redis (every instance): `health:{account}` hashes, `usage:{account}:{YYYY-MM}` and
  `usage:{account}:{YYYY-MM-DD}` hashes (HINCRBY / HINCRBYFLOAT), `activity:{minute}` hashes,
  and `inflight:{account}` hashes (worker -> "count expiry"): a worker that dies stops renewing
  its entry, which then no longer counts and is deleted by the next sync that sees it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from ..errors import StoreUnavailable
from .store import FileLock, FileStore

USAGE_FIELDS = ("requests", "errors", "input_tokens", "output_tokens", "credits")
HELD = ("disabled", "suspended", "invalid")  # states only an operator or a new login ends
HEALTH_RETRIES = 20  # optimistic Redis transactions tried before giving up on a busy key
INFLIGHT_TTL = 10.0  # seconds a worker's published in-flight count stays valid without renewal
ACTIVITY_KEEP = 3 * 3600  # seconds of per-minute activity kept
DAY_KEEP = 3 * 86400
MONTH_KEEP = 70 * 86400


def month_of(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m")


def day_of(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")


@dataclass
class Deltas:
    """What a worker adds to the shared counters between two syncs (taken and reset at once)."""

    usage: dict[str, dict[str, float]] = field(default_factory=dict)  # account -> field -> amount
    activity: dict[int, list[int]] = field(default_factory=dict)  # minute start -> [requests, errors]

    def add(self, account: str, now: float, **amounts: float) -> None:
        counters = self.usage.setdefault(account, {})
        for name, amount in amounts.items():
            if amount:
                counters[name] = counters.get(name, 0) + amount
        minute = int(now // 60 * 60)
        slot = self.activity.setdefault(minute, [0, 0])
        slot[0] += int(amounts.get("requests", 0))
        slot[1] += int(amounts.get("errors", 0))

    def __bool__(self) -> bool:
        return bool(self.usage or self.activity)


@dataclass(frozen=True)
class HealthChange:
    """One change to an account's health, applied against the stored record by `apply_change`.

    kind: "set" (an operator's disable/enable), "rest" (cooling or exhausted until `until`),
    "out" (suspended or invalid: no end by itself), "failure" (a 5xx or connection error: a rest
    once `threshold` come in a row), "success" (the failures in a row start again), "reset"
    (GetUsageLimits' reset date for an exhausted account).
    """

    kind: str
    state: str = ""
    until: float | None = None
    reason: str = ""
    last_error: str = ""
    login: str = ""  # the login identity the worker knows (login_identity), "" if unknown
    threshold: int = 1


def apply_change(current: dict, change: HealthChange) -> dict:
    """The stored health after `change`. The one place of the rules: a rest never replaces a
    state only an operator or a new login ends, nor shortens a later rest; success touches only
    the failures count."""
    health = dict(current)
    kind = change.kind
    if kind == "success":
        health["failures"] = 0
        return health
    if kind == "set":
        health.update(state=change.state, until=change.until, reason=change.reason, failures=0)
        health.pop("login", None)
        return health
    if kind == "reset":
        if health.get("state") == "exhausted":
            health["until"] = change.until
        return health
    if change.last_error:
        health["last_error"] = change.last_error
    if kind == "failure":
        failures = int(health.get("failures") or 0) + 1
        if failures < change.threshold:
            health["failures"] = failures
            return health
        kind = "rest"
    health["failures"] = 0
    state = "active" if marked_for_an_older_login(health, change.login) else health.get("state") or "active"
    if kind == "out":
        if state != "disabled":  # the operator's word stands
            health.update(state=change.state, until=None, reason=change.reason, login=change.login)
        return health
    if state in HELD:
        return health
    until = health.get("until")
    if state in ("cooling", "exhausted") and isinstance(until, (int, float)) and \
            change.until is not None and until > change.until:
        return health  # a longer rest is under way
    health.update(state=change.state, until=change.until, reason=change.reason)
    return health


def marked_for_an_older_login(health: dict, login: str | None) -> bool:
    """An `invalid` mark made under a login that has since been replaced: the account is active
    again (a new login is the end of `invalid`). `login`: the identity of the stored login."""
    return health.get("state") == "invalid" and bool(login) and health.get("login") != login


def login_identity(record: dict) -> str:
    """What only a new login changes (a refresh that rotates the token is as good as one):
    a hash of the client id and refresh token, never the secret itself. "" without a login."""
    refresh_token = record.get("refreshToken")
    if not isinstance(refresh_token, str) or not refresh_token:
        return ""
    text = f"{record.get('clientId') or ''}\n{refresh_token}"
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:24]


@dataclass
class Snapshot:
    """What a sync reads back."""

    accounts: list[str]  # names that hold a login in the store
    health: dict[str, dict]  # account -> stored health (state, until, reason, failures, ...)
    inflight: dict[str, int]  # account -> streams in flight on every worker and instance
    logins: dict[str, str]  # account -> login identity (login_identity)


class PoolState(Protocol):
    def sync(self, names: list[str], deltas: Deltas, inflight: dict[str, int], worker: str,
             now: float) -> Snapshot: ...

    def change_health(self, account: str, change: HealthChange) -> dict:
        """Apply `change` atomically to the stored health; returns the health now stored."""

    def forget(self, account: str) -> None: ...

    def usage(self, account: str, now: float) -> dict[str, float]:
        """requests_today, errors_today and this month's USAGE_FIELDS."""

    def activity(self, minutes: int, now: float) -> list[tuple[int, int, int]]: ...


def _usage_view(month: dict, today: dict) -> dict[str, float]:
    out = {f"{name}_month": float(month.get(name, 0) or 0) for name in USAGE_FIELDS}
    out["requests_today"] = int(float(today.get("requests", 0) or 0))
    out["errors_today"] = int(float(today.get("errors", 0) or 0))
    return out


def _activity_view(table: dict, minutes: int, now: float) -> list[tuple[int, int, int]]:
    last = int(now // 60 * 60)
    out = []
    for start in range(last - (minutes - 1) * 60, last + 60, 60):
        requests, errors = table.get(start, (0, 0))
        out.append((start, int(requests), int(errors)))
    return out


class FilePoolState:
    """The pool's state in one JSON file beside the token cache (one machine)."""

    def __init__(self, store: FileStore):
        self.store = store
        stem, _ = os.path.splitext(store.path)
        self.path = stem + "-pool.json"  # not `<stem>.NAME.json`: that is an account
        self._lock_path = self.path + ".lock"

    def _read(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, data: dict) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".pool.tmp-", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle)
            os.replace(tmp, self.path)  # counters, not logins: no fsync on this path
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _update(self, change) -> dict:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), mode=0o700, exist_ok=True)
        with FileLock(self._lock_path, timeout=5.0):
            data = self._read()
            change(data)
            self._write(data)
        return data

    def sync(self, names, deltas, inflight, worker, now) -> Snapshot:
        def change(data: dict) -> None:
            usage = data.setdefault("usage", {})
            month, day = month_of(now), day_of(now)
            for account, counters in deltas.usage.items():
                mine = usage.setdefault(account, {})
                for period in (month, day):
                    slot = mine.setdefault(period, {})
                    for name, amount in counters.items():
                        if period == day and name not in ("requests", "errors"):
                            continue
                        slot[name] = slot.get(name, 0) + amount
                for period in list(mine):  # keep two months and three days
                    if len(period) == 10 and period < day_of(now - DAY_KEEP) or \
                            len(period) == 7 and period < month_of(now - MONTH_KEEP):
                        del mine[period]
            activity = data.setdefault("activity", {})
            for minute, (requests, errors) in deltas.activity.items():
                slot = activity.setdefault(str(minute), [0, 0])
                slot[0] += requests
                slot[1] += errors
            for minute in [m for m in activity if int(m) < now - ACTIVITY_KEEP]:
                del activity[minute]
            flights = data.setdefault("inflight", {})
            for account in names:
                entry = flights.setdefault(account, {})
                entry[worker] = [inflight.get(account, 0), now + INFLIGHT_TTL]
                for other in [w for w, (_, expires) in entry.items() if expires < now]:
                    del entry[other]

        data = self._update(change)
        totals = {account: sum(count for count, expires in data["inflight"].get(account, {}).values()
                               if expires >= now) for account in names}
        accounts = self.store.accounts()
        return Snapshot(accounts=accounts, health=dict(data.get("health", {})), inflight=totals,
                        logins={account: login_identity(self.store.load(account)) for account in accounts})

    def change_health(self, account: str, change: HealthChange) -> dict:
        def apply(data: dict) -> None:
            table = data.setdefault("health", {})
            table[account] = apply_change(table.get(account) or {}, change)

        return dict(self._update(apply)["health"][account])

    def forget(self, account: str) -> None:
        def change(data: dict) -> None:
            for part in ("health", "usage", "inflight"):
                data.get(part, {}).pop(account, None)
        self._update(change)

    def usage(self, account: str, now: float) -> dict[str, float]:
        mine = self._read().get("usage", {}).get(account, {})
        return _usage_view(mine.get(month_of(now), {}), mine.get(day_of(now), {}))

    def activity(self, minutes: int, now: float) -> list[tuple[int, int, int]]:
        table = {int(minute): slot for minute, slot in self._read().get("activity", {}).items()}
        return _activity_view(table, minutes, now)


class RedisPoolState:
    """The pool's state in Redis (every instance); one pipelined round trip per sync."""

    def __init__(self, store):
        import redis  # only when Redis is used

        self._redis_error = redis.RedisError
        self._watch_error = redis.WatchError
        self.store = store
        self.client = store.client

    def _key(self, *parts: str) -> str:
        return self.store.prefix + ":".join(parts)

    def _unavailable(self, exc: Exception) -> StoreUnavailable:
        return StoreUnavailable(f"the account pool's state (Redis at {self.store.location}) is "
                                f"unreachable ({type(exc).__name__})")

    def sync(self, names, deltas, inflight, worker, now) -> Snapshot:
        month, day = month_of(now), day_of(now)
        pipe = self.client.pipeline(transaction=False)
        for account, counters in deltas.usage.items():
            for period, keep in ((month, MONTH_KEEP), (day, DAY_KEEP)):
                key = self._key("usage", account, period)
                for name, amount in counters.items():
                    if period == day and name not in ("requests", "errors"):
                        continue
                    if isinstance(amount, float) and not amount.is_integer():
                        pipe.hincrbyfloat(key, name, amount)
                    else:
                        pipe.hincrby(key, name, int(amount))
                pipe.expire(key, keep)
        for minute, (requests, errors) in deltas.activity.items():
            key = self._key("activity", str(minute))
            pipe.hincrby(key, "requests", requests)
            pipe.hincrby(key, "errors", errors)
            pipe.expire(key, ACTIVITY_KEEP)
        for account in names:
            pipe.hset(self._key("inflight", account), worker, f"{inflight.get(account, 0)} {now + INFLIGHT_TTL}")
        pipe.smembers(self._key("accounts"))
        for account in names:
            pipe.hgetall(self._key("health", account))
            pipe.hgetall(self._key("inflight", account))
            pipe.hget(self._key("login", account), "record")
        try:
            results = pipe.execute()
        except self._redis_error as exc:
            raise self._unavailable(exc) from None
        tail = results[len(results) - 1 - 3 * len(names):]
        accounts = sorted(_text(name) for name in tail[0])
        health, totals, logins, stale = {}, {}, {}, []
        for index, account in enumerate(names):
            raw_health, raw_flights, login = tail[1 + 3 * index: 4 + 3 * index]
            if raw_health:
                health[account] = _health_from_hash(raw_health)
            total = 0
            for owner, value in raw_flights.items():
                count, expires = _text(value).split()
                if float(expires) >= now:
                    total += int(count)
                else:
                    stale.append((account, owner))
            totals[account] = total
            logins[account] = _identity_of(login)
        if stale:
            with contextlib.suppress(self._redis_error):
                pipe = self.client.pipeline(transaction=False)
                for account, owner in stale:
                    pipe.hdel(self._key("inflight", account), owner)
                pipe.execute()
        return Snapshot(accounts=accounts, health=health, inflight=totals, logins=logins)

    def change_health(self, account: str, change: HealthChange) -> dict:
        """WATCH the health hash, apply the rules to what it holds, write it in MULTI/EXEC: a
        change by anyone in between makes EXEC fail and the change is applied again."""
        key = self._key("health", account)
        try:
            with self.client.pipeline(transaction=True) as pipe:
                for _ in range(HEALTH_RETRIES):
                    try:
                        pipe.watch(key)
                        health = apply_change(_health_from_hash(pipe.hgetall(key)), change)
                        pipe.multi()
                        pipe.delete(key)
                        if health:
                            pipe.hset(key, mapping={name: json.dumps(value) for name, value in health.items()})
                        pipe.execute()
                        return health
                    except self._watch_error:
                        continue
        except self._redis_error as exc:
            raise self._unavailable(exc) from None
        raise StoreUnavailable(f"account {account}: its health changed too often to be written; try again")

    def forget(self, account: str) -> None:
        try:
            self.client.delete(self._key("health", account), self._key("inflight", account))
        except self._redis_error as exc:
            raise self._unavailable(exc) from None

    def usage(self, account: str, now: float) -> dict[str, float]:
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.hgetall(self._key("usage", account, month_of(now)))
            pipe.hgetall(self._key("usage", account, day_of(now)))
            month, today = pipe.execute()
        except self._redis_error as exc:
            raise self._unavailable(exc) from None
        return _usage_view({_text(k): _text(v) for k, v in month.items()},
                           {_text(k): _text(v) for k, v in today.items()})

    def activity(self, minutes: int, now: float) -> list[tuple[int, int, int]]:
        starts = [start for start, _, _ in _activity_view({}, minutes, now)]
        try:
            pipe = self.client.pipeline(transaction=False)
            for start in starts:
                pipe.hmget(self._key("activity", str(start)), ["requests", "errors"])
            rows = pipe.execute()
        except self._redis_error as exc:
            raise self._unavailable(exc) from None
        return [(start, int(requests or 0), int(errors or 0))
                for start, (requests, errors) in zip(starts, rows, strict=True)]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _identity_of(raw) -> str:
    """login_identity of a stored login record (the JSON Redis keeps)."""
    if not raw:
        return ""
    try:
        record = json.loads(_text(raw))
    except ValueError:
        return ""
    return login_identity(record) if isinstance(record, dict) else ""


def _health_from_hash(raw: dict) -> dict:
    out = {}
    for name, value in raw.items():
        with contextlib.suppress(ValueError):
            out[_text(name)] = json.loads(_text(value))
    return out


def open_pool_state(store) -> PoolState:
    """The pool state that lives where the store's logins live."""
    if store.kind == "redis":
        return RedisPoolState(store)
    return FilePoolState(store)
