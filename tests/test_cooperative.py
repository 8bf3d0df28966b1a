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
