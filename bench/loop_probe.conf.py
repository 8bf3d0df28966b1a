"""amq's gunicorn.conf.py plus a probe of each worker's event loop (bench/large_requests.py).

A greenlet in the worker asks to wake every 5 ms; how late it wakes is how long the worker's
loop was held by something else: a request's step that does not yield, or the OS not running
the worker. Every frame of every stream on that worker waits as long. Once a second the worker
appends a JSON line to $AMQ_LOOP_PROBE: the time (CLOCK_MONOTONIC, which other processes share),
the number of wakeups, and each lateness of 1 ms or more.

    gunicorn -c bench/loop_probe.conf.py wsgi:app   (from the repository root)
"""
import os

__file__ = os.path.join(os.getcwd(), "gunicorn.conf.py")  # noqa: A001 - amq's file, as if read directly
with open(__file__) as _conf:
    exec(compile(_conf.read(), __file__, "exec"))  # noqa: S102 - amq's own settings, unchanged

PROBE_PERIOD = 0.005  # seconds; its own cost is about 10 ms of CPU a second


_amq_post_worker_init = globals().get("post_worker_init")  # amq's own hook, if it has one


def post_worker_init(worker):
    if _amq_post_worker_init is not None:
        _amq_post_worker_init(worker)
    import json
    import time

    import gevent

    def probe():
        with open(os.environ["AMQ_LOOP_PROBE"], "a", buffering=1) as out:
            wakeups, late, second = 0, [], time.monotonic()
            while True:
                asked = time.monotonic()
                gevent.sleep(PROBE_PERIOD)
                now = time.monotonic()
                wakeups += 1
                lateness = (now - asked - PROBE_PERIOD) * 1000
                if lateness >= 1.0:
                    late.append(round(lateness, 2))
                if now - second >= 1.0:
                    out.write(json.dumps({"t": now, "wakeups": wakeups, "late_ms": late}) + "\n")
                    wakeups, late, second = 0, [], now

    gevent.spawn(probe)
