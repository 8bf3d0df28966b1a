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
    """Slows down guessing: after each failed login from an address, the next try from it is
    refused unanswered for `first` s, doubling per failure up to `most` s; a success or `forget`
    quiet seconds clear the count. Kept per worker process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, first: float = 1.0,
                 most: float = 30.0, forget: float = 900.0, limit: int = 10000):
        self.clock, self.first, self.most, self.forget, self.limit = clock, first, most, forget, limit
        self._failures: dict[str, tuple[int, float]] = {}  # address -> (count, when the next try may come)

    def wait(self, client: str) -> float:
        """Seconds before `client` may try again (0: now)."""
        count, allowed = self._failures.get(client, (0, 0.0))
        return max(0.0, allowed - self.clock())

    def failed(self, client: str) -> float:
        now = self.clock()
        count, allowed = self._failures.get(client, (0, 0.0))
        if now - allowed > self.forget:
            count = 0
        delay = min(self.most, self.first * 2 ** count)
        self._failures[client] = (count + 1, now + delay)
        if len(self._failures) > self.limit:  # an attacker with many addresses: drop the oldest
            stale = sorted(self._failures, key=lambda c: self._failures[c][1])[: self.limit // 2]
            for address in stale:
                del self._failures[address]
        return delay

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)


class RedisLoginThrottle:
    """LoginThrottle's rule kept in the Redis store, so every worker and instance counts the
    same failures (a hash per address, expiring after `forget` quiet seconds). When Redis does
    not answer, the process's own LoginThrottle takes over: logins stay possible, still slowed."""

    def __init__(self, client, prefix: str, clock: Callable[[], float] = time.time, first: float = 1.0,
                 most: float = 30.0, forget: float = 900.0):
        self.client, self.prefix, self.clock = client, prefix, clock
        self.first, self.most, self.forget = first, most, forget
        self.local = LoginThrottle(first=first, most=most, forget=forget)

    def _key(self, client: str) -> str:
        return f"{self.prefix}login-failures:{client}"

    def wait(self, client: str) -> float:
        try:
            allowed = float(self.client.hget(self._key(client), "allowed") or 0)
        except Exception as exc:  # noqa: BLE001 - redis-py raises many kinds; fall back, say so
            logger.warning("admin page: login slowdown without Redis (%s)", type(exc).__name__)
            return self.local.wait(client)
        return max(0.0, allowed - self.clock(), self.local.wait(client))

    def failed(self, client: str) -> float:
        key = self._key(client)
        try:
            count = int(self.client.hincrby(key, "count", 1))
            delay = min(self.most, self.first * 2 ** (count - 1))
            pipe = self.client.pipeline()
            pipe.hset(key, "allowed", self.clock() + delay)
            pipe.expire(key, int(self.forget))
            pipe.execute()
        except Exception as exc:  # noqa: BLE001
            logger.warning("admin page: login slowdown without Redis (%s)", type(exc).__name__)
            return self.local.failed(client)
        return delay

    def succeeded(self, client: str) -> None:
        self.local.succeeded(client)
        with contextlib.suppress(Exception):  # it expires by itself
            self.client.delete(self._key(client))
