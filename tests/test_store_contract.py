"""One contract, every backend: the file store and the Redis store (a real redis-server) must
behave the same for everything the token manager and the commands rely on."""
from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from amq.credentials.record import DEFAULT_ACCOUNT
from amq.credentials.store import FileStore, LockTimeout, StaleWrite
from tests.support import ROOT, refreshes, seed_login

LOGIN = {"clientId": "cid", "clientSecret": "csecret", "refreshToken": "rt-1", "accessToken": "at-1",
         "expiresAt": 2_000_000_000.0, "source": "login"}


@pytest.fixture(params=["file", "redis"])
def store(request, tmp_path):
    if request.param == "file":
        return FileStore(str(tmp_path / "token.json"), lock_timeout=0.3)
    from amq.credentials.redis_store import RedisStore

    server = request.getfixturevalue("redis_server")
    return RedisStore(server.client(), prefix=f"t-{uuid.uuid4().hex[:8]}:", location=server.url,
                      lock_ttl=2.0, lock_wait=0.3)


def test_an_empty_store_holds_nothing(store):
    assert store.load() == {}
    assert store.version() == 0
    assert store.accounts() == []


def test_a_saved_record_comes_back_whole_with_its_version(store):
    assert store.save(LOGIN) == 1
    assert store.load() == {**LOGIN, "version": 1}
    assert store.save(dict(LOGIN, refreshToken="rt-2")) == 2
    assert store.load()["refreshToken"] == "rt-2" and store.version() == 2


def test_a_write_naming_an_old_version_is_refused_and_changes_nothing(store):
    store.save(LOGIN)
    seen = store.version()
    store.save(dict(LOGIN, refreshToken="rt-newer"))  # someone else's refresh
    with pytest.raises(StaleWrite):
        store.save(dict(LOGIN, refreshToken="rt-stale"), expected_version=seen)
    assert store.load()["refreshToken"] == "rt-newer"
    assert store.save(dict(LOGIN, refreshToken="rt-3"), expected_version=store.version()) == 3


def test_a_write_expecting_no_record_is_refused_once_one_exists(store):
    assert store.save(LOGIN, expected_version=0) == 1
    with pytest.raises(StaleWrite):
        store.save(LOGIN, expected_version=0)


def test_accounts_are_kept_apart(store):
    store.replace_login(LOGIN)
    store.replace_login(dict(LOGIN, refreshToken="rt-b"), "team-b")
    assert store.load(DEFAULT_ACCOUNT)["refreshToken"] == "rt-1"
    assert store.load("team-b")["refreshToken"] == "rt-b"
    assert sorted(store.accounts()) == ["default", "team-b"]


def test_an_account_name_cannot_smuggle_a_path_or_key(store):
    for name in ("../evil", "a:b", "", "x" * 65):
        with pytest.raises(ValueError):
            store.load(name)


def test_the_lock_excludes_a_second_holder_until_released(store):
    first = store.lock()
    first.acquire()
    try:
        started = time.monotonic()
        with pytest.raises(LockTimeout):
            store.lock().acquire()
        assert time.monotonic() - started < 2
    finally:
        first.release()
    with store.lock():
        pass


def test_the_lock_of_one_account_does_not_block_another(store):
    with store.lock("team-a"), store.lock("team-b"):
        pass


def test_describe_names_the_backend_and_no_secret(store):
    store.save(LOGIN)
    facts = store.describe()
    assert facts["backend"] == store.kind
    assert "persistence" in facts and "lock" in facts
    assert "csecret" not in repr(facts) and "rt-1" not in repr(facts)


HOLDER = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, sys.argv[1])
    from amq.credentials.store import FileStore
    import redis
    from amq.credentials.redis_store import RedisStore
    if sys.argv[2] == "file":
        store = FileStore(sys.argv[3])
    else:
        store = RedisStore(redis.Redis.from_url(sys.argv[3]), prefix=sys.argv[4], lock_ttl=1.0)
    store.lock().acquire()
    print("locked", flush=True)
    time.sleep(60)
