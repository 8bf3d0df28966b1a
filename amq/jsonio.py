"""JSON in and out of amq: orjson where it gives the same values, the stdlib everywhere else.

orjson parses a Claude Code request about twice as fast as `json.loads` and writes a Q body
about twenty times as fast as `json.dumps` (bench/large_requests.py), and a gevent worker does
that work without yielding to its other streams. orjson is stricter than the stdlib, so each
difference falls back to the stdlib, which keeps amq's answers the same:

- lone surrogates ("\\ud800" escapes): orjson refuses them; the stdlib reads them and the
  converter replaces them (a cut emoji must not end a conversation);
- NaN, Infinity, 1e400, a UTF-8 byte order mark, UTF-16/32 bodies: orjson refuses them; the
  stdlib reads them and amq gives its own error where it must;
- integers beyond 64 bits: orjson reads them as floats, so bodies that may hold one go to the
  stdlib: a run of 19 or more digits where a number can begin (at the start, or after "[",
  "," or ":", then blanks and a minus sign). Runs inside text (a nanosecond timestamp in a
  tool's output) do not count, or one such run would send every later turn of the
  conversation to the slow path;
- errors: a body neither accepts gets the stdlib's message, as before.
"""
from __future__ import annotations

import json
from typing import Any

import orjson
from flask.json.provider import DefaultJSONProvider

# Every digit becomes "0" and every other byte a space, so a run of 19 digits is one bytes
# search (a regular expression over a 550 KB body costs more than orjson's whole parse).
_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_LONG_RUN = b"0" * 19
_BLANKS = b" \t\n\r"
_BEFORE_A_VALUE = b"[,:"
_LOOK_BACK = 64  # bytes before a run that are looked at (more blanks than that: "may be")
_RUNS_LOOKED_AT = 64  # runs looked at, plus one per 16 KiB of body (more: "may be")


class Checked(dict):
    """A request object read by orjson: every string is valid Unicode (no lone surrogate),
    every number finite and exact, so the converter need not scan it again."""

    __slots__ = ()


def loads(raw: bytes):
    """The JSON value of a request body; `Checked` when it is an object orjson could read.

    :raises ValueError, UnicodeDecodeError, RecursionError: as `json.loads` does.
    """
    if not _may_hold_a_long_integer(raw):
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # the stdlib decides, and words the error
        else:
            return Checked(value) if isinstance(value, dict) else value
    return json.loads(raw)


def _may_hold_a_long_integer(raw: bytes) -> bool:
    """Whether a run of 19 or more digits in `raw` may be a JSON integer: one that starts
    where a value can (at the start, or after "[", "," or ":", then blanks and a minus sign).
    Runs after anything else are inside strings, or are a fraction's or an exponent's digits,
    which orjson reads as the stdlib does. A run in text that looks like that ("x, 1733...")
    only costs the slower parse. So does a body with more runs than the budget, or with more
    blanks before one than `_LOOK_BACK`: the check's own cost stays a small share of a parse,
    whatever a client sends."""
    digits = raw.translate(_DIGITS_AS_ZERO)
    budget = _RUNS_LOOKED_AT + len(raw) // 16384
    start = digits.find(_LONG_RUN)
    while start >= 0:  # find() returns where each run starts: an earlier start would match first
        budget -= 1
        if budget < 0:
            return True
        window = start - _LOOK_BACK
        before = raw[max(0, window):start]
        if before.endswith(b"-"):
            before = before[:-1]
        before = before.rstrip(_BLANKS)
        if not before:  # the start of the body, or too many blanks to look past
            return True
        if before[-1] in _BEFORE_A_VALUE:
            return True
        end = digits.find(b" ", start)
        if end < 0:
            return False
        start = digits.find(_LONG_RUN, end)
    return False


def dumps(value) -> bytes:
    """Compact UTF-8 JSON of a value that holds no NaN or Infinity (orjson would write null;
    the converter refuses them), parsing back to `value`."""
    try:
        return orjson.dumps(value)
    except TypeError:  # integers beyond 64 bits, non-str keys, nesting deeper than 255
        return _stdlib_compact(value, ascii_only=False).encode("utf-8")


class OrjsonProvider(DefaultJSONProvider):
    """Flask's jsonify through orjson, keys sorted as Flask does; what orjson cannot write
    (lone surrogates in an echoed client string, huge integers) goes through Flask's own."""

    _OPTIONS = (orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE
                | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS)

    def response(self, *args, **kwargs):
        obj = self._prepare_response_obj(args, kwargs)
        if self.compact is False or (self.compact is None and self._app.debug):
            return super().response(obj)  # indented for people: Flask's own
        try:  # dates and dataclasses through Flask's `default`, as Flask writes them
            data = orjson.dumps(obj, default=self.default, option=self._OPTIONS)
        except TypeError:  # lone surrogates, integers beyond 64 bits, non-str keys
            return super().response(obj)
        return self._app.response_class(data, mimetype=self.mimetype)


def loads_event(raw: bytes) -> Any:
    """The JSON value of one of Q's event payloads (small, and read for every frame): orjson,
    the stdlib for what orjson refuses. No scan for long integers: Q's payloads carry text and
    counts, never an integer past 64 bits that must stay exact."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def dumps_wire(value) -> bytes:
    """Compact JSON of any value for a client's stream: orjson's UTF-8, or, for what orjson
    refuses (a lone surrogate from a client or Q, an integer past 64 bits), the stdlib's
    ASCII escapes, which any string survives."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return _stdlib_compact(value, ascii_only=True).encode("ascii")


def dumps_text(value) -> str:
    """Compact JSON text of any value, non-ASCII characters as themselves: orjson, or the
    stdlib for what orjson refuses (lone surrogates, integers past 64 bits, non-string keys,
    nesting past 255 levels)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return _stdlib_compact(value, ascii_only=False)


def _stdlib_compact(value, *, ascii_only: bool) -> str:
    """The stdlib's compact JSON, where each writer above goes for what orjson refuses."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=ascii_only)
