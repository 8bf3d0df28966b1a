"""The account pool: which Amazon Q account serves a request, and how healthy each one is.

Every login in the credential store is an account (the environment's login is `default`).
Selection happens in memory; the health every worker and instance shares lives in the store
(amq/credentials/pool_state.py) and is read back at most every AMAZONQ_POOL_SYNC_INTERVAL
seconds in one exchange, and written at once when an account's health changes.

What an error means for the account is decided where errors are classified
(amq/q_errors.py, DISPOSITIONS); here each disposition becomes a state with its duration:

* throttled: `cooling` for AMAZONQ_COOLDOWN_THROTTLED (or Q's Retry-After), never escalated;
* risk: `cooling` for AMAZONQ_COOLDOWN_RISK;
* monthly: `exhausted` until the reset (GetUsageLimits' date when known, else the first of
  next month UTC) plus AMAZONQ_RESET_MARGIN;
* suspended: `suspended` until an operator enables the account;
* invalid: `invalid` until a new login is stored under its name (a new refresh token: failed
  refreshes write the record too, so its version says nothing);
* transient: `cooling` for AMAZONQ_COOLDOWN_ERRORS after AMAZONQ_ERRORS_BEFORE_COOLDOWN in a row;
* model: that account is skipped for that model (in this worker), no penalty;
* request: nothing (the request's own fault).

A pool of one account never refuses a request on health: there is nothing to fail over to,
so Q's own answer reaches the client as it did before there was a pool.
"""
from __future__ import annotations

import contextlib
import logging
import math
import random
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ..config import DEFAULT_REGION, Settings
from ..errors import InvalidRequest, NoAccountAvailable, ProxyError, StoreUnavailable
from .manager import NoCredentials, TokenManager
from .pool_state import Deltas, HealthChange, PoolState, apply_change, login_identity, marked_for_an_older_login
from .record import DEFAULT_ACCOUNT, iso_time
from .store import CredentialStore

logger = logging.getLogger(__name__)

STATES = ("active", "cooling", "exhausted", "suspended", "invalid", "disabled")
STICKY_LIMIT = 10_000  # conversations remembered per worker
NO_MODEL_RECHECK = 3600.0  # seconds before an account that lacked a model is asked again (its list can change)
DEFAULT_ENDPOINT = "https://q.{region}.amazonaws.com"  # Q's regional hosts (docs/amazon-q-api.md)


@dataclass(frozen=True)
class AccountSummary:
    """One account as the `accounts` command and the admin page show it. No secret in it."""

    name: str
    source: str               # where the login came from: "login", "import-q-cli", "environment", ...
    state: str                # "active" | "cooling" | "exhausted" | "suspended" | "invalid" | "disabled"
    until: float | None       # epoch seconds when the state ends by itself (None: it does not)
    reason: str               # why it is in that state (Q's error name / reason; no secret)
    requests_today: int
    errors_today: int
    input_tokens_month: int
    output_tokens_month: int
    credits_month: float
    token_expires_at: float | None   # the access token's expiry, epoch seconds
    last_error: str                  # the last error's short text ("" if none)


@dataclass
class Account:
    """One account as a worker holds it."""

    name: str
    tokens: TokenManager
    profile_arn: str = ""
    endpoint: str | None = None  # Q's endpoint for this account's profile region (None: the setting's)
    no_models: dict[str, float] = field(default_factory=dict)  # model -> when it answered INVALID_MODEL_ID
    inflight: int = 0  # streams this worker has open on it
    remaining_credits: float | None = None  # from GetUsageLimits
    reset_at: float | None = None  # the monthly reset, from GetUsageLimits
    next_usage_poll: float = 0.0


def first_of_next_month(now: float) -> float:
    day = datetime.fromtimestamp(now, UTC)
    year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
    return datetime(year, month, 1, tzinfo=UTC).timestamp()


def error_reason(error: ProxyError) -> str:
    """Q's error name and reason, or amq's error class: short and without secrets."""
    name = error.q_exception or type(error).__name__
    reason = getattr(error, "q_reason", "")
    return f"{name} {reason}".strip()


