"""Cooperation with the other streams of a gevent worker: turns between large CPU steps, and
helpers that run beside a stream (a greenlet there, a thread elsewhere).

A gevent worker runs one greenlet at a time: while it parses and converts a 550 KB request no
other stream on it gets an event. A turn waits for the event loop to be idle: the loop then
polls the sockets without blocking and runs every greenlet whose data arrived, for as long as
more keeps arriving (`gevent.sleep(0)` may resume this greenlet before polling). A timer
bounds the wait, so a loop that is never idle still lets the request go on. A timer alone
made each turn a sleep of at least a millisecond (libev's shortest blocking poll) and cost
50-120 us of CPU; waiting for idleness costs a few microseconds when nothing else is ready.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import gevent
from gevent import get_hub, monkey
from gevent.hub import Waiter

T = TypeVar("T")
LONGEST_TURN = 0.005  # seconds the others may keep the loop busy before this request goes on


class Helper(Protocol):
    """What `start_helper` returns, a Greenlet or a Thread: the caller only joins it."""

    def join(self, timeout: float | None = None) -> None: ...


def give_way() -> None:
    """One turn of the event loop for the other greenlets, in a monkey-patched gevent worker;
    elsewhere nothing (threads are switched by the interpreter)."""
    if not monkey.is_module_patched("socket"):
        return
    hub = get_hub()
    waiter = Waiter(hub)
    with hub.loop.idle() as idle, hub.loop.timer(LONGEST_TURN) as timer:
        idle.start(waiter.switch, None)
        timer.start(waiter.switch, None)
        waiter.get()


def start_helper(target: Callable[[], None], name: str) -> Helper:
    """Run `target` beside the caller: a bare greenlet in a gevent worker (a patched
    threading.Thread costs several times as much to start and join, paid on every answer),
    a daemon thread elsewhere."""
    if monkey.is_module_patched("socket"):
        return gevent.spawn(target)
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


class WhileWaiting(Generic[T]):
    """A value the caller needs only after a network wait it is about to begin, computed
    during that wait: in a gevent worker a greenlet, which runs once the caller blocks on the
    socket (the token estimate of a 550 KB request, about a millisecond, then costs the answer
    nothing, where before it delayed the call to Q); elsewhere computed when first asked for.
    The CPU is the same either way: the other streams of the worker see no difference."""

    def __init__(self, compute: Callable[[], T]):
        self._compute = compute
        self._greenlet = gevent.spawn(compute) if monkey.is_module_patched("socket") else None

    def get(self) -> T:
        """The value (computed now if the wait never let it run); its exception, if it raised."""
        if self._greenlet is None:
            return self._compute()
        return self._greenlet.get()

    def cancel(self) -> None:
        """Not wanted after all (the wait failed): a greenlet not yet run never runs."""
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
