"""Maps the model names Claude clients send onto Amazon Q model ids."""
from __future__ import annotations

import re

# Q's dotted ids (spec 5.2). Which of these an account may use is UNCONFIRMED, so the
# default and every mapping can be overridden (AMAZONQ_DEFAULT_MODEL, AMAZONQ_MODEL_MAP).
KNOWN_Q_MODELS = (
    "claude-opus-4.7",
    "claude-opus-4.6",
    "claude-sonnet-4.6",
    "claude-opus-4.5",
    "claude-sonnet-4.5",
    "claude-haiku-4.5",
    "claude-sonnet-4",
    "claude-3.7-sonnet",
    "auto",
)

# claude-sonnet-4-5-20250929, claude-opus-4-1, claude-haiku-4-5, claude-sonnet-4-20250514
_NEW_STYLE = re.compile(r"^claude-(?P<family>opus|sonnet|haiku)-(?P<major>\d+)(?:-(?P<minor>\d{1,2}))?(?:-\d{8})?$")
# claude-3-7-sonnet-20250219, claude-3-5-haiku-latest
_OLD_STYLE = re.compile(r"^claude-(?P<major>\d+)(?:-(?P<minor>\d{1,2}))?-(?P<family>opus|sonnet|haiku)(?:-\d{8}|-latest)?$")
_CONTEXT_SUFFIX = re.compile(r"\[1m\]$", re.IGNORECASE)


def q_model_candidate(name: str) -> str | None:
    """The Q id a Claude model name corresponds to by family and version, known or not."""
    name = name.strip().lower()
    one_million = bool(_CONTEXT_SUFFIX.search(name))
    name = _CONTEXT_SUFFIX.sub("", name)
    match = _NEW_STYLE.match(name)
    if match:
        version = match["major"] + (f".{match['minor']}" if match["minor"] else "")
        candidate = f"claude-{match['family']}-{version}"
    else:
        match = _OLD_STYLE.match(name)
        if not match:
            return None
        version = match["major"] + (f".{match['minor']}" if match["minor"] else "")
        candidate = f"claude-{version}-{match['family']}"
    return candidate + "-1m" if one_million else candidate


class ModelMap:
    """Resolves a requested model name: overrides, then the family/version table, then default."""

    def __init__(self, default: str, overrides: dict[str, str] | None = None,
                 known: tuple[str, ...] = KNOWN_Q_MODELS):
        self.default = default
        self.overrides = dict(overrides or {})
        self.known = tuple(known)

    def resolve(self, requested: str) -> str:
        if requested in self.overrides:
            return self.overrides[requested]
        if requested in self.known:
            return requested
        candidate = q_model_candidate(requested or "")
        if candidate in self.known:
            return candidate
        if candidate and candidate.endswith("-1m") and candidate[:-3] in self.known:
            return candidate[:-3]
        return self.default
