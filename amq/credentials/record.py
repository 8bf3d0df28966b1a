"""The login record every store holds, and the access token handed to requests.

Imported by every other module of this package; imports none of them (the store needs the
record types, so they cannot live with the manager).
"""
from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import NamedTuple, TypedDict

DEFAULT_ACCOUNT = "default"  # today's single login; the account pool adds more names


class LoginRecord(TypedDict, total=False):
    """One account's login, as stored (JSON file or Redis). Times are epoch seconds.

    The JSON keys are the file store's format since its first version; do not rename them.
    """

    clientId: str
    clientSecret: str
    clientSecretExpiresAt: float
    region: str
    startUrl: str
    tokenEndpoint: str
    source: str  # "login", "environment", "Amazon Q CLI", "Kiro CLI"
    seed: str  # fingerprint of the environment credentials the login came from ("" otherwise)
    refreshToken: str
    previousRefreshToken: str
    accessToken: str
    expiresAt: float
    obtainedAt: float  # when the refresh that minted the access token started
    refreshStartedAt: float  # write-ahead marker: a refresh is (or was) in flight
    loggedInAt: float
    profileArn: str  # this account's Q Developer profile (IAM Identity Center); "" for Builder ID
    version: int  # bumped by every write; the fence against stale writers


class AccessToken(NamedTuple):
    token: str
    expires_at: float  # epoch seconds
    obtained_at: float = 0.0  # when the refresh that minted it started (0: unknown)


def iso_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def seed(client_id: str, refresh_token: str) -> str:
    """Fingerprint of the environment's credentials, to tell a new login from a spent token."""
    return hashlib.sha256(f"{client_id}\n{refresh_token}".encode()).hexdigest()


def stored_token(stored: LoginRecord) -> AccessToken | None:
    """The record's access token, if it has a readable one."""
    try:
        if stored.get("accessToken") and stored.get("expiresAt"):
            return AccessToken(str(stored["accessToken"]), float(stored["expiresAt"]),
                               float(stored.get("obtainedAt") or 0.0))
    except (TypeError, ValueError):
        pass
    return None


def without_version(record: LoginRecord) -> LoginRecord:
    """The record's contents without the store's bookkeeping (for copies and comparisons)."""
    return {key: value for key, value in record.items() if key != "version"}  # type: ignore[return-value]
