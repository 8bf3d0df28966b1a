"""Gives a gevent worker's other streams their turn between the large CPU steps of one request.

A gevent worker runs one greenlet at a time: while it parses and converts a 550 KB request no
other stream on it gets an event. A pause of any positive length lets the event loop poll the
sockets and run every greenlet whose data arrived (`gevent.sleep(0)` may resume this one
before polling).
"""
from __future__ import annotations

import gevent
from gevent import monkey

PAUSE = 1e-5  # seconds: the shortest timer; the loop's polling and the others' work set the wait


def give_way() -> None:
    """One turn of the event loop for the other greenlets, in a monkey-patched gevent worker;
    elsewhere nothing (threads are switched by the interpreter)."""
    if monkey.is_module_patched("socket"):
        gevent.sleep(PAUSE)
