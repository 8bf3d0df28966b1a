"""A large request lets the other greenlets of a gevent worker run while it is converted."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.conftest import ROOT

SCRIPT = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import json, time
    import gevent
    from amq.convert import convert_request
    from amq.jsonio import loads
    from tests.claude_code_requests import sized_request

    raw = json.dumps(sized_request("550k", 2)).encode()
    ticks = []

    def other_stream():
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0)

    def large_request(result):
        start = time.monotonic()
        request = loads(raw)
        convert_request(request, origin="CLI").for_model("m")
        result.update(start=start, end=time.monotonic())

    result = {}
    ticker = gevent.spawn(other_stream)
    gevent.sleep(0.01)
    gevent.spawn(large_request, result).join()
    ticker.kill()
    print(json.dumps({"ticks_during": sum(result["start"] < t < result["end"] for t in ticks),
                      "patched": monkey.is_module_patched("socket")}))
""")


def test_a_large_conversion_gives_other_greenlets_turns():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["patched"]
    # 433 messages: a turn every 100 messages and one at the end
    assert seen["ticks_during"] >= 4, seen


def test_without_gevent_nothing_yields_or_needs_a_hub():
    from amq.convert import convert_request
    from tests.claude_code_requests import sized_request

    body = convert_request(sized_request("150k", 1), origin="CLI").for_model("m")
    assert body["conversationState"]["currentMessage"]["userInputMessage"]["modelId"] == "m"


WHILE_WAITING = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import json, socket, time
    import gevent
    from amq.cooperative import WhileWaiting

    ran = []
    def estimate():
        ran.append(time.monotonic())
        return 42

    # An upstream that answers 50 ms after it is asked.
    server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen()
    def answer():
        conn, _ = server.accept(); conn.recv(10); gevent.sleep(0.05); conn.sendall(b"ok"); conn.close()
    gevent.spawn(answer)

    value = WhileWaiting(estimate)
    before_wait = list(ran)
    start = time.monotonic()
    client = socket.create_connection(server.getsockname()); client.sendall(b"q"); client.recv(10)
    end = time.monotonic()
    result = value.get()

    cancelled = WhileWaiting(estimate)
    cancelled.cancel()
    gevent.sleep(0.01)

    def broken():
        raise ValueError("no estimate")
    failing = WhileWaiting(broken)
    gevent.sleep(0.01)  # it runs, and fails, during this wait
    try:
        failing.get()
        error = None
    except ValueError as exc:
        error = str(exc)
    print(json.dumps({"before_wait": len(before_wait), "during_wait": start <= ran[0] <= end,
                      "result": result, "runs": len(ran), "error": error}))
""")


def test_a_value_while_waiting_is_computed_during_the_callers_network_wait():
    run = subprocess.run([sys.executable, "-c", WHILE_WAITING], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True)
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert seen == {"before_wait": 0, "during_wait": True, "result": 42, "runs": 1,
                    "error": "no estimate"}, seen
    assert "ValueError" not in run.stderr  # raised to get()'s caller only, not printed by the hub


def test_without_gevent_a_value_while_waiting_is_computed_when_asked_for():
    from amq.cooperative import WhileWaiting

    ran = []
    value = WhileWaiting(lambda: ran.append(1) or 7)
    assert ran == []
    assert value.get() == 7 and ran == [1]
    WhileWaiting(lambda: ran.append(2)).cancel()
    assert ran == [1]
