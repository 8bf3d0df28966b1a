"""Who may open the admin page: the key, the signed session cookie, CSRF tokens, the slowdown.

The session is Flask's signed cookie (ADMIN_SECRET signs it; it holds only a flag, the login
time, an HMAC of the key it was made under (so a new ADMIN_KEY revokes it) and the CSRF token,
never the key). Cookies are HttpOnly and SameSite=Strict, and Secure
when the request came over https: directly, or through a router that says so in
X-Forwarded-Proto (trusted: a client that forges it only gets a cookie its browser keeps off
plain http).
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable

from flask import Request, request, session
from flask.sessions import SecureCookieSessionInterface

logger = logging.getLogger(__name__)

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"


def key_matches(presented: str, key: str) -> bool:
    """Constant-time comparison (of the UTF-8 bytes: compare_digest refuses non-ASCII str)."""
    return hmac.compare_digest(presented.encode(), key.encode())


def key_mark(key: str, secret: str) -> str:
    """What the session holds of the key it was made under: an HMAC keyed with ADMIN_SECRET
    (the key itself never goes into the cookie). A new ADMIN_KEY makes every older session's
    mark wrong, so changing the key revokes them all."""
    return hmac.new(secret.encode(), b"amq admin key\0" + key.encode(), hashlib.sha256).hexdigest()


def signed_in(key: str, secret: str) -> bool:
    """Whether this request's session was made by a login with the current key."""
    mark = session.get("key")
    return bool(session.get("admin")) and isinstance(mark, str) and hmac.compare_digest(
        mark.encode(), key_mark(key, secret).encode())


def is_https(req: Request) -> bool:
    forwarded = req.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return req.is_secure or forwarded == "https"


class AdminSessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie session, Secure whenever the request came over https."""

    def get_cookie_secure(self, app) -> bool:
        return bool(app.config.get("SESSION_COOKIE_SECURE")) or is_https(request)


def csrf_token() -> str:
    """This session's CSRF token (made on first use); every form carries it."""
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(24)
    return token


def csrf_ok(req: Request) -> bool:
    expected = session.get("csrf")
    presented = req.form.get(CSRF_FIELD) or req.headers.get(CSRF_HEADER) or ""
    return bool(expected) and hmac.compare_digest(presented.encode(), str(expected).encode())


class LoginThrottle:
    """Slows down guessing: each login try from an address is counted before its key is
    compared (`attempt`, one atomic step), and the next try from that address is refused
    unanswered for `first` s, doubling per try up to `most` s; a success or `forget` quiet
    seconds clear the count. Checking and counting in one step means parallel tries cannot all
    pass while the wait is still 0: one key is compared per window. Kept per worker process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, first: float = 1.0,
                 most: float = 30.0, forget: float = 900.0, limit: int = 10000):
        self.clock, self.first, self.most, self.forget, self.limit = clock, first, most, forget, limit
        self._failures: dict[str, tuple[int, float]] = {}  # address -> (count, when the next try may come)
        self._lock = threading.Lock()

    def attempt(self, client: str) -> tuple[bool, float]:
        """(True, the wait this try imposes on the next) when `client` may try now: the try is
        counted already; (False, seconds left) when it must wait (not counted)."""
        with self._lock:
            now = self.clock()
            count, allowed = self._failures.get(client, (0, 0.0))
            if allowed > now:
                return False, allowed - now
            if now - allowed > self.forget:
                count = 0
            delay = min(self.most, self.first * 2 ** count)
            self._failures[client] = (count + 1, now + delay)
            if len(self._failures) > self.limit:  # an attacker with many addresses: drop the oldest
                stale = sorted(self._failures, key=lambda c: self._failures[c][1])[: self.limit // 2]
                for address in stale:
                    del self._failures[address]
            return True, delay

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)


# KEYS: the address's hash. ARGV: now, first, most, forget. The same rule as LoginThrottle.attempt
# in one atomic step; numbers go back as strings (Redis would truncate Lua numbers to integers).
_ATTEMPT = """
local now = tonumber(ARGV[1])
local allowed = tonumber(redis.call('HGET', KEYS[1], 'allowed') or '0')
if allowed > now then
  return {0, tostring(allowed - now)}
end
local count = tonumber(redis.call('HGET', KEYS[1], 'count') or '0')
if now - allowed > tonumber(ARGV[4]) then
  count = 0
end
local delay = math.min(tonumber(ARGV[3]), tonumber(ARGV[2]) * 2 ^ count)
redis.call('HSET', KEYS[1], 'count', count + 1, 'allowed', tostring(now + delay))
redis.call('EXPIRE', KEYS[1], math.ceil(delay + tonumber(ARGV[4])))
return {1, tostring(delay)}
"""


class RedisLoginThrottle:
    """LoginThrottle's rule kept in the Redis store by one Lua script, so every worker and
    instance counts the same tries (a hash per address, expiring after `forget` quiet seconds).
    When Redis does not answer, the process's own LoginThrottle takes over: logins stay
    possible, still slowed."""

    def __init__(self, client, prefix: str, clock: Callable[[], float] = time.time, first: float = 1.0,
                 most: float = 30.0, forget: float = 900.0):
        self.client, self.prefix, self.clock = client, prefix, clock
        self.first, self.most, self.forget = first, most, forget
        self.local = LoginThrottle(first=first, most=most, forget=forget)
        self._attempt = client.register_script(_ATTEMPT)

    def _key(self, client: str) -> str:
        return f"{self.prefix}login-failures:{client}"

    def attempt(self, client: str) -> tuple[bool, float]:
        try:
            allowed, delay = self._attempt(keys=[self._key(client)],
                                           args=[repr(self.clock()), self.first, self.most, self.forget])
        except Exception as exc:  # noqa: BLE001 - redis-py raises many kinds; fall back, say so
            logger.warning("admin page: login slowdown without Redis (%s)", type(exc).__name__)
            return self.local.attempt(client)
        return bool(int(allowed)), float(delay)

    def succeeded(self, client: str) -> None:
        self.local.succeeded(client)
        with contextlib.suppress(Exception):  # it expires by itself
            self.client.delete(self._key(client))
