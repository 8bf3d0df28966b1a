"""A stand-in for the account pool (issue 14) built on the credential store alone.

The admin page talks to the pool's interface (summaries, disable, enable, remove, activity);
until the pool exists this adapter answers what the store can tell: every stored login, its
source and access-token expiry. It keeps no counters (all zero) and disables only in this
process's memory; removing needs the pool's `store.remove` and is refused with a clear error.
The admin views take it from `_pool()` only when the app has no pool.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ..credentials.store import CredentialStore


@dataclass(frozen=True)
class AccountSummary:
    """One account as the admin page shows it (the pool's record, same fields). No secret in it."""

    name: str
    source: str
    state: str
    until: float | None
    reason: str
    requests_today: int
    errors_today: int
    input_tokens_month: int
    output_tokens_month: int
    credits_month: float
    token_expires_at: float | None
    last_error: str


class PoolUnavailable(RuntimeError):
    """The action needs the account pool, which this build does not have yet."""


class StoreAccounts:
    """The pool's interface on top of a credential store (see the module's docstring)."""

    def __init__(self, store: CredentialStore, clock: Callable[[], float] = time.time):
        self.store = store
        self.clock = clock
        self._disabled: set[str] = set()

    def summaries(self) -> list[AccountSummary]:
        out = []
        for name in self.store.accounts():
            record = self.store.load(name)
            try:
                expires = float(record["expiresAt"]) if record.get("expiresAt") else None
            except (TypeError, ValueError):
                expires = None
            disabled = name in self._disabled
            out.append(AccountSummary(
                name=name, source=str(record.get("source") or ""),
                state="disabled" if disabled else "active", until=None,
                reason="disabled on the admin page" if disabled else "",
                requests_today=0, errors_today=0, input_tokens_month=0, output_tokens_month=0,
                credits_month=0.0, token_expires_at=expires, last_error=""))
        return out

    def _known(self, name: str) -> str:
        if name not in self.store.accounts():
            raise KeyError(name)
        return name

    def disable(self, name: str) -> None:
        self._disabled.add(self._known(name))

    def enable(self, name: str) -> None:
        self._disabled.discard(self._known(name))

    def remove(self, name: str) -> None:
        self._known(name)
        raise PoolUnavailable("removing an account needs the account pool; this build cannot delete a login")

    def activity(self, minutes: int = 60) -> list[tuple[int, int, int]]:
        """No counters without the pool: zeros for each of the last `minutes` minutes."""
        this_minute = int(self.clock()) // 60 * 60
        return [(this_minute - 60 * back, 0, 0) for back in range(minutes - 1, -1, -1)]
