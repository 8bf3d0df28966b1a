"""Several amq instances (real gunicorn -k gevent) sharing only a real redis-server: a rotating
login refreshed once per expiry, a lock holder killed mid-refresh, and Redis stopped under load."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import requests

from amq.credentials.redis_store import RedisStore
from tests.fakeq import FakeQ, text_reply
from tests.redis_server import RedisServer
from tests.support import AmqServer, refreshes, seed_login, sse_events

BODY = {"model": "claude-sonnet-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
HEADERS = {"Connection": "close", "x-api-key": "x", "anthropic-version": "2023-06-01"}
PREFIX = "amq-test:"


def instance_env(fake: FakeQ, redis: RedisServer, home: Path, **extra) -> dict:
    """An instance that shares nothing but Redis: its own HOME and temp dir, no login in env."""
    home.mkdir(parents=True, exist_ok=True)
    env = {"HOME": str(home), "TMPDIR": str(home), "REDIS_URL": redis.url, "REDIS_KEY_PREFIX": PREFIX,
           "AMAZONQ_API_ENDPOINT": fake.url, "AMAZONQ_TOKEN_ENDPOINT": fake.token_url,
           "AMAZONQ_TOKEN_CACHE": str(home / "never-used.json"), "LOG_LEVEL": "INFO"}
    env.update(extra)
    return env


def store_login(redis: RedisServer, fake: FakeQ, **extra) -> RedisStore:
    store = RedisStore(redis.client(), prefix=PREFIX)
    seed_login(store, fake, **extra)
    return store


def worker_pids(server: AmqServer) -> list[int]:
    path = f"/proc/{server.process.pid}/task/{server.process.pid}/children"
    return [int(pid) for pid in Path(path).read_text().split()]


TTL = 4.0  # seconds an access token lives at the fake
MARGIN = TTL * 0.2  # amq refreshes this long before expiry (TokenManager.MARGIN_FRACTION)
DURATION = float(os.environ.get("AMQ_ROTATION_SECONDS", "30"))  # the issue asks a minute; CI: 30 s


def test_two_instances_share_one_rotating_login_through_redis(tmp_path):
    """Two instances x 2 workers, a refresh token that rotates at every refresh (only the newest
    works), access tokens living 4 s: no failure, one refresh per expiry, Redis ends with the
    refresh token the service accepts."""
    with RedisServer(tmp_path / "redis") as redis, FakeQ(access_token_ttl=TTL, rotate_refresh_tokens=True) as fake:
        fake.token_delay = 0.05  # rotated before the answer arrives, widening any race
        store = store_login(redis, fake)
        servers = [AmqServer(instance_env(fake, redis, tmp_path / f"home{i}"), tmp_path / f"amq{i}.log", workers=2)
                   for i in range(2)]
        statuses: list[int] = []
        started = time.monotonic()

        def client(index: int):
            while time.monotonic() - started < DURATION:
                server = servers[(index + len(statuses)) % 2]
                response = requests.post(server.url + "/v1/messages", json=BODY, timeout=30, headers=HEADERS)
                statuses.append(response.status_code)
                time.sleep(0.02)

        try:
            threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(DURATION + 60)
            logs = [server.log() for server in servers]
        finally:
            for server in servers:
                server.stop()

        done = refreshes(fake)
        gaps = [b["at"] - a["at"] for a, b in zip(done, done[1:], strict=False)]
        served = [set(re.findall(r"\[(\d+)\] INFO amq\.access: POST /v1/messages 200", log)) for log in logs]
        summary = (f"{len(statuses)} requests {sorted(set(statuses))}, {len(done)} refreshes, gaps "
                   f"{[round(g, 2) for g in gaps][:30]}, workers per instance {[len(s) for s in served]}, "
                   f"{fake.bearer_rejections} expired-token rejections")
        print(summary)
        assert len(statuses) >= 300 and set(statuses) == {200}, summary
        assert [e["error"] for e in done] == [None] * len(done), summary  # never invalid_grant
        assert all(len(workers) == 2 for workers in served), summary  # all four workers served
        # one refresh per expiry: a second refresh of the same expiry would follow within ms
        assert all(gap >= (TTL - MARGIN) / 2 for gap in gaps), summary
        assert len(done) >= int(DURATION / TTL), summary  # and the login was kept fresh throughout
        assert len(done) <= DURATION / (TTL - MARGIN) + 2, summary  # exactly one per expiry
        stored = store.load()
        assert stored["refreshToken"] == fake.refresh_token and fake.refresh_token_valid(stored["refreshToken"])
        assert "refreshStartedAt" not in stored
        assert not any("Traceback" in log for log in logs)


def test_a_lock_holder_killed_during_create_token_frees_the_login_within_the_lock_ttl(tmp_path):
    """Instance A's worker takes the lock and sends CreateToken; the fake holds it open (issuing
    nothing) and A's worker is SIGKILLed. B waits for the lock to expire, then refreshes with the
    stored refresh token: nothing is lost."""
    settings = {"UPSTREAM_CONNECT_TIMEOUT": "1", "UPSTREAM_READ_TIMEOUT": "5"}  # lock TTL 1+5+10 = 16 s
    ttl = 16.0
    with RedisServer(tmp_path / "redis") as redis, FakeQ(rotate_refresh_tokens=True) as fake:
        store = store_login(redis, fake, accessToken="aoa-expired", expiresAt=time.time() - 10,
                            obtainedAt=time.time() - 3610)
        first = AmqServer(instance_env(fake, redis, tmp_path / "a", **settings), tmp_path / "a.log", workers=1)
        second = AmqServer(instance_env(fake, redis, tmp_path / "b", **settings), tmp_path / "b.log", workers=1)
        try:
            fake.hold_token_requests = 1
            doomed = threading.Thread(target=lambda: _post_quietly(first.url), daemon=True)
            doomed.start()
            deadline = time.monotonic() + 20
            while fake.held_token_requests < 1:
                assert time.monotonic() < deadline, first.log()
                time.sleep(0.02)
            lock_key = PREFIX + "lock:default"
            assert redis.client().pttl(lock_key) > 0  # A holds the lock
            for pid in worker_pids(first):
                os.kill(pid, signal.SIGKILL)
            killed_at = time.monotonic()
            response = requests.post(second.url + "/v1/messages", json=BODY, timeout=60, headers=HEADERS)
            waited = time.monotonic() - killed_at
            log_b = second.log()
        finally:
            fake.release_held.set()
            first.stop()
            second.stop()
        assert response.status_code == 200, (response.text, log_b)
        assert waited < ttl + 5, waited  # B went on within the lock's TTL
        assert waited > 2, waited  # ...after the dead holder's lock expired (it really was held)
        stored = store.load()
        assert fake.refresh_token_valid(stored["refreshToken"]) and "refreshStartedAt" not in stored
        assert [e["error"] for e in refreshes(fake)] == [None]  # the held call issued nothing


def _post_quietly(url: str) -> None:
    with contextlib.suppress(requests.RequestException):
        requests.post(url + "/v1/messages", json=BODY, timeout=60, headers=HEADERS)


def test_redis_stopped_and_started_under_load(tmp_path):
    """Redis goes away for a few seconds and comes back (AOF keeps the login): streams in flight
    finish, requests served from memory succeed, those needing a refresh get a 503 naming the
    store, and amq recovers by itself."""
    ttl = 3.0
    with RedisServer(tmp_path / "redis", durable=True) as redis, FakeQ(access_token_ttl=ttl) as fake:
        store_login(redis, fake)
        server = AmqServer(instance_env(fake, redis, tmp_path / "home"), tmp_path / "amq.log", workers=2)
        results: list[tuple[float, int, str]] = []
        stop = threading.Event()

        def client():
            while not stop.is_set():
                try:
                    response = requests.post(server.url + "/v1/messages", json=BODY, timeout=30, headers=HEADERS)
                    results.append((time.monotonic(), response.status_code, response.text))
                except requests.RequestException as exc:  # a dropped connection would be a bug
                    results.append((time.monotonic(), -1, repr(exc)))
                time.sleep(0.05)

        try:
            requests.post(server.url + "/v1/messages", json=BODY, timeout=30, headers=HEADERS)
            fake.enqueue(text_reply("a slow stream that outlives the outage", chunks=6, delay=0.5))
            stream_result = {}

            def stream():
                response = requests.post(server.url + "/v1/messages", json=dict(BODY, stream=True), timeout=30,
                                         headers=HEADERS)
                stream_result["status"], stream_result["events"] = response.status_code, sse_events(response)

            streamer = threading.Thread(target=stream)
            streamer.start()
            time.sleep(0.3)
            threads = [threading.Thread(target=client) for _ in range(4)]
            for thread in threads:
                thread.start()
            time.sleep(1.0)
            redis.stop()
            outage = (time.monotonic(), None)
            time.sleep(ttl * 2)  # every token in memory expires during the outage
            redis.start()
            outage = (outage[0], time.monotonic())
            time.sleep(ttl * 2)
            stop.set()
            for thread in threads:
                thread.join(40)
            streamer.join(40)
            log = server.log()
        finally:
            stop.set()
            server.stop()

    assert stream_result["status"] == 200
    assert [name for name, _ in stream_result["events"]][-1] == "message_stop"
    during = [r for r in results if outage[0] < r[0] < outage[1]]
    after = [r for r in results if r[0] > outage[1] + 2]
    statuses = [status for _, status, _ in during]
    print(f"{len(results)} requests; during the outage {len(during)}: {statuses.count(200)} served from "
          f"memory, {statuses.count(503)} store unreachable; after it {len(after)}")
    assert all(status in (200, 503) for _, status, _ in results), [r for r in results if r[1] not in (200, 503)]
    unavailable = [json.loads(text) for _, status, text in results if status == 503]
    assert unavailable, "no request needed a refresh during the outage"
    assert all(body["type"] == "error" and "credential store" in body["error"]["message"]
               and "unreachable" in body["error"]["message"] for body in unavailable)
    assert any(status == 200 for _, status, _ in during)  # tokens in memory kept serving
    assert after and all(status == 200 for _, status, _ in after), after[:3]  # recovered by itself
    assert "Traceback" not in log



def test_a_worker_restarted_during_a_redis_outage_serves_503_then_recovers(tmp_path):
    """gunicorn halts when a worker fails to boot; a worker that starts while Redis is away must
    boot anyway (the master's start-up check passed), answer 503, and recover by itself."""
    with RedisServer(tmp_path / "redis", durable=True) as redis, FakeQ() as fake:
        store_login(redis, fake)
        server = AmqServer(instance_env(fake, redis, tmp_path / "home"), tmp_path / "amq.log", workers=1)
        try:
            assert requests.post(server.url + "/v1/messages", json=BODY, timeout=30, headers=HEADERS).ok
            redis.stop()
            old = worker_pids(server)
            os.kill(old[0], signal.SIGKILL)
            deadline = time.monotonic() + 20
            while worker_pids(server) in ([], old):
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.1)
            time.sleep(1)
            during = requests.post(server.url + "/v1/messages", json=BODY, timeout=30, headers=HEADERS)
            redis.start()
            after = requests.post(server.url + "/v1/messages", json=BODY, timeout=30, headers=HEADERS)
            log = server.log()
        finally:
            server.stop()
    assert during.status_code == 503 and "unreachable" in during.json()["error"]["message"], during.text
    assert after.status_code == 200, after.text
    assert server.process.returncode is not None and "Traceback" not in log
