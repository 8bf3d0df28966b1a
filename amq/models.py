"""Maps the model names Claude clients send onto the Amazon Q models the account offers."""
from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

logger = logging.getLogger(__name__)


class QModel(NamedTuple):
    model_id: str
    max_input_tokens: int = 200_000


# The built-in table, used until (or unless) ListAvailableModels answers: Q's dotted ids
# (docs/amazon-q-api.md, "Models") with the Claude id, display name and release date that /v1/models shows.
# Which of these an account may use is UNCONFIRMED, hence the live list and the overrides.
BUILTIN = {
    "claude-opus-4.7": ("claude-opus-4-7", "Claude Opus 4.7", "2026-04-16T00:00:00Z"),
    "claude-opus-4.6": ("claude-opus-4-6", "Claude Opus 4.6", "2026-02-05T00:00:00Z"),
    "claude-sonnet-4.6": ("claude-sonnet-4-6", "Claude Sonnet 4.6", "2026-02-17T00:00:00Z"),
    "claude-opus-4.5": ("claude-opus-4-5-20251101", "Claude Opus 4.5", "2025-11-01T00:00:00Z"),
    "claude-haiku-4.5": ("claude-haiku-4-5-20251001", "Claude Haiku 4.5", "2025-10-01T00:00:00Z"),
    "claude-sonnet-4.5": ("claude-sonnet-4-5-20250929", "Claude Sonnet 4.5", "2025-09-29T00:00:00Z"),
    "claude-sonnet-4": ("claude-sonnet-4-20250514", "Claude Sonnet 4", "2025-05-14T00:00:00Z"),
    "claude-3.7-sonnet": ("claude-3-7-sonnet-20250219", "Claude Sonnet 3.7", "2025-02-19T00:00:00Z"),
}
KNOWN_Q_MODELS = tuple(BUILTIN) + ("auto",)
UNKNOWN_RELEASE = "2025-01-01T00:00:00Z"  # for ids Q lists that the table does not know

# claude-sonnet-4-5-20250929, claude-opus-4-1, claude-haiku-4-5, claude-sonnet-4-20250514
_NEW_STYLE = re.compile(r"^claude-(?P<family>opus|sonnet|haiku)-(?P<major>\d+)(?:-(?P<minor>\d{1,2}))?(?:-\d{8})?$")
# claude-3-7-sonnet-20250219, claude-3-5-haiku-latest
_OLD_STYLE = re.compile(
    r"^claude-(?P<major>\d+)(?:-(?P<minor>\d{1,2}))?-(?P<family>opus|sonnet|haiku)(?:-\d{8}|-latest)?$")
# Q's own ids: claude-sonnet-4.5, claude-3.7-sonnet, claude-sonnet-4.5-1m
_Q_NEW = re.compile(r"^claude-(?P<family>opus|sonnet|haiku)-(?P<version>\d+(?:\.\d+)?)$")
_Q_OLD = re.compile(r"^claude-(?P<version>\d+(?:\.\d+)?)-(?P<family>opus|sonnet|haiku)$")
_CONTEXT_SUFFIX = re.compile(r"\[1m\]$", re.IGNORECASE)


def _parse_claude(name: str) -> tuple[str, str, bool] | None:
    """(family, dotted version, wants 1M context) of a Claude model name."""
    name = name.strip().lower()
    one_million = bool(_CONTEXT_SUFFIX.search(name))
    name = _CONTEXT_SUFFIX.sub("", name)
    match = _NEW_STYLE.match(name) or _OLD_STYLE.match(name)
    if not match:
        return None
    version = match["major"] + (f".{match['minor']}" if match["minor"] else "")
    return match["family"], version, one_million


def _parse_q(model_id: str) -> tuple[str, tuple[int, ...]] | None:
    """(family, version tuple) of a Q id, for picking the best model of a family."""
    match = _Q_NEW.match(model_id) or _Q_OLD.match(model_id)
    if not match:
        return None
    return match["family"], tuple(int(part) for part in match["version"].split("."))


def q_model_candidate(name: str) -> str | None:
    """The Q id a Claude model name corresponds to by family and version, known or not."""
    parsed = _parse_claude(name or "")
    if not parsed:
        return None
    family, version, one_million = parsed
    major = version.split(".")[0]
    candidate = f"claude-{version}-{family}" if int(major) <= 3 else f"claude-{family}-{version}"
    return candidate + "-1m" if one_million else candidate


