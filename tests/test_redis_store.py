"""The token manager on the Redis store (a real redis-server): shared refreshes, fencing, no round
trip on the request path, outages, and start-up faults named in one line."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
import requests

from amq.config import load_settings
from amq.credentials.manager import TokenManager
from amq.credentials.redis_store import RedisStore, redact
from amq.errors import StoreUnavailable
from app import create_app
from tests.fakeq import FakeQ
from tests.redis_server import RedisServer, free_port
from tests.support import ROOT, refreshes, seed_login


def settings_for(url: str, fake: FakeQ, prefix: str, **extra):
    env = {"REDIS_URL": url, "REDIS_KEY_PREFIX": prefix, "AMAZONQ_TOKEN_ENDPOINT": fake.token_url,
           "AMAZONQ_TOKEN_CACHE": "/nonexistent/never-used.json"}
    env.update(extra)
    return load_settings(env)


@pytest.fixture
def prefix():
    return f"t-{uuid.uuid4().hex[:8]}:"


def manager_for(server, fake, prefix, *, seed: bool = True, **kwargs) -> TokenManager:
    """A manager on the Redis store; `seed` first stores a login there if none is."""
    if seed and not RedisStore(server.client(), prefix=prefix).load():
        seed_login(RedisStore(server.client(), prefix=prefix), fake)
    settings = settings_for(server.url, fake, prefix)
    return TokenManager.from_settings(settings, requests.Session(), **kwargs)


def test_managers_sharing_redis_refresh_once_and_store_the_rotated_token(redis_server, fake, prefix):
    first = manager_for(redis_server, fake, prefix)
    managers = [manager_for(redis_server, fake, prefix) for _ in range(4)]
    results: list[str] = []
    threads = [threading.Thread(target=lambda m=m: results.append(m.get_token())) for m in managers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(refreshes(fake)) == 1 and len(set(results)) == 1 and len(results) == 4
    stored = first.store.load()
    assert stored["refreshToken"] == fake.refresh_token and fake.refresh_token_valid(stored["refreshToken"])
    assert "refreshStartedAt" not in stored and stored["version"] >= 3  # login, write-ahead, answer


def test_the_request_path_costs_no_redis_round_trip_while_the_token_is_fresh(redis_server, fake, prefix):
    manager = manager_for(redis_server, fake, prefix)
    manager.get_token()
    stats = redis_server.client()
    before = int(stats.info("stats")["total_commands_processed"])
    started = time.monotonic()
    for _ in range(2000):
        manager.get_token()
    elapsed = time.monotonic() - started
    after = int(stats.info("stats")["total_commands_processed"])
    # INFO itself counts once; a version check is allowed every RECHECK_INTERVAL seconds.
    assert after - before <= 1 + int(elapsed / TokenManager.RECHECK_INTERVAL + 1)


def test_a_worker_notices_a_new_login_within_seconds(redis_server, fake, prefix):
    clock = [time.monotonic()]
    manager = manager_for(redis_server, fake, prefix, monotonic=lambda: clock[0])
    old = manager.get_token()
    seed_login(manager.store, fake, refreshToken=fake.new_login(), accessToken="at-new-login",
               expiresAt=time.time() + 3600, obtainedAt=time.time())
    assert manager.get_token() == old  # within the interval: no look at Redis
    clock[0] += TokenManager.RECHECK_INTERVAL + 0.1
    assert manager.get_token() == "at-new-login"


def test_a_writer_whose_lock_expired_cannot_overwrite_a_newer_login(redis_server, fake, prefix, caplog):
    """A pauses after CreateToken answered, past its lock's TTL; meanwhile a new login is stored.
    A's write is refused by the version fence; the new login stays; A's token is named lost."""
    settings = settings_for(redis_server.url, fake, prefix)
    store = RedisStore(redis_server.client(), prefix=prefix, location=redact(redis_server.url),
                       lock_ttl=0.5, lock_wait=5)
    seed_login(store, fake)
    new_login = fake.new_login()

    class PausingSession(requests.Session):
        def post(self, *args, **kwargs):
            response = super().post(*args, **kwargs)
            time.sleep(1.0)  # the lock (TTL 0.5 s) expires meanwhile
            seed_login(store, fake, refreshToken=new_login)
            return response

    paused = TokenManager.from_settings(settings, PausingSession(), store=store)
    with caplog.at_level(logging.ERROR, logger="amq"):
        paused.get_token()  # A still serves its own (valid) access token
    stored = store.load()
    assert stored["refreshToken"] == new_login
    assert "could not be stored" in caplog.text and "default" in caplog.text
    assert fake.refresh_token not in caplog.text and new_login not in caplog.text


def test_redis_gone_fresh_tokens_keep_working_refreshes_get_503_then_recovery(tmp_path, fake, prefix):
    with RedisServer(tmp_path / "r", durable=True) as server:
        manager = manager_for(server, fake, prefix)
        token = manager.get_token()
        server.stop()
        manager._next_check = 0  # force the periodic version check now
        assert manager.get_token() == token  # served from memory; the failed check is ignored
        manager._token = manager._token._replace(expires_at=time.time() - 1)  # needs a refresh
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as info:
            manager.get_token()
        assert time.monotonic() - started < 10
        assert info.value.status == 503 and "unreachable" in info.value.message
        assert "redis" in info.value.message.lower()
        server.start()  # same port, AOF kept the login
        assert fake.access_token_valid(manager.get_token())
        assert manager.store.load()["refreshToken"] == fake.refresh_token


def run_app(env: dict, tmp_path, command=None):
    full = {k: v for k, v in os.environ.items() if not k.startswith(("AMAZONQ_", "REDIS_"))}
    full.update({"HOME": str(tmp_path), "AMAZONQ_REFRESH_TOKEN": "r", "AMAZONQ_CLIENT_ID": "c",
                 "AMAZONQ_CLIENT_SECRET": "s", "AMAZONQ_TOKEN_CACHE": str(tmp_path / "t.json")})
    full.update(env)
    command = command or [sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:0", "wsgi:app"]
    return subprocess.run(command, cwd=ROOT, env=full, capture_output=True, text=True, timeout=60)


def test_gunicorn_names_redis_url_in_one_line_when_redis_is_unreachable(tmp_path):
    result = run_app({"REDIS_URL": f"redis://:hunter2@127.0.0.1:{free_port()}/0"}, tmp_path)
    assert result.returncode != 0
    assert "amq: configuration error: REDIS_URL: cannot reach Redis at redis://:***@127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr and "hunter2" not in result.stderr


@pytest.mark.parametrize("problem", ["password", "database"])
def test_a_wrong_password_or_database_is_named_in_one_line(tmp_path, problem):
    with RedisServer(tmp_path / "r", password="right-pass") as server:
        url = (f"redis://:wrong-pass@127.0.0.1:{server.port}/0" if problem == "password"
               else f"redis://:right-pass@127.0.0.1:{server.port}/99")
        with pytest.raises(SystemExit) as info:
            create_app({"REDIS_URL": url, "AMAZONQ_REFRESH_TOKEN": "r", "AMAZONQ_CLIENT_ID": "c",
                        "AMAZONQ_CLIENT_SECRET": "s"})
    message = str(info.value)
    assert message.startswith("amq: configuration error: REDIS_URL:") and "\n" not in message
    assert ("password" in message) if problem == "password" else ("database" in message)
    assert "wrong-pass" not in message and "right-pass" not in message


def test_start_warns_once_when_redis_keeps_no_data(redis_server, tmp_path):
    result = run_app({"REDIS_URL": redis_server.url, "REDIS_KEY_PREFIX": "warn-test:"}, tmp_path,
                     [sys.executable, "-c", "import app; app.check_settings()"])
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "persistence" in line]
    assert len(lines) == 1 and "WARNING" in lines[0] and "loses the login" in lines[0]


def test_start_reports_persistence_when_aof_is_on(tmp_path):
    with RedisServer(tmp_path / "r", durable=True) as server:
        result = run_app({"REDIS_URL": server.url}, tmp_path,
                         [sys.executable, "-c", "import app; app.check_settings()"])
    assert result.returncode == 0, result.stderr
    assert "append-only file (AOF) on" in result.stderr and "WARNING" not in result.stderr


def test_tls_verify_none_is_only_for_rediss_and_settings_reject_nonsense():
    from amq.config import ConfigError
    from amq.credentials.redis_store import connect

    settings = load_settings({"REDIS_URL": "rediss://:p@example.invalid:6380/0", "REDIS_TLS_VERIFY": "none"})
    kwargs = connect(settings).connection_pool.connection_kwargs
    assert kwargs["ssl_cert_reqs"] == 0 and kwargs["ssl_check_hostname"] is False
    strict = connect(load_settings({"REDIS_URL": "rediss://example.invalid:6380/0"}))
    assert strict.connection_pool.connection_kwargs.get("ssl_cert_reqs", "required") != 0
    with pytest.raises(ConfigError, match="REDIS_TLS_VERIFY"):
        load_settings({"REDIS_TLS_VERIFY": "maybe"})
    with pytest.raises(ConfigError, match="REDIS_URL"):
        load_settings({"REDIS_URL": "http://localhost"})


# --------------------------------------------------------------------------- the commands on Redis

def invoke(fake, tmp_path, *args, **settings):
    config = {"AMAZONQ_TOKEN_CACHE": str(tmp_path / "store.json"), "AMAZONQ_TOKEN_ENDPOINT": fake.token_url,
              "AMAZONQ_API_ENDPOINT": fake.url, **settings}
    return create_app(config, require_credentials=False).test_cli_runner().invoke(args=list(args))


def test_login_into_redis_then_status_names_backend_lock_refresh_and_persistence(tmp_path, fake, prefix):
    fake.auto_approve = True
    with RedisServer(tmp_path / "r", password="pw-secret") as server:
        redis_settings = {"REDIS_URL": server.url, "REDIS_KEY_PREFIX": prefix}
        login = invoke(fake, tmp_path, "login", "--oidc-url", fake.url, **redis_settings)
        assert login.exit_code == 0, login.output
        assert f"Redis at redis://:***@127.0.0.1:{server.port}/0 (account default)" in login.output
        assert not (tmp_path / "store.json").exists()  # nothing went to the file store
        stored = RedisStore(server.client(), prefix=prefix).load()
        assert stored["source"] == "login" and fake.refresh_token_valid(stored["refreshToken"])

        status = invoke(fake, tmp_path, "status", **redis_settings)
    assert status.exit_code == 0, status.output
    assert f"store: redis redis://:***@127.0.0.1:{server.port}/0 (key prefix {prefix})" in status.output
    assert f"lock: {prefix}lock:default: free" in status.output
    assert "persistence: none" in status.output and "warning: this Redis reports no persistence" in status.output
    assert "last refresh: " in status.output and "live check: OK" in status.output
    secrets = [fake.client_secret, stored["refreshToken"], stored["clientSecret"], "pw-secret"]
    assert not [s for s in secrets if s in login.output + status.output]


def test_copy_login_from_the_file_store_into_redis_and_back(tmp_path, fake, redis_server, prefix):
    from amq.credentials.store import FileStore

    files = FileStore(str(tmp_path / "store.json"))
    seed_login(files, fake)
    redis_settings = {"REDIS_URL": redis_server.url, "REDIS_KEY_PREFIX": prefix}
    copied = invoke(fake, tmp_path, "copy-login", "--to", "redis", **redis_settings)
    assert copied.exit_code == 0, copied.output
    in_redis = RedisStore(redis_server.client(), prefix=prefix)
    assert in_redis.load()["refreshToken"] == fake.refresh_token
    assert fake.refresh_token not in copied.output and fake.client_secret not in copied.output

    # serve from Redis: the refresh rotates the token there; copy the newer login back
    status = invoke(fake, tmp_path, "status", **redis_settings)
    assert status.exit_code == 0, status.output
    rotated = in_redis.load()["refreshToken"]
    assert rotated != files.load()["refreshToken"]
    refused = invoke(fake, tmp_path, "copy-login", "--to", "file", **redis_settings)
    assert refused.exit_code != 0 and "--force" in refused.output
    back = invoke(fake, tmp_path, "copy-login", "--to", "file", "--force", **redis_settings)
    assert back.exit_code == 0, back.output
    assert files.load()["refreshToken"] == rotated and fake.refresh_token_valid(rotated)


def test_copy_login_says_what_is_missing(tmp_path, fake, redis_server, prefix):
    no_redis = invoke(fake, tmp_path, "copy-login", "--to", "redis")
    assert no_redis.exit_code != 0 and "REDIS_URL is not set" in no_redis.output
    empty = invoke(fake, tmp_path, "copy-login", "--to", "redis", REDIS_URL=redis_server.url,
                   REDIS_KEY_PREFIX=prefix)
    assert empty.exit_code != 0 and "holds no login to copy" in empty.output


GEVENT_WAITER = """
from gevent import monkey
monkey.patch_all()
import sys, time, gevent, redis
sys.path.insert(0, sys.argv[1])
from amq.credentials.redis_store import RedisStore
store = RedisStore(redis.Redis.from_url(sys.argv[2]), prefix=sys.argv[3], lock_ttl=10, lock_wait=5)
holder = store.lock()
holder.acquire()
ticks = []
def ticker():
    while len(ticks) < 1000:
        ticks.append(time.monotonic())
        gevent.sleep(0.01)
