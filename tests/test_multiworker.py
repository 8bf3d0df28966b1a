"""Four gunicorn workers, one login whose refresh token rotates at every refresh and whose
access tokens live four seconds: hundreds of requests, no invalid_grant, one refresh per expiry."""
from __future__ import annotations

import re
import threading
import time

import requests

from tests.fakeq import FakeQ
from tests.support import AmqServer, amq_env, refreshes

TTL = 4.0  # seconds an access token lives
MARGIN = TTL * 0.2  # amq refreshes this long before expiry (TokenManager.MARGIN_FRACTION)
DURATION = 10.0
BODY = {"model": "claude-sonnet-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}


def test_four_workers_share_one_rotating_login(tmp_path):
    with FakeQ(access_token_ttl=TTL, rotate_refresh_tokens=True) as fake:
        fake.token_delay = 0.05  # rotated before the answer arrives, widening any race
        server = AmqServer(amq_env(fake, tmp_path / "token.json", LOG_LEVEL="INFO"),
                           tmp_path / "gunicorn.log", workers=4)
        statuses: list[int] = []
        started = time.monotonic()

        def client():
            while time.monotonic() - started < DURATION:
                # a new connection each time, so every worker gets requests
                response = requests.post(server.url + "/v1/messages", json=BODY, timeout=30,
                                         headers={"Connection": "close", "x-api-key": "x",
                                                  "anthropic-version": "2023-06-01"})
                statuses.append(response.status_code)
                time.sleep(0.02)

        try:
            threads = [threading.Thread(target=client) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(DURATION + 60)
            log = server.log()
        finally:
            server.stop()

        grants = refreshes(fake)
        served_by = set(re.findall(r"\[(\d+)\] INFO amq\.access: POST /v1/messages 200", log))
        refreshed_by = re.findall(r"\[(\d+)\] INFO amq\.credentials\.manager: access token refreshed", log)
        gaps = [b["at"] - a["at"] for a, b in zip(grants, grants[1:], strict=False)]
        summary = (f"{len(statuses)} requests, {len(grants)} refreshes by workers {refreshed_by}, "
                   f"gaps {[round(g, 2) for g in gaps][:20]}, served by {len(served_by)} workers, "
                   f"{fake.bearer_rejections} expired-token rejections")
        print(summary)
        assert len(statuses) >= 200 and set(statuses) == {200}, summary
        assert [e["error"] for e in grants] == [None] * len(grants), summary  # no invalid_grant
        assert len(served_by) >= 2, summary  # several processes really took part
        # one refresh per expiry: none long before the previous token reached its margin (a
        # second refresh of the same expiry would follow within milliseconds)...
        assert all(gap >= (TTL - MARGIN) / 2 for gap in gaps), summary
        # ...and the tokens kept being renewed for the whole run
        assert len(grants) >= int(DURATION / TTL) + 1, summary
        assert "Traceback" not in log