def claude_entry(q_id: str) -> dict | None:
    """The /v1/models entry for a Q model, or None for models that are not Claude."""
    if q_id in BUILTIN:
        claude_id, display, created = BUILTIN[q_id]
    else:
        parsed = _parse_q(q_id)
        if not parsed:
            return None
        family, version = parsed
        dashed = "-".join(map(str, version))
        claude_id = f"claude-{dashed}-{family}" if version[0] <= 3 else f"claude-{family}-{dashed}"
        display = f"Claude {family.title()} {'.'.join(map(str, version))}"
        created = UNKNOWN_RELEASE
    return {"type": "model", "id": claude_id, "display_name": display, "created_at": created}


class ModelCatalogue:
    """Resolves requested names against the account's models (ListAvailableModels, cached),
    falling back to the built-in table when Q cannot be asked."""

    TTL = 3600.0        # how long a successful answer is trusted
    RETRY_AFTER = 300.0  # how long a failed call is not repeated

    def __init__(self, default: str, overrides: dict[str, str] | None = None, *,
                 fetch: Callable[[], tuple[list[QModel], str | None]] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.default = default
        self.overrides = dict(overrides or {})
        self._fetch = fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._models = {m: QModel(m) for m in KNOWN_Q_MODELS}
        self._account_default: str | None = None
        self._live = False
        self._loaded = False  # a first answer (or failure) has been had
        self._expires = 0.0 if fetch else float("inf")

    def models(self) -> dict[str, QModel]:
        """The usable Q models: the account's list when it can be had, else the built-in one.

        Only the first call waits for the list; later refreshes happen in one request while
        the others go on with the list they have.
        """
        if self._clock() >= self._expires and self._lock.acquire(blocking=not self._loaded):
            try:
                if self._clock() >= self._expires:
                    self._refresh()
            finally:
                self._lock.release()
        return self._models

    def _refresh(self) -> None:
        self._loaded = True
        try:
            models, account_default = self._fetch()
        except Exception as exc:  # noqa: BLE001 - any failure means: use the table for now
            logger.warning("ListAvailableModels failed (%s); using the %s model list",
                           getattr(exc, "message", None) or type(exc).__name__,
                           "previous" if self._live else "built-in")
            self._expires = self._clock() + self.RETRY_AFTER
            return
        if models:
            self._models = {m.model_id: m for m in models}
            self._account_default = account_default
            self._live = True
            logger.info("Amazon Q offers %d models: %s", len(models), ", ".join(self._models))
        self._expires = self._clock() + self.TTL

    def stop_fetching(self) -> None:
        """Answer from what is known now (the built-in table before any fetch) and never ask Q
        again: for a setup whose upstream serves only messages."""
        self._expires = float("inf")

    def resolve(self, requested: str) -> str:
        """Overrides, then the same family and version, then (live list) the best model of
        the family, then the configured default."""
        if requested in self.overrides:
            return self.overrides[requested]
        available = self.models()
        if requested in available:
            return requested
        candidate = q_model_candidate(requested or "")
        if candidate in available:
            return candidate
        if candidate and candidate.endswith("-1m") and candidate[:-3] in available:
            return candidate[:-3]
        if candidate and self._live:
            best = self._best_of_family(_parse_claude(requested)[0], available)
            if best:
                return best
        return self._default(available)

    def _best_of_family(self, family: str, available) -> str | None:
        versions = [(parsed[1], model_id) for model_id in available
                    if (parsed := _parse_q(model_id)) and parsed[0] == family]
        return max(versions)[1] if versions else None

    def _default(self, available) -> str:
        if not self._live or self.default in available:
            return self.default
        return self._account_default or self.default

    def context_window(self, q_id: str) -> int:
        model = self._models.get(q_id)
        return model.max_input_tokens if model else 200_000

    def claude_models(self) -> list[dict]:
        """/v1/models entries, newest first, one per Claude id."""
        entries = {}
        for q_id in self.models():
            entry = claude_entry(q_id)
            if entry:
                entries.setdefault(entry["id"], entry)
        for name, q_id in self.overrides.items():
            base = claude_entry(q_id) or {"type": "model", "display_name": name,
                                          "created_at": UNKNOWN_RELEASE}
            entries.setdefault(name, dict(base, id=name))
        return sorted(entries.values(), key=lambda e: (e["created_at"], e["id"]), reverse=True)
