"""SSE event formatting: any string an answer can hold stays one well-formed data line."""
from __future__ import annotations

import json

import pytest

from amq.sse import format_event


def delta(text: str) -> dict:
    return {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}


def lines_of(raw: bytes) -> list[str]:
    # What a client that decodes first would do; the blank line ends the event.
    return [line for line in raw.decode("utf-8").splitlines() if line]


@pytest.mark.parametrize("text", ["line\u2028separator", "para\u2029graph", "next\x85line",
                                  "all\u2028three\u2029at\x85once \u2014 with a dash"])
def test_unicode_line_breaks_are_escaped_so_splitlines_keeps_one_data_line(text):
    raw = format_event(delta(text))
    event, data = lines_of(raw)
    assert event == "event: content_block_delta"
    assert json.loads(data.removeprefix("data: "))["delta"]["text"] == text


def test_text_is_written_as_utf8_and_parses_back():
    raw = format_event(delta("café — 東京 🎉"))
    assert "café — 東京 🎉".encode() in raw
    assert json.loads(lines_of(raw)[1].removeprefix("data: "))["delta"]["text"] == "café — 東京 🎉"


def test_a_lone_surrogate_is_escaped_not_an_error():
    raw = format_event(delta("cut emoji \ud83d"))
    assert raw.isascii() and b"\\ud83d" in raw
    assert json.loads(lines_of(raw)[1].removeprefix("data: "))["delta"]["text"] == "cut emoji \ud83d"
    assert raw.endswith(b"\n\n") and raw.count(b"\n") == 3
