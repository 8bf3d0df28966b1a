"""Cooperation with the other streams of a gevent worker: turns between large CPU steps, and
helpers that run beside a stream (a greenlet there, a thread elsewhere).

A gevent worker runs one greenlet at a time: while it parses and converts a 550 KB request no
other stream on it gets an event. A turn waits for the event loop to be idle: the loop then
polls the sockets without blocking and runs every greenlet whose data arrived, for as long as
more keeps arriving (`gevent.sleep(0)` may resume this greenlet before polling). A timer
bounds the wait, so a loop that is never idle still lets the request go on. A timer alone
made each turn a sleep of at least a millisecond (libev's shortest blocking poll) and cost
35-120 us of CPU; waiting for idleness costs about 11 us when nothing else is ready
(bench/README.md).
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


def in_gevent_worker() -> bool:
    """Whether gevent has patched this process (a gevent worker, or a script that patched)."""
    return monkey.is_module_patched("socket")


def give_way() -> None:
    """One turn of the event loop for the other greenlets, in a monkey-patched gevent worker;
    elsewhere nothing (threads are switched by the interpreter)."""
    if not in_gevent_worker():
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
    if in_gevent_worker():
        return gevent.spawn(target)
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


class WhileWaiting(Generic[T]):
    """A value the caller needs only after a network wait it is about to begin, computed
    during that wait: in a gevent worker a greenlet, which runs once the caller first blocks
    (on the socket to Q, unless something else comes first, such as a Redis round trip);
    elsewhere computed when asked for. The token estimate of a 550 KB request, about a
    millisecond, then no longer delays the call to Q. The CPU is the same either way: the
    other streams of the worker see no difference."""

    def __init__(self, compute: Callable[[], T]) -> None:
        self._compute = compute
        self._outcome: tuple[bool, object] | None = None  # (raised, value or exception)
        self._greenlet = gevent.spawn(self._run) if in_gevent_worker() else None

    def _run(self) -> None:
        # Kept for get(), where the caller's own error handling sees it; raised in the
        # greenlet, it would also be printed by gevent's hub, outside logging.
        try:
            self._outcome = (False, self._compute())
        except Exception as exc:  # noqa: BLE001 - re-raised by get()
            self._outcome = (True, exc)

    def get(self) -> T:
        """The value (computed now if the wait never let it run); its exception, if it raised."""
        if self._greenlet is None:
            return self._compute()
        self._greenlet.join()
        if self._outcome is None:  # killed before it ran: cancel() was called
            raise RuntimeError("the value was cancelled")
        raised, result = self._outcome
        if raised:
            raise result  # type: ignore[misc]
        return result  # type: ignore[return-value]

    def cancel(self) -> None:
        """Not wanted after all (the wait failed): a greenlet not yet run never runs."""
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
