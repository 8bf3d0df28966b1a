"""Metrics and access log through real gunicorn with two gevent workers.

The counters of all workers add up in one scrape, a broken or abandoned stream is counted
under its outcome, every request has one access line (one JSON object per line under
LOG_FORMAT=json), and no secret reaches /metrics or the logs.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.eventstream_encode import encode_event, encode_exception
from tests.fakeq import FakeQ, raw_reply, text_reply, typical_reply
from tests.support import AmqServer, amq_env

API_KEY = "sk-amq-monitoring-test-key-0123456789"
METRICS_KEY = "metrics-scraper-key-9876543210"
HEADERS = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01", "Connection": "close"}
BODY = {"model": "claude-sonnet-4-5", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}]}
N = 24


def scrape(server: AmqServer, **headers) -> str:
    """The figures, as a scraper holding METRICS_KEY gets them (servers without one ignore it)."""
    headers = {"Authorization": f"Bearer {METRICS_KEY}", "Connection": "close", **headers}
    response = requests.get(server.url + "/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return response.text


def total(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    found = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                found += sample.value
    return found


def wait_for(condition, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except requests.RequestException:  # a worker restarting
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def scrape_until(server: AmqServer, condition, timeout: float = 10.0) -> str:
    """The first scrape that meets `condition`."""
    def met():
        text = scrape(server)
        return text if condition(text) else None
    return wait_for(met, timeout)


def post(server: AmqServer, **extra) -> requests.Response:
    return requests.post(server.url + "/v1/messages", json=dict(BODY, **extra), headers=HEADERS,
                         timeout=30)


def workers_of(server: AmqServer) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(server.process.pid)],
                         capture_output=True, text=True, check=False).stdout
    return [int(pid) for pid in out.split()]


def secrets_of(fake: FakeQ, cache: Path) -> list[str]:
    """Every credential amq held during the run: the fake's, the stored ones, the keys."""
    stored = json.loads(cache.read_text()) if cache.exists() else {}
    found = [fake.refresh_token, fake.client_secret, fake.access_token, API_KEY, METRICS_KEY]
    found += [str(stored.get(k) or "") for k in ("accessToken", "refreshToken", "previousRefreshToken",
                                                 "clientSecret")]
    return [s for s in found if s and len(s) >= 16]


@pytest.fixture(scope="module")
def metrics_dir(tmp_path_factory) -> Path:
    """Shared by both servers below: the second must start from empty counters."""
    return tmp_path_factory.mktemp("prometheus")


