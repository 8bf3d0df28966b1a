"""Account health as several workers change it at once, with the file store and with a real
redis-server: each change is applied where health is stored, against what is stored now, so
a worker's stale copy never undoes another's disable, suspension or exhaustion, a rest is never
shortened, and failures in a row are counted across workers."""
from __future__ import annotations

import threading
import time
import uuid

import pytest

from amq.credentials.pool import AccountPool
from amq.credentials.redis_store import RedisStore
from amq.credentials.store import FileStore
from amq.q_errors import map_upstream_error
from app import create_app
from tests.support import add_logins

THROTTLED = ("429", "ThrottlingException", "USER_REQUEST_RATE_EXCEEDED", "Too many requests")
MONTHLY = ("400", "ThrottlingException", "MONTHLY_REQUEST_COUNT", "reached for this month.")
SUSPENDED = ("403", "AccessDeniedException", "TEMPORARILY_SUSPENDED", "Your account is temporarily suspended.")
RISK = ("429", "ThrottlingException", "", "suspicious activity: temporary limits apply")
BROKEN = ("500", "InternalServerException", "", "Encountered an unexpected error.")


def error(kind: tuple):
    status, code, reason, message = kind
    return map_upstream_error(int(status), code, reason, message)


@pytest.fixture(params=["file", "redis"])
def setup(request, fake, tmp_path):
    """(store, config): two apps built from `config` are two workers sharing the store."""
    config = {"AMAZONQ_API_ENDPOINT": fake.url, "LOG_LEVEL": "WARNING", "HOME": str(tmp_path),
              "AMAZONQ_POOL_SYNC_INTERVAL": "600",  # each worker keeps its copy: stale on purpose
              "AMAZONQ_ERRORS_BEFORE_COOLDOWN": "2", "AMAZONQ_COOLDOWN_THROTTLED": "10"}
    if request.param == "file":
        store = FileStore(str(tmp_path / "token.json"))
        config["AMAZONQ_TOKEN_CACHE"] = store.path
    else:
        redis_server = request.getfixturevalue("redis_server")
        prefix = f"health-{uuid.uuid4().hex[:6]}:"
        store = RedisStore(redis_server.client(), prefix=prefix)
        config.update(REDIS_URL=redis_server.url, REDIS_KEY_PREFIX=prefix,
                      AMAZONQ_TOKEN_CACHE=str(tmp_path / "never-used.json"))
    add_logins(fake, store, a={}, b={})
    return store, config, fake


def worker(config) -> AccountPool:
    app = create_app(config)
    app.extensions["amq"].models.stop_fetching()
    return app.extensions["amq"].pool


def account(pool: AccountPool, name: str):
    return next(a for a in pool.accounts() if a.name == name)


def state(pool: AccountPool, name: str) -> tuple[str, float | None]:
    found = next(s for s in pool.summaries() if s.name == name)
    return found.state, found.until


def test_an_operators_disable_survives_a_stream_that_ends_throttled(setup):
    _, config, _ = setup
    pool = worker(config)
    running = account(pool, "a")  # a stream already running on it...
    pool.disable("a")
    pool.report_failure(running, error(THROTTLED))  # ...ends with a throttling error
    assert state(pool, "a") == ("disabled", None)
    assert state(worker(config), "a") == ("disabled", None)


def test_a_stale_worker_never_undoes_another_workers_exhaustion_or_suspension(setup):
    _, config, _ = setup
    first, second = worker(config), worker(config)  # second's copy: both active
    first.report_failure(account(first, "a"), error(MONTHLY))
    first.report_failure(account(first, "b"), error(SUSPENDED))
    for name in ("a", "b"):
        second.report_failure(account(second, name), error(THROTTLED))
        second.report_failure(account(second, name), error(BROKEN))
        second.report_success(account(second, name))
    exhausted, until = state(first, "a")
    assert exhausted == "exhausted" and until > time.time() + 3600
    assert state(first, "b") == ("suspended", None)


def test_a_rest_is_never_shortened(setup):
    _, config, _ = setup
    first, second = worker(config), worker(config)
    first.report_failure(account(first, "a"), error(RISK))
    second.report_failure(account(second, "a"), error(THROTTLED))
    cooling, until = state(second, "a")
    assert cooling == "cooling" and until > time.time() + 600  # the risk cooldown, not 10 s


def test_failures_in_a_row_are_counted_across_workers_and_success_only_resets_them(setup):
    _, config, _ = setup
    first, second = worker(config), worker(config)
    first.report_failure(account(first, "a"), error(BROKEN))
    second.report_failure(account(second, "a"), error(BROKEN))  # the second in a row: a rest
    assert state(first, "a")[0] == "cooling"
    second.report_failure(account(second, "b"), error(BROKEN))  # second's copy: active, 1 failure
    first.report_failure(account(first, "b"), error(THROTTLED))
    second.report_success(account(second, "b"))  # a stale "active" with failures: not written back
    assert state(first, "b")[0] == "cooling"


def test_failures_at_the_same_moment_are_all_counted(setup):
    _, config, _ = setup
    pools = [worker(dict(config, AMAZONQ_ERRORS_BEFORE_COOLDOWN="12")) for _ in range(4)]
    start = threading.Barrier(12)

    def fail(pool):
        start.wait()
        pool.report_failure(account(pool, "a"), error(BROKEN))

    threads = [threading.Thread(target=fail, args=(pools[i % 4],)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert state(pools[0], "a")[0] == "cooling"  # the twelfth in a row, whoever wrote it


def test_a_refused_login_stays_invalid_until_a_new_login(setup):
    store, config, fake = setup
    fake.revoke("a")
    first, second = worker(config), worker(config)
    first.report_failure(account(first, "a"), _refused(first))
    assert state(first, "a") == ("invalid", None)
    for pool in (second, first):  # others try it still (a usage poll, a request already under way)
        _refused(pool)
    assert all(state(pool, "a") == ("invalid", None) for pool in (first, second))
    add_logins(fake, store, a={})
    assert all(state(pool, "a") == ("active", None) for pool in (first, second))


def _refused(pool: AccountPool):
    try:
        account(pool, "a").tokens.get_token()
    except Exception as exc:  # noqa: BLE001 - the manager's own error for a refused refresh
        assert getattr(exc, "disposition", "") == "invalid", exc
        return exc
    raise AssertionError("the refresh was not refused")
