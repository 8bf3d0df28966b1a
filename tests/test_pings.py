"""Pings while Q is silent, and none while it is not (QClient.events with a ping interval)."""
from __future__ import annotations

import time

import pytest

from amq.upstream import QClient
from tests.eventstream_encode import encode_event

INTERVAL = 0.2


class _Raw:
    chunked = True


class SlowResponse:
    """A streamed response whose chunks arrive after the given pauses (seconds)."""

    def __init__(self, pauses: list[float]):
        self.pauses = pauses
        self.raw = _Raw()
        self.closed = False

    def iter_content(self, chunk_size=None):
        for k, pause in enumerate(self.pauses):
            time.sleep(pause)
            yield encode_event("assistantResponseEvent", {"content": f"<{k}>"})

    def close(self) -> None:
        self.closed = True


def client() -> QClient:
    return QClient(endpoint="http://127.0.0.1:9/", binding="rpc", tokens=None, session=None,
                   timeout=(1, 1), max_attempts=1, retry_budget=1)


def timed_items(pauses: list[float]) -> tuple[list[tuple[float, object]], SlowResponse]:
    response = SlowResponse(pauses)
    started, items = time.monotonic(), []
    for item in client().events(response, ping_interval=INTERVAL):
        items.append((time.monotonic() - started, item))
    return items, response


def test_no_ping_while_frames_keep_coming():
    items, response = timed_items([0.04] * 25)  # a second of frames, each well within the interval
    assert [item for _, item in items].count(None) == 0
    texts = [payload["content"] for _, batch in items for _, payload in batch]
    assert texts == [f"<{k}>" for k in range(25)]
    assert response.closed


@pytest.mark.parametrize("silence", [0.5, 1.0])
def test_a_silence_gets_a_ping_within_the_interval_then_one_per_interval(silence):
    items, _ = timed_items([0.0, silence, 0.0])
    pings = [at for at, item in items if item is None]
    first_frame = next(at for at, item in items if item is not None)
    assert pings, items
    slack = 0.08
    assert INTERVAL / 2 - slack <= pings[0] - first_frame <= INTERVAL + slack
    gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
    assert all(INTERVAL - slack <= gap <= INTERVAL + slack for gap in gaps), gaps
    assert len(pings) >= int(silence / INTERVAL) - 1
    texts = [payload["content"] for _, batch in items if batch for _, payload in batch]
    assert texts == ["<0>", "<1>", "<2>"]


class Unread:
    """A response whose body never ends, read by nobody after its first chunks."""

    raw = _Raw()

    def __init__(self):
        self.closed = False

    def iter_content(self, chunk_size=None):
        while not self.closed:
            yield encode_event("assistantResponseEvent", {"content": "x"})

    def close(self) -> None:
        self.closed = True


def test_closing_a_stream_whose_queue_is_full_is_prompt():
    """A client that stopped reading: the reader waits on a full queue, and closing frees it."""
    response = Unread()
    events = client().events(response, ping_interval=INTERVAL)
    next(events)
    time.sleep(0.2)  # the reader fills the queue meanwhile
    started = time.monotonic()
    events.close()
    assert time.monotonic() - started < 0.5
    assert response.closed
