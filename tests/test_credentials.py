"""The file store shared by processes: lock, re-read, atomic writes (SIGKILL mid-refresh: test_store_contract.py)."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import requests

from amq.config import load_settings
from amq.credentials.manager import TokenManager
from amq.credentials.oidc import RefreshRejected
from amq.credentials.store import FileLock, FileStore
from amq.errors import GatewayTimeout
from tests.support import ROOT, refreshes, seed_login


class Clock:
    def __init__(self, now=None):
        self.now = time.time() if now is None else now

    def __call__(self):
        return self.now


def store_login(path, fake, **extra) -> FileStore:
    """A store holding the fake's login, as `flask --app app login` leaves it."""
    cache = FileStore(str(path))
    seed_login(cache, fake, **extra)
    return cache


def manager_for(path, fake, clock=None, **env) -> TokenManager:
    settings = load_settings({"AMAZONQ_TOKEN_CACHE": str(path), "AMAZONQ_TOKEN_ENDPOINT": fake.token_url, **env})
    return TokenManager.from_settings(settings, requests.Session(), **({"clock": clock} if clock else {}))


def run_all(functions):
    results, errors = [None] * len(functions), []

    def run(i):
        try:
            results[i] = functions[i]()
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(functions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    return results


def test_managers_of_separate_processes_refresh_once_and_follow_the_rotation(tmp_path, fake):
    """Eight managers (each with its own in-process lock, as in eight workers) share one store:
    the file lock alone must serialise them; every expiry costs exactly one refresh."""
    fake.token_delay = 0.05  # the service has rotated while its answer is still on the way
    store_login(tmp_path / "store.json", fake)
    clock = Clock()
    managers = [manager_for(tmp_path / "store.json", fake, clock) for _ in range(8)]
    for round_ in range(3):
        tokens = run_all([m.get_token for m in managers])
        assert len(set(tokens)) == 1 and fake.access_token_valid(tokens[0])
        assert [e["error"] for e in refreshes(fake)] == [None] * (round_ + 1)
        clock.now += 3600  # every token expires
    assert fake.refresh_token_valid(json.loads((tmp_path / "store.json").read_text())["refreshToken"])


def test_a_worker_with_a_fresh_token_in_the_store_does_not_refresh(tmp_path, fake):
    store_login(tmp_path / "store.json", fake)
    first, second = (manager_for(tmp_path / "store.json", fake) for _ in range(2))
    token = first.get_token()
    assert second.get_token() == token
    assert len(refreshes(fake)) == 1


def test_rejection_elsewhere_is_not_refreshed_twice(tmp_path, fake):
    store_login(tmp_path / "store.json", fake)
    first, second = (manager_for(tmp_path / "store.json", fake) for _ in range(2))
    rejected = first.get_token()
    assert second.get_token() == rejected
    renewed = first.refresh_after_rejection(rejected)
    assert second.refresh_after_rejection(rejected) == renewed  # reads first's from the store
    assert len(refreshes(fake)) == 2 and fake.access_token_valid(renewed)


def test_store_is_written_whole_with_mode_0600(tmp_path, fake):
    path = tmp_path / "state" / "store.json"
    store_login(path, fake)
    manager = manager_for(path, fake)
    manager.get_token()
    stored = json.loads(path.read_text())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert stored["refreshToken"] == fake.refresh_token  # the rotated one
    assert stored["previousRefreshToken"] != stored["refreshToken"]
    assert "refreshStartedAt" not in stored and stored["obtainedAt"] <= stored["expiresAt"]
    assert sorted(os.listdir(path.parent)) == ["store.json", "store.json.lock"]


WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from amq.credentials.store import FileStore
    cache = FileStore(sys.argv[2])
    deadline = time.monotonic() + float(sys.argv[3])
    i = 0
    while time.monotonic() < deadline:
        with cache.lock():
            cache.save({"n": i, "pad": str(i % 10) * (20000 + 7919 * (i % 5))})
        i += 1
    print(i)
""")


def test_readers_never_see_a_partial_file(tmp_path):
    path = tmp_path / "store.json"
    FileStore(str(path)).save({"n": -1, "pad": ""})
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(ROOT), str(path), "1.5"],
                              stdout=subprocess.PIPE, text=True)
    reads = 0
    while writer.poll() is None:
        data = json.loads(path.read_text())  # raises on a partial file
        assert set(data["pad"]) <= {str(data["n"] % 10)}  # one write's content, not a mix
        reads += 1
    writes = int(writer.stdout.read())
    assert writer.returncode == 0 and writes > 5 and reads > 20
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


def test_previous_refresh_token_is_tried_once_when_the_newest_is_refused(tmp_path, fake):
    store_login(tmp_path / "store.json", fake, refreshToken="aor-never-issued",
                previousRefreshToken=fake.refresh_token)
    manager = manager_for(tmp_path / "store.json", fake)
    assert fake.access_token_valid(manager.get_token())
    assert [e["error"] for e in refreshes(fake)] == ["invalid_grant", None]
    assert json.loads((tmp_path / "store.json").read_text())["refreshToken"] == fake.refresh_token


def test_interrupted_refresh_is_named_when_its_token_is_refused(tmp_path, fake):
    store_login(tmp_path / "store.json", fake, refreshToken="aor-spent", refreshStartedAt=time.time() - 60)
    with pytest.raises(RefreshRejected) as info:
        manager_for(tmp_path / "store.json", fake).get_token()
    assert "interrupted" in info.value.message and "flask --app app login" in info.value.message
    assert "aor-spent" not in info.value.message
    # the diagnosis survives for the next start
    assert json.loads((tmp_path / "store.json").read_text())["refreshStartedAt"]


def test_a_running_worker_picks_up_a_new_login(tmp_path, fake):
    clock = Clock()
    store_login(tmp_path / "store.json", fake)
    manager = manager_for(tmp_path / "store.json", fake, clock)
    manager.get_token()
    fresh = fake.new_login()  # `flask --app app login` again, while amq runs
    store_login(tmp_path / "store.json", fake, refreshToken=fresh)
    clock.now += 3600
    assert fake.access_token_valid(manager.get_token())
    assert fake.token_requests[-1]["refreshToken"] == fresh


def test_environment_login_keeps_the_store_only_while_it_is_that_login(tmp_path, fake):
    env = {"AMAZONQ_CLIENT_ID": fake.client_id, "AMAZONQ_CLIENT_SECRET": fake.client_secret,
           "AMAZONQ_REFRESH_TOKEN": fake.refresh_token}
    first = manager_for(tmp_path / "store.json", fake, **env)
    first.get_token()  # rotates; the store now holds the newest token of this login
    again = manager_for(tmp_path / "store.json", fake, **env)  # a restart, same environment
    assert again._refresh_token == fake.refresh_token != env["AMAZONQ_REFRESH_TOKEN"]
    assert again.source == "environment"
    relogin = dict(env, AMAZONQ_REFRESH_TOKEN=fake.new_login())
    assert manager_for(tmp_path / "store.json", fake, **relogin)._refresh_token == relogin["AMAZONQ_REFRESH_TOKEN"]


def test_wrong_environment_credentials_leave_a_stored_login_alone(tmp_path, fake):
    store_login(tmp_path / "store.json", fake)
    before = (tmp_path / "store.json").read_text()
    manager = manager_for(tmp_path / "store.json", fake, AMAZONQ_CLIENT_ID="cid-typo",
                          AMAZONQ_CLIENT_SECRET="s", AMAZONQ_REFRESH_TOKEN="aor-typo")
    with pytest.raises(RefreshRejected):
        manager.get_token()
    assert (tmp_path / "store.json").read_text() == before


def test_stale_temp_files_of_a_dead_writer_are_removed(tmp_path, fake):
    cache = store_login(tmp_path / "store.json", fake)
    (tmp_path / ".store.json.tmp-dead").write_text('{"half":')
    manager_for(tmp_path / "store.json", fake).get_token()
    assert not (tmp_path / ".store.json.tmp-dead").exists()
    assert cache.load()["refreshToken"] == fake.refresh_token


def test_a_held_lock_times_out_as_a_gateway_timeout(tmp_path, fake):
    store_login(tmp_path / "store.json", fake)
    manager = manager_for(tmp_path / "store.json", fake)
    manager.store.lock_timeout = 0.3
    with FileLock(manager.store.lock_path, 1):
        started = time.monotonic()
        with pytest.raises(GatewayTimeout):
            manager.get_token()
        assert 0.25 < time.monotonic() - started < 3
    assert fake.token_log == []


GEVENT_WAITER = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import sys, time, gevent
    sys.path.insert(0, sys.argv[1])
    from amq.credentials.store import FileLock
    holder = FileLock(sys.argv[2], 5)
    holder.acquire()
    ticks = []
    def ticker():
        while len(ticks) < 1000:
            ticks.append(time.monotonic())
            gevent.sleep(0.01)
    def waiter():
        FileLock(sys.argv[2], 5).acquire()
        ticks.append("locked")
    gevent.spawn(ticker)
    waiting = gevent.spawn(waiter)
    gevent.sleep(0.05)
    release_at = len(ticks)
    gevent.spawn_later(0.4, holder.release)
    waiting.join(5)
    during = [t for t in ticks[release_at:] if t != "locked"]
    print(len(during), "locked" in ticks)
""")


def test_waiting_for_the_lock_keeps_a_gevent_worker_serving(tmp_path):
    """A blocking flock would freeze every greenlet until the lock is free."""
    result = subprocess.run([sys.executable, "-c", GEVENT_WAITER, str(ROOT), str(tmp_path / "l.lock")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    ticks, locked = result.stdout.split()
    assert locked == "True" and int(ticks) >= 10  # ~40 expected in 0.4 s