""")


def test_a_killed_holder_does_not_block_the_lock(store, tmp_path):
    """flock dies with its process; a Redis lock expires with its TTL."""
    args = ["file", store.path, ""] if store.kind == "file" else ["redis", store.location, store.prefix]
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(ROOT), *args], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockTimeout):
            store.lock().acquire()
    finally:
        os.kill(holder.pid, 9)
        holder.wait()
    deadline = time.monotonic() + 5
    while True:
        try:
            with store.lock():
                break
        except LockTimeout:
            assert time.monotonic() < deadline, "the dead holder's lock was never freed"


def test_remove_deletes_one_account_and_leaves_the_others(store):
    store.replace_login(LOGIN)
    store.replace_login(dict(LOGIN, refreshToken="rt-b"), "b")
    assert sorted(store.accounts()) == ["b", DEFAULT_ACCOUNT]
    store.remove("b")
    assert store.accounts() == [DEFAULT_ACCOUNT] and store.load("b") == {} and store.version("b") == 0
    store.remove("b")  # gone already: nothing happens
    store.replace_login(dict(LOGIN, refreshToken="rt-b2"), "b")  # a new login under the name works
    assert store.load("b")["refreshToken"] == "rt-b2"


# --------------------------------------------------------------------------- SIGKILL mid-refresh

KILL_CHILD = textwrap.dedent("""
    import json, os, signal, sys
    sys.path.insert(0, sys.argv[1])
    import requests
    import amq.credentials.manager, amq.credentials.oidc, amq.credentials.redis_store, amq.credentials.store
    from amq.config import load_settings
    from amq.errors import ProxyError
    kill_at, count = int(sys.argv[2]), 0
    def line(frame, event, arg):
        global count
        if event == "line":
            count += 1
            if count == kill_at:
                print(f"{frame.f_code.co_name}:{frame.f_lineno}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
        return line
    def tracer(frame, event, arg):
        return line if frame.f_code.co_filename in TRACED else None
    TRACED = {m.__file__ for m in (amq.credentials.manager, amq.credentials.oidc, amq.credentials.store,
                                   amq.credentials.redis_store)}
    manager = amq.credentials.manager.TokenManager.from_settings(load_settings(), requests.Session())
    sys.settrace(tracer)  # counts (and maybe kills at) each line run in the credential modules
    try:
        token = manager.get_token()
    except ProxyError as exc:
        sys.settrace(None)
        print(json.dumps({"error": exc.message}))
        sys.exit(3)
    sys.settrace(None)
    print(json.dumps({"token": token, "lines": count}))
""")


def kill_points(total: int) -> list[int]:
    """One random line in each of 12 equal slices of a refresh (AMQ_KILL_POINTS=all: every line)."""
    if os.environ.get("AMQ_KILL_POINTS") == "all":
        return list(range(1, total + 1))
    rng = random.Random(int(os.environ.get("AMQ_KILL_SEED", "20261125")))
    edges = [1 + total * i // 12 for i in range(13)]
    return sorted({rng.randrange(lo, max(hi, lo + 1)) for lo, hi in zip(edges, edges[1:], strict=False)})


def child_env(store, fake, tmp_path) -> dict[str, str]:
    """The environment that points a child amq at this test's store and fake."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMAZONQ_", "REDIS_"))}
    env["AMAZONQ_TOKEN_ENDPOINT"] = fake.token_url
    if store.kind == "file":
        env["AMAZONQ_TOKEN_CACHE"] = store.path
    else:
        env.update(REDIS_URL=store.location, REDIS_KEY_PREFIX=store.prefix,
                   AMAZONQ_TOKEN_CACHE=str(tmp_path / "unused.json"))
    return env


def test_a_refresh_killed_at_random_points_then_a_restart_still_works(store, fake, tmp_path):
    """SIGKILL at random lines of a refresh (lock, write-ahead, CreateToken, write: rename or Lua
    script, unlock).

    Guarantee checked: the record is always whole (a file also 0600, no temp file left), a dead
    holder's flock never blocks the lock (a Redis lock's TTL is tested above), and the restart
    works, except when the kill fell after the service issued a new refresh token and before the
    store kept it. In that window (which no client can close) the write-ahead marker must be
    there and the restart must say what happened.
    """
    seed_login(store, fake)
    env = child_env(store, fake, tmp_path)
    on_file = store.kind == "file"

    def child(kill_at: int):
        if not on_file:  # a killed holder's Redis lock lives out its TTL (tested above); flock dies with it
            store.client.delete(store.lock().name)
        with store.lock():  # the access token has expired: the child must refresh
            store.save({k: v for k, v in store.load().items() if k not in ("accessToken", "expiresAt")})
        issued = len(refreshes(fake))
        result = subprocess.run([sys.executable, "-c", KILL_CHILD, str(ROOT), str(kill_at)], env=env,
                                capture_output=True, text=True, timeout=60)
        return result, len(refreshes(fake)) > issued

    dry, _ = child(0)
    assert dry.returncode == 0, dry.stderr
    total = json.loads(dry.stdout)["lines"]
    assert total > 50
    outcomes = []
    for point in kill_points(total):
        killed, issued = child(point)
        where = killed.stdout.strip() if killed.returncode == -signal.SIGKILL else "(finished)"
        stored = store.load()  # whole, or load() would have warned and returned {}
        assert stored.get("refreshToken"), (point, where)
        if on_file:  # the file's own guarantees: private mode, no temporary file left behind
            assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
        lost = not fake.refresh_token_valid(stored["refreshToken"])
        restart, _ = child(0)
        if lost:
            # the only loss: the service issued, the process died before the store kept it
            assert killed.returncode == -signal.SIGKILL and issued, (point, where)
            assert stored.get("refreshStartedAt"), (point, where)
            assert restart.returncode == 3 and "interrupted" in json.loads(restart.stdout)["error"]
            seed_login(store, fake, refreshToken=fake.new_login())  # the user logs in again
        else:
            assert restart.returncode == 0, (point, where, restart.stdout, restart.stderr)
            assert fake.access_token_valid(json.loads(restart.stdout)["token"])
            assert "refreshStartedAt" not in store.load()
        if on_file:
            assert not [n for n in os.listdir(os.path.dirname(store.path)) if ".tmp-" in n]
        outcomes.append((point, where, "lost" if lost else "kept"))
    print("\n".join(f"kill at line {p:3d} {w:32s} {o}" for p, w, o in outcomes))
    assert sum(o == "kept" for *_, o in outcomes) >= len(outcomes) // 2