def waiter():
    store.lock().acquire()
    ticks.append("locked")
gevent.spawn(ticker)
waiting = gevent.spawn(waiter)
gevent.sleep(0.05)
start = len(ticks)
gevent.spawn_later(0.4, holder.release)
waiting.join(5)
print(len([t for t in ticks[start:] if t != "locked"]), "locked" in ticks)
"""


def test_waiting_for_the_redis_lock_keeps_a_gevent_worker_serving(redis_server, prefix):
    result = subprocess.run([sys.executable, "-c", GEVENT_WAITER, str(ROOT), redis_server.url, prefix],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    ticks, locked = result.stdout.split()
    assert locked == "True" and int(ticks) >= 10  # ~40 expected in 0.4 s


@pytest.mark.parametrize("url, expected", [
    ("redis://:hunter2@host:6379/0", "redis://:***@host:6379/0"),
    ("redis://user:hunter2@host/0", "redis://user:***@host/0"),
    ("redis://host:6379/0?password=hunter2", "redis://host:6379/0?password=***"),
    ("rediss://user@host/1?username=u&password=hunter2&ssl_cert_reqs=none",
     "rediss://user@host/1?username=u&password=***&ssl_cert_reqs=none"),
    ("redis://host/0?PASSWORD=hunter2", "redis://host/0?PASSWORD=***"),
    ("redis://host:6379/0", "redis://host:6379/0"),
])
def test_redact_hides_passwords_in_the_authority_and_the_query_string(url, expected):
    assert redact(url) == expected and "hunter2" not in redact(url)


def _requests_counted(client, prefix: str) -> int:
    return sum(int(client.hget(key, "requests") or 0) for key in client.keys(prefix + "activity:*"))


def test_a_stalled_redis_fails_fast_after_one_timeout_and_recovers_after_it_resumes(tmp_path, fake, prefix):
    """SIGSTOP: the server accepts connections but answers nothing (a hung or overloaded Redis)."""
    with RedisServer(tmp_path / "r") as server:
        store = RedisStore.from_settings(settings_for(server.url, fake, prefix))
        assert store.version() == 0
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailable):
                store.version()
            assert time.monotonic() - started < 1.0  # one short socket timeout, not retried
            for _ in range(20):  # then at once, while the breaker is open
                started = time.monotonic()
                with pytest.raises(StoreUnavailable):
                    store.load()
                assert time.monotonic() - started < 0.05
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        deadline = time.monotonic() + 5
        while True:
            try:
                assert store.version() == 0
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "the store did not recover after Redis resumed"
                time.sleep(0.1)


def test_requests_served_from_memory_stay_fast_while_redis_is_stalled(tmp_path, fake, prefix):
    from tests.support import AmqServer

    with RedisServer(tmp_path / "r") as server:
        seed_login(RedisStore(server.client(), prefix=prefix), fake)
        env = {"HOME": str(tmp_path), "REDIS_URL": server.url, "REDIS_KEY_PREFIX": prefix,
               "AMAZONQ_API_ENDPOINT": fake.url, "AMAZONQ_TOKEN_ENDPOINT": fake.token_url,
               "AMAZONQ_TOKEN_CACHE": str(tmp_path / "never-used.json"), "AMAZONQ_POOL_SYNC_INTERVAL": "0.2"}
        amq = AmqServer(env, tmp_path / "amq.log")

        def post(text: str) -> float:
            started = time.monotonic()
            answer = requests.post(amq.url + "/v1/messages", timeout=30, json={
                "model": "claude-sonnet-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": text}]})
            assert answer.status_code == 200, answer.text
            return time.monotonic() - started

        try:
            post("warm up")  # the access token is now in memory
            os.kill(server.process.pid, signal.SIGSTOP)
            try:
                stalled_until = time.monotonic() + 4
                durations = []
                while time.monotonic() < stalled_until:
                    durations.append(post(f"stalled {len(durations)}"))
                    time.sleep(0.1)
                assert len(durations) >= 4 and max(durations) < 1.0, durations
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
            before = _requests_counted(server.client(), prefix)
            deadline = time.monotonic() + 40
            while _requests_counted(server.client(), prefix) <= before:  # its syncs reach Redis again
                assert time.monotonic() < deadline, "amq did not write to Redis again after it resumed"
                post("resumed")
                time.sleep(0.3)
        finally:
            amq.stop()


def test_copy_login_refuses_when_the_destination_changes_while_it_copies(tmp_path, fake, redis_server, prefix,
                                                                         monkeypatch):
    """A running instance refreshes (rotates the token in Redis) between copy-login's read of the
    destination and its write: the copy must not put the old token back."""
    from amq.credentials.store import FileStore

    files = FileStore(str(tmp_path / "store.json"))
    login = {"clientId": fake.client_id, "clientSecret": fake.client_secret,
             "refreshToken": fake.refresh_token, "source": "login", "seed": ""}
    files.replace_login(login)
    in_redis = RedisStore(redis_server.client(), prefix=prefix)
    in_redis.replace_login(login)  # both hold the same login: the copy needs no --force
    real_load, calls = RedisStore.load, []

    def load_then_a_refresh_elsewhere(self, account="default"):
        stored = real_load(self, account)
        if not calls:
            calls.append(account)
            RedisStore(redis_server.client(), prefix=prefix).save(dict(login, refreshToken="rotated"), account)
        return stored

    app = create_app({"AMAZONQ_TOKEN_CACHE": str(tmp_path / "store.json"), "AMAZONQ_TOKEN_ENDPOINT": fake.token_url,
                      "AMAZONQ_API_ENDPOINT": fake.url, "REDIS_URL": redis_server.url,
                      "REDIS_KEY_PREFIX": prefix}, require_credentials=False)
    monkeypatch.setattr(RedisStore, "load", load_then_a_refresh_elsewhere)  # from here on: the command
    copied = app.test_cli_runner().invoke(args=["copy-login", "--to", "redis"])
    assert calls
    assert real_load(in_redis)["refreshToken"] == "rotated"
    assert copied.exit_code != 0 and "changed while" in copied.output and "nothing was copied" in copied.output


def test_the_breaker_backs_off_doubling_to_its_cap_lets_one_trial_through_and_closes_on_success():
    import redis

    from amq.credentials.redis_store import Breaker

    now = [0.0]
    breaker = Breaker(clock=lambda: now[0], first=1.0, most=4.0, slow=0.2)

    def stalls():
        now[0] += 0.5  # a socket timeout
        raise redis.TimeoutError("Timeout reading from socket")

    def refused():
        raise redis.ConnectionError("Connection refused")

    for _ in range(3):  # a refused connection costs nothing: it never opens the breaker
        with pytest.raises(redis.ConnectionError, match="refused"):
            breaker.call(refused)
    ran = []  # when a stalled call really went to Redis; every other call failed at once

    def stalls_and_logs():
        ran.append(now[0])
        stalls()

    while len(ran) < 5:
        before = now[0]
        with pytest.raises((redis.TimeoutError, redis.ConnectionError)) as info:
            breaker.call(stalls_and_logs)
        if isinstance(info.value, redis.ConnectionError):
            assert "failing fast" in str(info.value) and now[0] == before
        now[0] += 0.25
    waits = [round(b - (a + 0.5), 2) for a, b in zip(ran, ran[1:], strict=False)]
    assert waits == [1.0, 2.0, 4.0, 4.0]
    with pytest.raises(redis.ConnectionError, match="failing fast"):
        breaker.call(lambda: "answer")
    now[0] = ran[-1] + 0.5 + 4.0  # the back-off is over: one trial goes through
    assert breaker.call(lambda: "answer") == "answer"  # and succeeds: closed
    assert breaker.call(lambda: "again") == "again"
    now[0] += 100.0
    with pytest.raises(redis.TimeoutError):
        breaker.call(stalls)  # opens it again
    now[0] += 100.0

    def trial_while_another_call_comes():
        with pytest.raises(redis.ConnectionError, match="failing fast"):
            breaker.call(lambda: "meanwhile")  # only one trial at a time
        return "trial"

    assert breaker.call(trial_while_another_call_comes) == "trial"
