"""Cooperation with the other streams of a gevent worker: turns between large CPU steps, and
helpers that run beside a stream (a greenlet there, a thread elsewhere).

A gevent worker runs one greenlet at a time: while it parses and converts a 550 KB request no
other stream on it gets an event. A pause of any positive length lets the event loop poll the
sockets and run every greenlet whose data arrived (`gevent.sleep(0)` may resume this one
before polling).
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

import gevent
from gevent import monkey

PAUSE = 1e-5  # seconds: the shortest timer; the loop's polling and the others' work set the wait


class Helper(Protocol):
    def join(self, timeout: float | None = None) -> None: ...


def give_way() -> None:
    """One turn of the event loop for the other greenlets, in a monkey-patched gevent worker;
    elsewhere nothing (threads are switched by the interpreter)."""
    if monkey.is_module_patched("socket"):
        gevent.sleep(PAUSE)


def start_helper(target: Callable[[], None], name: str) -> Helper:
    """Run `target` beside the caller: a bare greenlet in a gevent worker (a patched
    threading.Thread costs several times as much to start and join, paid on every answer),
    a daemon thread elsewhere."""
    if monkey.is_module_patched("socket"):
        return gevent.spawn(target)
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread
