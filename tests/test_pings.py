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
def test_pings_during_a_silence_and_never_later_than_the_interval(silence):
    items, _ = timed_items([0.0, silence, 0.0])
    pings = [at for at, item in items if item is None]
    first_frame = next(at for at, item in items if item is not None)
    assert pings, items
    assert pings[0] - first_frame <= INTERVAL + 0.1  # the client never waits much past the interval
    gaps = [b - a for a, b in zip([first_frame, *pings], pings, strict=False)]
    assert all(gap <= INTERVAL + 0.1 for gap in gaps), gaps
    assert len(pings) <= silence / (INTERVAL / 2) + 1  # a ping per look at most
    texts = [payload["content"] for _, batch in items if batch for _, payload in batch]
    assert texts == ["<0>", "<1>", "<2>"]
