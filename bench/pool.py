"""What the account pool adds per request, and what its once-a-second sync costs, file vs Redis.

1. The request path: `AccountPool.choose` + `begin` + `report_success` + `end` (what amq/proxy.py
   calls for every request), with no sync due: in memory only. p50/p99 in microseconds.
2. The sync (at most once per AMAZONQ_POOL_SYNC_INTERVAL per worker): counters out, health,
   in-flight counts and login identities in. p50/p99 in milliseconds, for the file store and for
   Redis (a real redis-server on a free port), and the Redis commands and round trips per sync.

    python bench/pool.py [--accounts 3 20] [--calls 100000] [--syncs 500]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (puts the repo root on sys.path)
import requests

from amq.config import load_settings
from amq.credentials.manager import TokenManager
from amq.credentials.pool import AccountPool
from amq.credentials.pool_state import open_pool_state
from amq.credentials.redis_store import RedisStore
from amq.credentials.store import FileStore
from tests.redis_server import RedisServer

# The request path, in memory: < 1% of the worker CPU a small streamed answer costs (about 5 ms,
# bench/README.md, "Metrics and access-log cost").
TARGET_CHOOSE_US = 50.0
TARGET_SYNC_MS = 5.0  # once a second per worker: < 0.5% of a core


def login(name: str) -> dict:
    return {"clientId": "bench", "clientSecret": "bench-secret", "refreshToken": "bench-" + name,
            "accessToken": "bench-access", "expiresAt": time.time() + 3600, "source": "login"}


def make_pool(store, overrides: dict) -> AccountPool:
    settings = load_settings({"AMAZONQ_POOL_SYNC_INTERVAL": "3600", **overrides})
    session = requests.Session()
    default = TokenManager.from_settings(settings, session, required=False, store=store)
    return AccountPool(settings, store, open_pool_state(store), default_tokens=default,
                       make_tokens=lambda name: TokenManager.from_settings(
                           settings, session, required=False, store=store, account=name))


def request_path(pool: AccountPool, calls: int) -> tuple[float, float]:
    samples = []
    for index in range(calls):
        t0 = time.perf_counter_ns()
        account = pool.choose("claude-sonnet-4.5", f"conversation-{index % 50}")
        pool.begin(account)
        pool.report_success(account, f"conversation-{index % 50}")
        pool.end(account)
        samples.append(time.perf_counter_ns() - t0)
    samples.sort()
    return statistics.median(samples) / 1000, samples[int(len(samples) * 0.99)] / 1000


def syncs(pool: AccountPool, count: int) -> tuple[float, float]:
    samples = []
    for index in range(count):
        account = pool.choose("claude-sonnet-4.5")
        pool.begin(account)  # counters to send, as between two real syncs
        pool.add_usage(account, 1000, 200, 0.01)
        if index % 2:
            pool.end(account)
        t0 = time.perf_counter_ns()
        pool.sync()
        samples.append(time.perf_counter_ns() - t0)
    samples.sort()
    return statistics.median(samples) / 1e6, samples[int(len(samples) * 0.99)] / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, nargs="+", default=[3, 20])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--syncs", type=int, default=500)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as directory, RedisServer(Path(directory) / "redis") as server:
        for count in args.accounts:
            names = [f"acct{i:02d}" for i in range(count)]
            path = Path(directory) / f"file-{count}" / "token.json"
            file_store = FileStore(str(path))
            redis_store = RedisStore(server.client(), prefix=f"bench{count}:")
            for name in names:
                file_store.replace_login(login(name), name)
                redis_store.replace_login(login(name), name)
            file_pool = make_pool(file_store, {"AMAZONQ_TOKEN_CACHE": str(path)})
            redis_pool = make_pool(redis_store, {"REDIS_URL": server.url, "REDIS_KEY_PREFIX": f"bench{count}:",
                                                 "AMAZONQ_TOKEN_CACHE": str(path)})
            choose_p50, choose_p99 = request_path(redis_pool, args.calls)
            before = int(server.client().info("stats")["total_commands_processed"])
            redis_p50, redis_p99 = syncs(redis_pool, args.syncs)
            commands = (int(server.client().info("stats")["total_commands_processed"]) - before - 1) / args.syncs
            file_p50, file_p99 = syncs(file_pool, args.syncs)
            rows.append((count, choose_p50, choose_p99, file_p50, file_p99, redis_p50, redis_p99, commands))
    for count, choose_p50, choose_p99, file_p50, file_p99, redis_p50, redis_p99, commands in rows:
        ok = choose_p50 < TARGET_CHOOSE_US and max(file_p50, redis_p50) < TARGET_SYNC_MS
        print(f"{count} accounts:")
        print(f"  request path (choose, begin, report_success, end): p50 {choose_p50:.1f} us, p99 {choose_p99:.1f} us")
        print(f"  sync, file store: p50 {file_p50:.2f} ms, p99 {file_p99:.2f} ms")
        print(f"  sync, Redis: p50 {redis_p50:.2f} ms, p99 {redis_p99:.2f} ms; {commands:.0f} commands in one "
              "pipelined round trip per sync")
        print(f"  targets: request path p50 < {TARGET_CHOOSE_US:.0f} us, sync p50 < {TARGET_SYNC_MS:.0f} ms "
              f"(once a second per worker): {'PASS' if ok else 'MISS'}")


if __name__ == "__main__":
    main()
