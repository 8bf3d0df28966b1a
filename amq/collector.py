"""The garbage collector's settings in a gunicorn worker, which serves large short-lived requests.

A 550 KB Claude Code request becomes some 35,000 Python objects (the parsed body and its Q
conversion) that live for that request only and form no reference cycles. With CPython's
default thresholds a young collection starts every 700 new objects, so a dozen of them scan
those objects while the request runs, and the ones promoted meanwhile bring on full
collections that walk everything the worker has imported. bench/large_requests.py measured
about 2.5 ms of worker CPU per 550 KB request spent so (of some 18 ms beyond a small request's
cost). So the worker freezes what exists once its app is loaded (modules, the app: never
scanned again) and starts a young collection only after 50,000 new objects, by which time a
request's objects are usually freed. Cyclic garbage waits longer to be found (up to that
many objects), so a worker keeps a little more memory between collections (bench/large_requests.py
part 2 with --sequential 400: +1.4 MB of RSS over 1,200 sequential requests, against +0.1 MB at
CPython's 700).
"""
from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000  # new container objects between two young collections (CPython: 700)


def settle_worker() -> None:
    """Freeze the objects of a loaded app and space out young collections (call once, in
    the worker process, after the app is loaded)."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