def test_json_logs_and_metrics_across_two_workers(tmp_path, metrics_dir):
    with FakeQ() as fake:
        fake.default_reply = typical_reply(delay=0.01)  # spreads concurrent requests over workers
        cache = tmp_path / "token.json"
        server = AmqServer(amq_env(fake, cache, LOG_LEVEL="INFO", LOG_FORMAT="json",
                                   PROXY_API_KEYS=API_KEY, METRICS_KEY=METRICS_KEY,
                                   PING_INTERVAL="0.3", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)),
                           tmp_path / "gunicorn.log", workers=2)
        try:
            request_ids: list[str] = []

            def client(count: int, stream: bool):
                for _ in range(count):
                    response = post(server, stream=stream)
                    assert response.status_code == 200
                    request_ids.append(response.headers["request-id"])

            threads = [threading.Thread(target=client, args=(N // 6, i % 2 == 0)) for i in range(6)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert len(request_ids) == N

            # A stream Q breaks off with an exception frame, mid-answer.
            fake.enqueue(raw_reply([encode_event("assistantResponseEvent", {"content": "Hel"}),
                                    encode_exception("ThrottlingException", "Rate exceeded")]))
            broken = post(server, stream=True)
            assert "rate_limit_error" in broken.text
            request_ids.append(broken.headers["request-id"])

            # A stream whose client hangs up while Q is still answering.
            fake.enqueue(text_reply("first words", chunks=2, hang=True))
            with requests.post(server.url + "/v1/messages", json=dict(BODY, stream=True),
                               headers=HEADERS, stream=True, timeout=30) as gone:
                next(gone.iter_content(None))
                request_ids.append(gone.headers["request-id"])
                assert wait_for(lambda: total(scrape(server), "amq_streams_in_flight") == 1)
            wait_for(lambda: total(scrape(server), "amq_requests_total", outcome="client_gone"))

            text = scrape_until(server, lambda t: total(
                t, "amq_requests_total", endpoint="/v1/messages") == N + 2)
            # Any worker answers the scrape with the sum of both.
            for _ in range(6):
                again = scrape(server)
                assert total(again, "amq_requests_total", endpoint="/v1/messages") == N + 2
            assert total(text, "amq_requests_total", endpoint="/v1/messages", status="200",
                         outcome="complete", model="claude-sonnet-4.5") == N // 2
            assert total(text, "amq_requests_total", endpoint="/v1/messages",
                         outcome="none") == N // 2
            assert total(text, "amq_requests_total", outcome="upstream_rate_limit_error") == 1
            assert total(text, "amq_requests_total", outcome="client_gone") == 1
            assert total(text, "amq_streams_in_flight") == 0
            assert total(text, "amq_upstream_errors_total", exception="ThrottlingException") == 1
            assert total(text, "amq_upstream_attempts_total", result="ok") >= N + 2
            assert total(text, "amq_request_duration_seconds_count", endpoint="/v1/messages") == N + 2
            assert total(text, "amq_time_to_first_byte_seconds_count", endpoint="/v1/messages") == N + 2
            assert total(text, "amq_time_to_first_byte_seconds_bucket", endpoint="/v1/messages",
                         le="600.0") == N + 2
            assert total(text, "amq_output_tokens_total", model="claude-sonnet-4.5") > N
            assert total(text, "amq_input_tokens_total", model="claude-sonnet-4.5") > N
            # typical_reply carries Q's meteringEvent of 0.0097 credits per answer
            assert total(text, "amq_credits_total") == pytest.approx(0.0097 * N)

            # With METRICS_KEY set every scraper needs it, local or not; a client key is not enough.
            forwarded = {"X-Forwarded-For": "203.0.113.9", "Connection": "close"}
            assert requests.get(server.url + "/metrics", headers=forwarded).status_code == 401
            assert requests.get(server.url + "/metrics", headers={"Connection": "close"}).status_code == 401
            assert requests.get(server.url + "/metrics", timeout=10, headers=dict(
                forwarded, Authorization=f"Bearer {API_KEY}")).status_code == 401
            scrape(server, **{"X-Forwarded-For": "203.0.113.9",
                              "Authorization": f"Bearer {METRICS_KEY}"})
            time.sleep(0.3)
        finally:
            server.stop()
        log = server.log_path.read_text()

    entries = [json.loads(line) for line in log.splitlines() if line.strip()]  # every line parses
    access = [e for e in entries if e["logger"] == "amq.access"]
    by_id = {}
    for entry in access:
        by_id.setdefault(entry["request_id"], []).append(entry)
    assert all(len(by_id.get(rid, [])) == 1 for rid in request_ids), "one access line per request"
    assert len({by_id[rid][0]["process"] for rid in request_ids}) == 2, "both workers served"
    assert {by_id[request_ids[-2]][0]["outcome"], by_id[request_ids[-1]][0]["outcome"]} == {
        "upstream_rate_limit_error", "client_gone"}
    line = by_id[request_ids[0]][0]
    assert line["status"] == 200 and line["model"] == "claude-sonnet-4.5" and line["account"] == "default"
    assert line["client"] == "127.0.0.1" and re.fullmatch(r"[0-9a-f]{8}", line["key"])
    assert line["output_tokens"] > 0 and line["duration_ms"] >= line["ttfb_ms"] > 0
    assert any(e["logger"] == "gunicorn.error" for e in entries)  # gunicorn's lines too...
    assert not any(e["logger"] == "gunicorn.access" for e in entries)  # ...but one access line
    metrics_text = text
    for secret in secrets_of(fake, cache):
        assert secret not in log and secret not in metrics_text
    assert "Traceback" not in log


def test_text_log_and_a_fresh_start(tmp_path, metrics_dir):
    """A restart empties the metrics directory; dead workers' streams leave the gauge, their
    counters stay; the default log is readable lines."""
    with FakeQ() as fake:
        cache = tmp_path / "token.json"
        server = AmqServer(amq_env(fake, cache, LOG_LEVEL="INFO", PING_INTERVAL="0.3",
                                   PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)),
                           tmp_path / "gunicorn.log", workers=2)
        try:
            assert total(scrape(server), "amq_requests_total", endpoint="/v1/messages") == 0
            ok = post(server)
            assert ok.status_code == 200
            fake.enqueue(text_reply("first words", chunks=2, hang=True))
            with requests.post(server.url + "/v1/messages", json=dict(BODY, stream=True),
                               headers=HEADERS, stream=True, timeout=30) as held:
                next(held.iter_content(None))
                assert wait_for(lambda: total(scrape(server), "amq_streams_in_flight") == 1)
                for pid in workers_of(server):  # both, so the stream's worker is among them
                    os.kill(pid, signal.SIGKILL)
                # the respawned workers answer; the dead ones' stream is no longer in flight
                text = scrape_until(server, lambda t: total(t, "amq_streams_in_flight") == 0,
                                    timeout=30)
            assert total(text, "amq_requests_total", endpoint="/v1/messages", outcome="none") == 1
            log = server.log()
        finally:
            server.stop()

    line = next(line for line in log.splitlines() if ok.headers["request-id"] in line)
    assert re.search(r"\[\d+\] INFO amq\.access: POST /v1/messages 200 outcome=none "
                     r"model=claude-sonnet-4\.5 account=default input_tokens=\d+ output_tokens=\d+ "
                     r"credits=- ttfb_ms=[\d.]+ duration_ms=[\d.]+ client=127\.0\.0\.1 key=[0-9a-f]{8} "
                     r"id=req_[0-9a-f]{32}$", line), line
    assert not line.lstrip().startswith("{")
    for secret in secrets_of(fake, cache):
        assert secret not in log
