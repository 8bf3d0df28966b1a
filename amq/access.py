"""Who may use the proxy: holders of a PROXY_API_KEYS key, or loopback clients when none is set.

amq holds a user's Amazon Q credentials; deployed on a PaaS without keys it must not become an
open proxy, so non-loopback clients are refused until the operator sets keys.
"""
from __future__ import annotations

import hmac
import ipaddress

from .errors import AuthenticationFailed

# Headers a reverse proxy adds; with one in front, every client would look local.
FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP", "X-Forwarded-Proto", "X-Forwarded-Host",
                      "Via")


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


def is_local(headers, remote_addr: str | None) -> bool:
    """A loopback client that no reverse proxy forwarded (a same-host proxy makes everyone local)."""
    return is_loopback(remote_addr) and not any(h in headers for h in FORWARDING_HEADERS)


def _holds(headers, keys: tuple[str, ...]) -> bool:
    """The request carries one of `keys`: compared with every key (no early exit), each in
    constant time."""
    key = presented_key(headers)
    return any([hmac.compare_digest(key.encode(), k.encode()) for k in keys]) if key else False


def check_access(headers, remote_addr: str | None, keys: tuple[str, ...]) -> None:
    """:raises AuthenticationFailed: unless the request may be served."""
    if keys:
        if not _holds(headers, keys):
            raise AuthenticationFailed("invalid or missing API key: send one of the keys in "
                                       "PROXY_API_KEYS as x-api-key or Authorization: Bearer")
    elif not is_local(headers, remote_addr):
        raise AuthenticationFailed("amq serves only local clients until PROXY_API_KEYS is set: "
                                   "the operator must set PROXY_API_KEYS to accept remote or "
                                   "proxied clients")


def check_metrics_access(headers, remote_addr: str | None, metrics_key: str) -> None:
    """/metrics needs METRICS_KEY as `Authorization: Bearer` once it is set; until then it is
    open to local clients only, as /v1/* is without PROXY_API_KEYS.

    A key of its own: a scraper's credential cannot spend Q credits, and a client's key cannot
    read the operator's figures.
    :raises AuthenticationFailed: unless the figures may be shown.
    """
    if metrics_key:
        if not _holds(headers, (metrics_key,)):
            raise AuthenticationFailed("invalid or missing metrics key: send METRICS_KEY as "
                                       "Authorization: Bearer")
    elif not is_local(headers, remote_addr):
        raise AuthenticationFailed("amq shows /metrics only to local clients until METRICS_KEY is "
                                   "set: the operator must set METRICS_KEY for remote scrapers")