class AccountPool:
    """Accounts, their shared health, and the choice of one for each request."""

    def __init__(self, settings: Settings, store: CredentialStore, state: PoolState, *,
                 default_tokens: TokenManager, make_tokens: Callable[[str], TokenManager],
                 usage_limits: Callable[[Account], tuple[float | None, float | None]] | None = None,
                 observe: Callable[..., None] | None = None,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.store = store
        self.state = state
        self._default = default_tokens
        self._make_tokens = make_tokens
        self._usage_limits = usage_limits
        self._observe = observe or (lambda *args: None)
        self._clock = clock
        self._monotonic = monotonic
        self.worker = uuid.uuid4().hex[:12]
        self._accounts: dict[str, Account] = {}
        self._ordered: list[Account] | None = None
        self._health: dict[str, dict] = {}
        self._logins: dict[str, str] = {}  # account -> login identity, as of the last sync
        self._shared_inflight: dict[str, int] = {}
        self._published: dict[str, int] = {}
        self._deltas = Deltas()
        self._sticky: OrderedDict[str, str] = OrderedDict()
        self._turn = 0
        self._next_sync = 0.0
        self._store_error: StoreUnavailable | None = None
        self._sync_lock = threading.Lock()
        if not default_tokens.missing:
            self._accounts[DEFAULT_ACCOUNT] = self._account(DEFAULT_ACCOUNT, default_tokens)
        self.sync()

    # ------------------------------------------------------------------ the contract

    def summaries(self) -> list[AccountSummary]:
        """Every account in the store, in pool order."""
        self.sync()
        now = self._clock()
        out = []
        for account in self.accounts():
            state, until, reason = self.effective(account.name, now)
            health = self._health.get(account.name, {})
            try:
                usage = self.state.usage(account.name, now)
                record = self.store.load(account.name)
            except (StoreUnavailable, OSError):
                usage, record = {}, {}
            token = account.tokens.token
            expires = token.expires_at if token else record.get("expiresAt")
            out.append(AccountSummary(
                name=account.name, source=str(record.get("source") or account.tokens.source or "environment"),
                state=state, until=until, reason=reason,
                requests_today=int(usage.get("requests_today", 0)),
                errors_today=int(usage.get("errors_today", 0)),
                input_tokens_month=int(usage.get("input_tokens_month", 0)),
                output_tokens_month=int(usage.get("output_tokens_month", 0)),
                credits_month=float(usage.get("credits_month", 0.0)),
                token_expires_at=float(expires) if expires else None,
                last_error=str(health.get("last_error") or "")))
        return out

    def disable(self, name: str) -> None:
        self._known(name)
        self._change(name, HealthChange("set", state="disabled", reason="disabled by an operator"))

    def enable(self, name: str) -> None:
        self._known(name)
        self._change(name, HealthChange("set", state="active"))

    def remove(self, name: str) -> None:
        """Delete the login from the store too."""
        self._known(name)
        self.store.remove(name)
        self.state.forget(name)
        self._accounts.pop(name, None)
        self._ordered = None
        self._health.pop(name, None)

    def activity(self, minutes: int = 60) -> list[tuple[int, int, int]]:
        """(minute start, requests, errors) of the last `minutes` minutes, every account."""
        self.sync()
        return self.state.activity(minutes, self._clock())

    # ------------------------------------------------------------------ health

    def accounts(self) -> list[Account]:
        """Accounts in pool order: AMAZONQ_ACCOUNT_ORDER first, then by name (sorted when the
        membership changes, not per request)."""
        if self._ordered is None:
            order = {name: index for index, name in enumerate(self.settings.account_order)}
            self._ordered = sorted(self._accounts.values(), key=lambda a: (order.get(a.name, len(order)), a.name))
        return self._ordered

    def effective(self, name: str, now: float) -> tuple[str, float | None, str]:
        """(state, until, reason) as of `now`: a rest that has passed is over."""
        health = self._health.get(name)
        if not health:
            return "active", None, ""
        state = health.get("state") or "active"
        until = health.get("until")
        if state in ("cooling", "exhausted") and (until is None or until <= now):
            return "active", None, ""
        if marked_for_an_older_login(health, self._logins.get(name)):
            return "active", None, ""
        if state not in STATES:
            return "active", None, ""
        return state, until, str(health.get("reason") or "")

    def report_failure(self, account: Account, error: ProxyError, model: str = "") -> None:
        """Count a failed call and change the account's health as its disposition says."""
        now = self._clock()
        disposition = error.disposition
        self._observe("error", account.name, disposition or "other")
        if disposition == "model":
            account.no_models[model] = self._monotonic()
            return
        if disposition not in ("throttled", "risk", "monthly", "suspended", "invalid", "transient"):
            return  # the request's own fault: not the account's
        self._deltas.add(account.name, now, errors=1)
        settings = self.settings
        reason, last_error = error_reason(error), error.message[:200]
        login = self._logins.get(account.name, "")
        if disposition == "throttled":
            rest = max(settings.cooldown_throttled, _seconds(getattr(error, "retry_after", None)))
            change = HealthChange("rest", "cooling", now + rest, reason, last_error, login)
        elif disposition == "risk":
            change = HealthChange("rest", "cooling", now + settings.cooldown_risk, reason, last_error, login)
        elif disposition == "monthly":
            known = account.reset_at is not None and account.reset_at > now
            reset = account.reset_at if known else first_of_next_month(now)
            change = HealthChange("rest", "exhausted", reset + settings.reset_margin, reason, last_error, login)
            if not known and self._usage_limits is not None:  # ask Q when it resets, beside the request
                threading.Thread(target=self._learn_reset, args=(account,), daemon=True,
                                 name=f"amq-reset-{account.name}").start()
        elif disposition == "suspended":
            change = HealthChange("out", "suspended", None, reason, last_error, login)
        elif disposition == "invalid":
            change = HealthChange("out", "invalid", None, reason, last_error, self._login_id(account.name))
        else:  # transient: a rest only once too often in a row (counted where health is stored)
            change = HealthChange("failure", "cooling", now + settings.cooldown_errors, reason, last_error,
                                  login, threshold=settings.errors_before_cooldown)
        before = self.effective(account.name, now)
        health = self._change(account.name, change)
        state, until, why = self.effective(account.name, now)
        if state != "active" and (state, until) != before[:2]:
            self._observe("cooldown", account.name, state)
            logger.warning("account %s is %s%s: %s", account.name, state,
                           f" until {iso_time(until)}" if until else "", why)
        elif health.get("state") != change.state and change.kind != "failure":
            logger.info("account %s stays %s (%s not applied)", account.name, state, change.state)

    def report_success(self, account: Account, conversation: str | None = None) -> None:
        if conversation and self.settings.sticky_sessions:
            self._sticky[conversation] = account.name
            self._sticky.move_to_end(conversation)
            while len(self._sticky) > STICKY_LIMIT:
                self._sticky.popitem(last=False)
        health = self._health.get(account.name) or {}
        if health.get("failures"):
            self._change(account.name, HealthChange("success"))

    def unavailable(self, model: str = "") -> ProxyError:
        """The 429 when no account can serve: when the first is back, and every account's state
        (a 400 when the healthy ones all lack the model)."""
        if not self._accounts:
            if self._store_error is not None:  # the logins are in a store that does not answer
                return self._store_error
            return NoCredentials(self._default.missing or "AMAZONQ_REFRESH_TOKEN")
        now = self._clock()
        if self.offered_nowhere(model):
            healthy = [a.name for a in self.accounts() if self.effective(a.name, now)[0] == "active"]
            return InvalidRequest(f"model {model} is not offered by any Amazon Q account that can serve now "
                                  f"({', '.join(healthy)})")
        states, back = [], []
        for account in self.accounts():
            state, until, _ = self.effective(account.name, now)
            states.append(f"{account.name}: {state}" + (f" until {iso_time(until)}" if until else ""))
            if until:
                back.append(until)
        headers = {"retry-after": str(max(1, math.ceil(min(back) - now)))} if back else \
            {"x-should-retry": "false"}
        return NoAccountAvailable("no Amazon Q account can serve this request now ("
                                  + "; ".join(states) + "); `flask --app app accounts` shows why",
                                  headers=headers)

    # ------------------------------------------------------------------ selection

    def any_account(self) -> Account | None:
        """An account for calls that are not a conversation (the model list): the first active."""
        if not self._accounts:
            self.sync()
        now = self._clock()
        accounts = self.accounts()
        return next((a for a in accounts if self.effective(a.name, now)[0] == "active"),
                    accounts[0] if accounts else None)

    def lacks(self, account: Account, model: str) -> bool:
        """The account answered INVALID_MODEL_ID for `model` within NO_MODEL_RECHECK."""
        since = account.no_models.get(model)
        if since is None:
            return False
        if self._monotonic() - since >= NO_MODEL_RECHECK:
            account.no_models.pop(model, None)
            return False
        return True

    def offered_nowhere(self, model: str) -> bool:
        """Every account able to serve (active, or only cooling) lacks `model`; there is one."""
        now = self._clock()
        able = [a for a in self.accounts() if self.effective(a.name, now)[0] in ("active", "cooling")]
        return bool(able) and all(self.lacks(a, model) for a in able)

    @property
    def single(self) -> bool:
        """At most one account can serve now: nothing to fail over to, so the in-call retries apply."""
        now = self._clock()
        return sum(self.effective(a.name, now)[0] == "active" for a in self.accounts()) <= 1

    def choose(self, model: str, conversation: str | None = None,
               exclude: set[str] | frozenset[str] = frozenset()) -> Account | None:
        """The account to try next, or None when no account can serve."""
        if self._monotonic() >= self._next_sync or not self._accounts:  # none known: look now
            self.sync()
        now = self._clock()
        accounts = self.accounts()
        if len(accounts) == 1:  # nothing to fail over to: health never refuses
            account = accounts[0]
            if account.name in exclude or self.effective(account.name, now)[0] == "disabled":
                return None
            return account
        eligible = [a for a in accounts if a.name not in exclude and not self.lacks(a, model)
                    and self.effective(a.name, now)[0] == "active"]
        if not eligible:
            return None
        if conversation and self.settings.sticky_sessions:
            name = self._sticky.get(conversation)
            for account in eligible:
                if account.name == name:
                    return account
        strategy = self.settings.account_strategy
        if strategy == "priority":
            return eligible[0]
        if strategy == "least-busy":
            return min(eligible, key=self._busy)
        if strategy == "quota":
            known = [a.remaining_credits for a in eligible if a.remaining_credits is not None]
            fallback = sum(known) / len(known) if known else 1.0
            weights = [max(a.remaining_credits if a.remaining_credits is not None else fallback, 0.0)
                       for a in eligible]
            if sum(weights) > 0:
                return random.choices(eligible, weights=weights)[0]
        self._turn += 1
        return eligible[self._turn % len(eligible)]

    def _busy(self, account: Account) -> int:
        """Streams in flight on every worker: others' from the last sync, ours now."""
        others = self._shared_inflight.get(account.name, 0) - self._published.get(account.name, 0)
        return max(others, 0) + account.inflight

    def begin(self, account: Account) -> None:
        account.inflight += 1
        self._deltas.add(account.name, self._clock(), requests=1)
        self._observe("request", account.name, "")

    def end(self, account: Account) -> None:
        account.inflight = max(account.inflight - 1, 0)

    def add_usage(self, account: Account, input_tokens: int, output_tokens: int,
                  credits: float | None) -> None:
        self._deltas.add(account.name, self._clock(), input_tokens=input_tokens,
                         output_tokens=output_tokens, credits=float(credits or 0.0))

    # ------------------------------------------------------------------ shared state

    def sync(self) -> None:
        """One exchange with the store: counters out; health, in-flight and accounts in."""
        if not self._sync_lock.acquire(blocking=False):
            return  # another greenlet of this worker is syncing
        try:
            self._next_sync = self._monotonic() + self.settings.pool_sync_interval
            deltas, self._deltas = self._deltas, Deltas()
            inflight = {name: account.inflight for name, account in self._accounts.items()}
            names = sorted(set(self._accounts) | set(self._health))
            try:
                snapshot = self.state.sync(names, deltas, inflight, self.worker, self._clock())
            except (StoreUnavailable, OSError) as exc:
                logger.debug("pool sync skipped: %s", getattr(exc, "message", exc))
                self._store_error = exc if isinstance(exc, StoreUnavailable) else None
                self._merge_back(deltas)
                return
            self._store_error = None
            self._published = inflight
            self._shared_inflight = snapshot.inflight
            self._logins.update(snapshot.logins)
            self._health = {name: health for name, health in snapshot.health.items()}
            self._join(snapshot.accounts)
            self._publish_states()
            self._poll_usage()
        finally:
            self._sync_lock.release()

    def _merge_back(self, deltas: Deltas) -> None:
        for name, counters in deltas.usage.items():
            for key, amount in counters.items():
                mine = self._deltas.usage.setdefault(name, {})
                mine[key] = mine.get(key, 0) + amount
        for minute, (requests, errors) in deltas.activity.items():
            slot = self._deltas.activity.setdefault(minute, [0, 0])
            slot[0] += requests
            slot[1] += errors

    def _join(self, stored: list[str]) -> None:
        """Accounts whose login appeared join; those whose login went away leave."""
        for name in stored:
            if name not in self._accounts:
                tokens = self._default if name == DEFAULT_ACCOUNT else self._make_tokens(name)
                self._accounts[name] = self._account(name, tokens)
                self._ordered = None
                logger.info("account %s joined the pool", name)
        for name in list(self._accounts):
            if name not in stored and not (name == DEFAULT_ACCOUNT and not self._default.missing):
                del self._accounts[name]
                self._ordered = None
                logger.info("account %s left the pool (its login was removed)", name)

    def _account(self, name: str, tokens: TokenManager) -> Account:
        try:
            record = self.store.load(name)
        except (StoreUnavailable, OSError):
            record = {}
        profile_arn = str(record.get("profileArn") or self.settings.profile_arn)
        return Account(name=name, tokens=tokens, profile_arn=profile_arn,
                       endpoint=account_endpoint(self.settings.api_endpoint, profile_arn))

    def _publish_states(self) -> None:
        now = self._clock()
        for name in self._accounts:
            self._observe("state", name, self.effective(name, now)[0])

    def _poll_usage(self) -> None:
        """GetUsageLimits per account every AMAZONQ_USAGE_POLL_INTERVAL, beside the requests."""
        if self._usage_limits is None or self.settings.account_strategy != "quota":
            return
        now = self._monotonic()
        for account in self._accounts.values():
            if now >= account.next_usage_poll:
                account.next_usage_poll = now + self.settings.usage_poll_interval
                threading.Thread(target=self._fetch_usage, args=(account,), daemon=True,
                                 name=f"amq-usage-{account.name}").start()

    def _fetch_usage(self, account: Account) -> None:
        try:
            remaining, reset = self._usage_limits(account)
        except ProxyError as exc:  # unknown, never "none left"
            logger.info("GetUsageLimits for account %s failed: %s", account.name, exc.message)
            return
        account.remaining_credits = remaining
        account.reset_at = reset or account.reset_at

    def _learn_reset(self, account: Account) -> None:
        """An exhausted account: GetUsageLimits' reset date replaces the first-of-month guess."""
        self._fetch_usage(account)
        health = self._health.get(account.name) or {}
        if account.reset_at and health.get("state") == "exhausted":
            self._change(account.name, HealthChange("reset", until=account.reset_at + self.settings.reset_margin))

    def _change(self, name: str, change: HealthChange) -> dict:
        """Apply `change` where health is stored, against what is stored now; keep the result.
        A store that does not answer: applied to this worker's copy only."""
        try:
            health = self.state.change_health(name, change)
        except (StoreUnavailable, OSError) as exc:
            logger.warning("account %s: health not shared (%s)", name, getattr(exc, "message", exc))
            health = apply_change(self._health.get(name) or {}, change)
        self._health[name] = health
        return health

    def _login_id(self, name: str) -> str:
        """The stored login's identity now (what the refused refresh tried)."""
        with contextlib.suppress(StoreUnavailable, OSError):
            self._logins[name] = login_identity(self.store.load(name))
        return self._logins.get(name, "")

    def _known(self, name: str) -> None:
        if name in self._accounts:
            return
        if name in self.store.accounts():
            return
        raise KeyError(name)


def account_endpoint(configured: str, profile_arn: str) -> str | None:
    """Q's endpoint for a profile in another region than the default endpoint's, else None
    (the configured endpoint). A configured non-default endpoint (a test fake, a proxy) wins."""
    parts = profile_arn.split(":")
    region = parts[3] if len(parts) >= 6 and profile_arn.startswith("arn:") else ""
    if not region or configured.rstrip("/") != DEFAULT_ENDPOINT.format(region=DEFAULT_REGION):
        return None
    return None if region == DEFAULT_REGION else DEFAULT_ENDPOINT.format(region=region) + "/"


def _seconds(value) -> float:
    try:
        return max(float(value), 0.0)
    except (TypeError, ValueError):
        return 0.0
