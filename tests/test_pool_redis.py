"""The account pool across instances that share only a real redis-server: one instance's
cooldowns are the other's, and a tool-using conversation (the anthropic SDK's tool loop) keeps
going while the fake throttles, exhausts and suspends the accounts one by one."""
from __future__ import annotations

import time
import uuid
from pathlib import Path

import anthropic
import pytest
import requests

from amq.credentials.redis_store import RedisStore
from app import create_app
from tests.fakeq import FakeQ, text_reply, tool_reply
from tests.support import AmqServer, add_logins, sdk_client

MODEL = "claude-sonnet-4-5"
TOOLS = [{"name": "get_weather", "description": "Weather of a city.",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


def env_for(fake: FakeQ, redis, prefix: str, home: Path, **extra) -> dict:
    """An instance that shares nothing but Redis, with no login in its environment."""
    home.mkdir(parents=True, exist_ok=True)
    return {"HOME": str(home), "TMPDIR": str(home), "REDIS_URL": redis.url, "REDIS_KEY_PREFIX": prefix,
            "AMAZONQ_API_ENDPOINT": fake.url, "AMAZONQ_TOKEN_CACHE": str(home / "never-used.json"),
            "LOG_LEVEL": "INFO", "AMAZONQ_POOL_SYNC_INTERVAL": "0.2", **extra}


def post(server: AmqServer, text: str) -> requests.Response:
    return requests.post(server.url + "/v1/messages", timeout=10, headers={"Connection": "close"},
                         json={"model": MODEL, "max_tokens": 20, "messages": [{"role": "user", "content": text}]})


def test_two_instances_see_each_others_cooldowns(fake, redis_server, tmp_path):
    prefix = f"pool-{uuid.uuid4().hex[:6]}:"
    store = RedisStore(redis_server.client(), prefix=prefix)
    add_logins(fake, store, a={"throttled": 1}, b={}, c={})
    env = {"AMAZONQ_COOLDOWN_THROTTLED": "60"}
    first = AmqServer(env_for(fake, redis_server, prefix, tmp_path / "one", **env), tmp_path / "one.log")
    second = AmqServer(env_for(fake, redis_server, prefix, tmp_path / "two", **env), tmp_path / "two.log")
    try:
        count = 0
        while fake.accounts["a"].calls == 0:  # the first instance meets the throttling
            assert post(first, f"one {count}").status_code == 200
            count += 1
        time.sleep(0.5)  # a sync interval and then some
        for turn in range(12):  # the second instance never tries the account the first found throttled
            assert post(second, f"two {turn}").status_code == 200
        assert fake.accounts["a"].calls == 1
        assert fake.accounts["b"].served > 0 and fake.accounts["c"].served > 0
        assert b"health:a" in b" ".join(redis_server.client().keys(prefix + "*"))
    finally:
        first.stop()
        second.stop()


def test_a_tool_loop_survives_throttling_exhaustion_and_suspension_then_429_names_why(fake, redis_server,
                                                                                       tmp_path):
    prefix = f"pool-{uuid.uuid4().hex[:6]}:"
    store = RedisStore(redis_server.client(), prefix=prefix)
    tokens = add_logins(fake, store, a={}, b={}, c={})
    env = {"AMAZONQ_COOLDOWN_THROTTLED": "60", "AMAZONQ_ACCOUNT_STRATEGY": "least-busy"}
    first = AmqServer(env_for(fake, redis_server, prefix, tmp_path / "one", **env), tmp_path / "one.log")
    second = AmqServer(env_for(fake, redis_server, prefix, tmp_path / "two", **env), tmp_path / "two.log")
    clients = [sdk_client(first.url), sdk_client(second.url)]
    try:
        messages = [{"role": "user", "content": "What is the weather in Paris, then Rome, then Oslo?"}]
        # Each round: the account that served the last turn meets a new fault; the next turn of the
        # same conversation (on the other instance) must fail over and the tool loop go on.
        faults = [("throttled", 5), ("monthly", True), ("suspended", True)]
        for turn, city in enumerate(["Paris", "Rome", "Oslo"]):
            fake.enqueue(tool_reply("get_weather", {"city": city}))
            reply = clients[turn % 2].messages.create(model=MODEL, max_tokens=100, tools=TOOLS, messages=messages)
            assert reply.stop_reason == "tool_use"
            [call] = [block for block in reply.content if block.type == "tool_use"]
            assert call.input == {"city": city}
            served_by = fake.requests[-1]["account"]
            messages += [{"role": "assistant", "content": [{"type": "tool_use", "id": call.id, "name": call.name,
                                                           "input": call.input}]},
                         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                                      "content": f"sunny in {city}"}]}]
            field, value = faults[turn]
            setattr(fake.accounts[served_by], field, value)
            time.sleep(0.5)  # let both instances sync (only the one that meets it learns at once)
        fake.enqueue(text_reply("Sunny everywhere."))
        # Every account is out now, but one fault is still unknown to amq: the last turn meets it
        # on the last healthy account and gets the 429 naming every account's state.
        with pytest.raises(anthropic.RateLimitError) as caught:
            clients[1].messages.create(model=MODEL, max_tokens=100, tools=TOOLS, messages=messages)
        error = caught.value
        text = error.response.text
        assert "a: " in text and "b: " in text and "c: " in text
        for state in ("cooling until", "exhausted until", "suspended"):
            assert state in text
        assert int(error.response.headers["retry-after"]) <= 60
        assert not any(token in text for token in tokens.values())
        assert not [r for r in fake.requests if r["error"]], "the fake refused a request as malformed"
        # and `accounts` shows the same, from Redis, in any process
        app = create_app(env_for(fake, redis_server, prefix, tmp_path / "cli"), require_credentials=False)
        output = app.test_cli_runner().invoke(args=["accounts"]).output
        for state in ("cooling until", "exhausted until", "suspended"):
            assert state in output
        assert "TEMPORARILY_SUSPENDED" in output and "MONTHLY_REQUEST_COUNT" in output
        assert not any(token in output for token in tokens.values())
    finally:
        first.stop()
        second.stop()


@pytest.mark.parametrize("backend", ["file", "redis"])
def test_streams_in_flight_of_a_dead_worker_stop_counting_by_themselves(backend, redis_server, tmp_path):
    """A worker killed mid-stream never says its streams ended: its published count expires."""
    from amq.credentials.pool_state import INFLIGHT_TTL, Deltas, open_pool_state
    from amq.credentials.store import FileStore

    store = FileStore(str(tmp_path / "token.json")) if backend == "file" else \
        RedisStore(redis_server.client(), prefix=f"lease-{uuid.uuid4().hex[:6]}:")
    state = open_pool_state(store)
    now = 1_800_000_000.0
    state.sync(["a"], Deltas(), {"a": 3}, "dead-worker", now)
    assert state.sync(["a"], Deltas(), {"a": 1}, "live-worker", now + 1).inflight == {"a": 4}
    later = state.sync(["a"], Deltas(), {"a": 1}, "live-worker", now + INFLIGHT_TTL + 1)
    assert later.inflight == {"a": 1}
