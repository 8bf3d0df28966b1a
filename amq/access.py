"""Who may use the proxy: holders of a PROXY_API_KEYS key, or loopback clients when none is set.

amq holds a user's Amazon Q credentials; deployed on a PaaS without keys it must not become an
open proxy, so non-loopback clients are refused until the operator sets keys.
"""
from __future__ import annotations

import hmac
import ipaddress

from .errors import AuthenticationFailed

FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")


def presented_key(headers) -> str | None:
    """The client's key: `x-api-key`, else `Authorization: Bearer` (newer SDKs send that)."""
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    scheme, _, token = (headers.get("authorization") or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def is_loopback(address: str | None) -> bool:
    try:
        return ipaddress.ip_address((address or "").split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def check_access(headers, remote_addr: str | None, keys: tuple[str, ...]) -> None:
    """:raises AuthenticationFailed: unless the request may be served."""
    if keys:
        key = presented_key(headers)
        # Compare against every key (no early exit) in constant time per key.
        matches = [hmac.compare_digest(key.encode(), k.encode()) for k in keys] if key else []
        if not any(matches):
            raise AuthenticationFailed("invalid or missing API key: send one of the keys in "
                                       "PROXY_API_KEYS as x-api-key or Authorization: Bearer")
    elif not is_loopback(remote_addr) or any(h in headers for h in FORWARDING_HEADERS):
        # A reverse proxy on the same host makes every remote client look local.
        raise AuthenticationFailed("amq serves only local clients until PROXY_API_KEYS is set: "
                                   "the operator must set PROXY_API_KEYS to accept remote or "
                                   "proxied clients")


def check_metrics_access(headers, remote_addr: str | None, metrics_key: str) -> None:
    """/metrics is open to loopback clients; others send METRICS_KEY as `Authorization: Bearer`.

    A key of its own: a scraper's credential cannot spend Q credits, and a client's key cannot
    read the operator's figures.
    :raises AuthenticationFailed: unless the figures may be shown.
    """
    if is_loopback(remote_addr) and not any(h in headers for h in FORWARDING_HEADERS):
        return
    if not metrics_key:
        raise AuthenticationFailed("amq shows /metrics only to local clients until METRICS_KEY is "
                                   "set: the operator must set METRICS_KEY for remote scrapers")
    key = presented_key(headers)
    if not key or not hmac.compare_digest(key.encode(), metrics_key.encode()):
        raise AuthenticationFailed("invalid or missing metrics key: send METRICS_KEY as "
                                   "Authorization: Bearer")
