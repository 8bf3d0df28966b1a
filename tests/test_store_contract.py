"""One contract, every backend: the file store and the Redis store (a real redis-server) must
behave the same for everything the token manager and the commands rely on."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from amq.credentials.record import DEFAULT_ACCOUNT
from amq.credentials.store import FileStore, LockTimeout, StaleWrite
from tests.support import ROOT

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
