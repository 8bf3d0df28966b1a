"""The account pool against a fake Q that knows several accounts (each refresh token leads to its
own access tokens and its own behaviour): selection, health, failover before the first byte,
429 when none can serve, the `accounts` command, with the file store (one machine)."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import requests

from amq.credentials.pool import AccountPool, first_of_next_month
from amq.credentials.pool_state import FilePoolState
from amq.credentials.store import FileStore
from amq.q_errors import map_upstream_error
from app import create_app
from tests.fakeq import FakeQ, http_error
from tests.support import AmqServer, add_logins, amq_env, sse_events

BODY = {"model": "claude-sonnet-4-5", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
_count = iter(range(10**9))


def fresh() -> dict:
    """A request of a new conversation (stickiness keeps a conversation on its account)."""
    return dict(BODY, messages=[{"role": "user", "content": f"hi #{next(_count)}"}])


def pool_config(fake: FakeQ, cache: Path, **extra) -> dict:
    """amq in front of the fake with no login in the environment: the store's accounts only."""
    return {"AMAZONQ_API_ENDPOINT": fake.url, "AMAZONQ_TOKEN_CACHE": str(cache), "LOG_LEVEL": "WARNING",
            "AMAZONQ_POOL_SYNC_INTERVAL": "0.05", **extra}


@pytest.fixture
def store(tmp_path):
    return FileStore(str(tmp_path / "token.json"))


def make_app(fake, store, **settings):
    app = create_app(pool_config(fake, Path(store.path), **settings))
    app.extensions["amq"].models.stop_fetching()
    return app


def served(fake: FakeQ) -> dict[str, int]:
    return {name: account.served for name, account in fake.accounts.items()}


def summary(app, name):
    return next(s for s in app.extensions["amq"].pool.summaries() if s.name == name)


def test_round_robin_spreads_requests_evenly(fake, store):
    add_logins(fake, store, a={}, b={}, c={})
    client = make_app(fake, store).test_client()
    for _ in range(9):
        assert client.post("/v1/messages", json=fresh()).status_code == 200
    assert served(fake) == {"a": 3, "b": 3, "c": 3}


def test_a_throttled_account_is_skipped_and_returns_after_its_cooldown(fake, store):
    add_logins(fake, store, a={"throttled": 1}, b={}, c={})
    app = make_app(fake, store, AMAZONQ_COOLDOWN_THROTTLED="1.5")
    client = app.test_client()
    for _ in range(6):  # the first call that meets `a` fails over; the client never sees it
        response = client.post("/v1/messages", json=fresh())
        assert response.status_code == 200, response.get_json()
    assert fake.accounts["a"].calls == 1 and fake.accounts["a"].served == 0
    cooling = summary(app, "a")
    assert cooling.state == "cooling" and cooling.reason == "ThrottlingException USER_REQUEST_RATE_EXCEEDED"
    assert cooling.until is not None and 0 < cooling.until - time.time() <= 1.5
    assert cooling.errors_today == 1 and "Too many requests" in cooling.last_error
    time.sleep(1.6)
    for _ in range(3):
        assert client.post("/v1/messages", json=fresh()).status_code == 200
    assert fake.accounts["a"].served >= 1 and summary(app, "a").state == "active"


def test_throttling_honours_retry_after_and_is_never_escalated(fake, store):
    add_logins(fake, store, a={"throttled": 3, "retry_after": "4"}, b={})
    app = make_app(fake, store, AMAZONQ_COOLDOWN_THROTTLED="1", AMAZONQ_ACCOUNT_STRATEGY="priority",
                   AMAZONQ_ACCOUNT_ORDER="a,b")
    client = app.test_client()
    assert client.post("/v1/messages", json=BODY).status_code == 200
    first = summary(app, "a").until - time.time()
    assert 3 < first <= 4  # Q's Retry-After is longer than the setting: it wins
    pool = app.extensions["amq"].pool
    pool.enable("a")  # back early; the next throttling gets the same rest, not a longer one
    assert client.post("/v1/messages", json=fresh()).status_code == 200
    assert 3 < summary(app, "a").until - time.time() <= 4


def test_exhaustion_lasts_until_the_monthly_reset(fake, store):
    add_logins(fake, store, a={"monthly": True}, b={})
    app = make_app(fake, store, AMAZONQ_ACCOUNT_STRATEGY="priority", AMAZONQ_ACCOUNT_ORDER="a,b")
    client = app.test_client()
    assert client.post("/v1/messages", json=BODY).status_code == 200
    exhausted = summary(app, "a")
    assert exhausted.state == "exhausted" and "MONTHLY_REQUEST_COUNT" in exhausted.reason
    # the first of next month, or (once GetUsageLimits answered) the fake's reset in 12 days
    assert exhausted.until > time.time() + 3600
    fake.accounts["a"].monthly = False  # even if Q would answer again, amq waits for the reset
    for _ in range(3):
        assert client.post("/v1/messages", json=BODY).status_code == 200
    assert fake.accounts["a"].calls == 1 and fake.accounts["b"].served == 4


def test_an_exhausted_account_is_back_by_itself_after_the_reset(fake, store):
    """The clock passed in moves past the reset: the account is active again, no operator needed."""
    clock = [1_700_000_000.0]
    add_logins(fake, store, a={}, b={})
    proxy = make_app(fake, store).extensions["amq"]
    pool = AccountPool(proxy.settings, store, FilePoolState(store), default_tokens=proxy.tokens,
                       make_tokens=lambda name: proxy.tokens, clock=lambda: clock[0])
    error = map_upstream_error(400, "ThrottlingException", "MONTHLY_REQUEST_COUNT", "reached for this month.")
    account = next(a for a in pool.accounts() if a.name == "a")
    pool.report_failure(account, error)
    # no GetUsageLimits here: the first of next month UTC, plus the margin
    assert pool.effective("a", clock[0])[:2] == ("exhausted", first_of_next_month(clock[0]) + 600)
    assert [pool.choose("m").name for _ in range(3)] == ["b", "b", "b"]
    clock[0] = first_of_next_month(clock[0]) + 601
    assert pool.effective("a", clock[0])[0] == "active"
    assert {pool.choose("m").name for _ in range(4)} == {"a", "b"}


def test_when_no_account_can_serve_the_answer_is_429_naming_their_states(fake, store):
    tokens = add_logins(fake, store, a={"throttled": 5, "retry_after": "30"}, b={"throttled": 5, "retry_after": "40"},
                        c={"suspended": True})
    app = make_app(fake, store)
    response = app.test_client().post("/v1/messages", json=fresh())
    assert response.status_code == 200 or response.status_code == 429
    response = app.test_client().post("/v1/messages", json=fresh())
    assert response.status_code == 429
    error = response.get_json()["error"]
    assert error["type"] == "rate_limit_error"
    assert 25 <= int(response.headers["retry-after"]) <= 30  # when the first account is back
    for text in ("a: cooling until", "b: cooling until", "c: suspended"):
        assert text in error["message"]
    assert not any(token in response.get_data(as_text=True) for token in tokens.values())
    calls = sum(a.calls for a in fake.accounts.values())
    assert app.test_client().post("/v1/messages", json=fresh()).status_code == 429
    assert sum(a.calls for a in fake.accounts.values()) == calls  # refused without calling Q


def test_failover_happens_before_the_first_byte_and_the_stream_is_one_clean_answer(fake, store):
    add_logins(fake, store, a={"throttled": 1}, b={"suspended": True}, c={})
    app = make_app(fake, store, AMAZONQ_ACCOUNT_STRATEGY="priority", AMAZONQ_ACCOUNT_ORDER="a,b,c")
    response = app.test_client().post("/v1/messages", json=dict(BODY, stream=True))
    assert response.status_code == 200
    events = sse_events(response)
    names = [name for name, _ in events]
    assert names.count("message_start") == 1 and "error" not in names
    text = "".join(data["delta"]["text"] for name, data in events if name == "content_block_delta")
    assert text == "Hello from fake Q."
    assert [r["account"] for r in fake.requests] == ["a", "b", "c"]
    assert summary(app, "b").state == "suspended"


def test_after_the_first_byte_there_is_no_failover(fake, store):
    from tests.eventstream_encode import encode_event, encode_exception
    from tests.fakeq import raw_reply

    add_logins(fake, store, a={}, b={})
    fake.enqueue(raw_reply([encode_event("assistantResponseEvent", {"content": "part"}),
                            encode_exception("ThrottlingException", "Rate exceeded")]))
    response = make_app(fake, store).test_client().post("/v1/messages", json=dict(BODY, stream=True))
    events = sse_events(response)
    assert events[-1][0] == "error" and len(fake.requests) == 1


def test_the_requests_own_faults_go_back_to_the_client_and_count_against_no_account(fake, store):
    add_logins(fake, store, a={}, b={})
    fake.enqueue(http_error(400, "ValidationException", "Improperly formed request."))
    app = make_app(fake, store)
    response = app.test_client().post("/v1/messages", json=BODY)
    assert response.status_code == 400 and len(fake.requests) == 1
    assert {s.state for s in app.extensions["amq"].pool.summaries()} == {"active"}
    assert {s.errors_today for s in app.extensions["amq"].pool.summaries()} == {0}


def test_a_model_the_account_lacks_moves_the_request_without_penalty(fake, store):
    add_logins(fake, store, a={}, b={})
    fake.enqueue(http_error(400, "ValidationException", "Invalid model.", reason="INVALID_MODEL_ID"))
    app = make_app(fake, store)
    response = app.test_client().post("/v1/messages", json=BODY)
    assert response.status_code == 200 and len(fake.requests) == 2
    assert {s.state for s in app.extensions["amq"].pool.summaries()} == {"active"}


def test_suspended_stays_out_until_enabled_and_invalid_until_a_new_login(fake, store):
    add_logins(fake, store, a={"suspended": True}, b={}, c={})
    fake.revoke("c")  # its refresh token: invalid_grant
    app = make_app(fake, store, AMAZONQ_ACCOUNT_STRATEGY="priority", AMAZONQ_ACCOUNT_ORDER="a,c,b")
    client = app.test_client()
    assert client.post("/v1/messages", json=fresh()).status_code == 200
    pool = app.extensions["amq"].pool
    states = {s.name: (s.state, s.until) for s in pool.summaries()}
    assert states == {"a": ("suspended", None), "b": ("active", None), "c": ("invalid", None)}
    fake.accounts["a"].suspended = False
    assert client.post("/v1/messages", json=fresh()).status_code == 200
    assert fake.accounts["a"].served == 0  # still out: only an operator puts it back
    pool.enable("a")
    assert client.post("/v1/messages", json=fresh()).status_code == 200
    assert fake.accounts["a"].served == 1
    pool.disable("a")
    add_logins(fake, store, c={})  # `login --account c` again
    time.sleep(0.1)
    assert client.post("/v1/messages", json=fresh()).status_code == 200
    assert fake.accounts["c"].served == 1
    with pytest.raises(KeyError):
        pool.disable("nobody")


def test_a_conversation_stays_on_its_account(fake, store):
    add_logins(fake, store, a={}, b={}, c={})
    client = make_app(fake, store).test_client()
    for _ in range(4):
        client.post("/v1/messages", json=BODY, headers={"X-Claude-Code-Session-Id": "s-1"})
    assert sorted(served(fake).values()) == [0, 0, 4]
    other = dict(BODY, system="another project", metadata={"user_id": "user_x_session_2"})
    for _ in range(3):
        client.post("/v1/messages", json=other)
    assert sorted(served(fake).values()) in ([0, 3, 4], [0, 0, 7])


def test_stickiness_can_be_turned_off(fake, store):
    add_logins(fake, store, a={}, b={}, c={})
    client = make_app(fake, store, AMAZONQ_STICKY_SESSIONS="false").test_client()
    for _ in range(6):
        client.post("/v1/messages", json=fresh(), headers={"X-Claude-Code-Session-Id": "s-1"})
    assert served(fake) == {"a": 2, "b": 2, "c": 2}


def test_a_sticky_conversation_moves_when_its_account_cannot_serve(fake, store):
    add_logins(fake, store, a={}, b={})
    client = make_app(fake, store).test_client()
    headers = {"X-Claude-Code-Session-Id": "s-9"}
    client.post("/v1/messages", json=BODY, headers=headers)
    [first] = [name for name, count in served(fake).items() if count]
    fake.accounts[first].throttled = 1
    assert client.post("/v1/messages", json=BODY, headers=headers).status_code == 200
    other = ({"a", "b"} - {first}).pop()
    assert fake.accounts[other].served == 1


def test_priority_fills_the_first_account_first(fake, store):
    add_logins(fake, store, a={}, b={}, c={})
    client = make_app(fake, store, AMAZONQ_ACCOUNT_STRATEGY="priority", AMAZONQ_ACCOUNT_ORDER="c,a").test_client()
    for _ in range(3):
        client.post("/v1/messages", json=BODY)
    fake.accounts["c"].throttled = 1
    for _ in range(2):
        client.post("/v1/messages", json=BODY)
    assert served(fake) == {"a": 2, "b": 0, "c": 3}


def test_least_busy_sends_to_the_account_with_fewest_streams(fake, store):
    add_logins(fake, store, a={"delay": 1.5}, b={})
    client = make_app(fake, store, AMAZONQ_ACCOUNT_STRATEGY="least-busy").test_client()
    slow = threading.Thread(target=lambda: client.post("/v1/messages", json=fresh()))
    slow.start()
    deadline = time.monotonic() + 5
    while fake.accounts["a"].calls + fake.accounts["b"].calls == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    busy = "a" if fake.accounts["a"].calls else "b"
    for _ in range(3):
        assert client.post("/v1/messages", json=fresh()).status_code == 200
    slow.join()
    idle = ({"a", "b"} - {busy}).pop()
    assert fake.accounts[busy].calls == 1 and fake.accounts[idle].calls == 3


def test_quota_weighs_accounts_by_the_credits_getusagelimits_reports(fake, store):
    add_logins(fake, store, a={"credits_used": 1000.0}, b={"credits_used": 10.0})
    client = make_app(fake, store, AMAZONQ_ACCOUNT_STRATEGY="quota").test_client()
    deadline = time.monotonic() + 5
    while len(fake.usage_requests) < 2:
        assert time.monotonic() < deadline, "GetUsageLimits was not polled"
        time.sleep(0.02)
    time.sleep(0.1)
    for _ in range(8):
        assert client.post("/v1/messages", json=fresh()).status_code == 200
    assert served(fake) == {"a": 0, "b": 8}  # a has no credits left
    query = fake.usage_requests[0]["query"]
    assert query == {"origin": ["AI_EDITOR"], "resourceType": ["AGENTIC_REQUEST"]}


def test_a_new_login_joins_the_running_pool_within_seconds(fake, store):
    add_logins(fake, store, a={})
    client = make_app(fake, store).test_client()
    client.post("/v1/messages", json=fresh())
    add_logins(fake, store, b={})
    time.sleep(0.1)
    for _ in range(4):
        client.post("/v1/messages", json=fresh())
    assert fake.accounts["b"].served == 2


def test_usage_counters_are_kept_per_account_in_the_store(fake, store):
    add_logins(fake, store, a={})
    fake.default_reply.items.append(("meteringEvent", {"usage": 0.25, "unit": "credit", "unitPlural": "credits"}))
    try:
        app = make_app(fake, store)
        for _ in range(2):
            app.test_client().post("/v1/messages", json=BODY)
        time.sleep(0.1)
        pool = app.extensions["amq"].pool
        a = summary(app, "a")
        assert (a.requests_today, a.errors_today) == (2, 0)
        assert a.output_tokens_month > 0 and a.input_tokens_month > 0
        assert a.credits_month == pytest.approx(0.5)
        assert a.token_expires_at and a.token_expires_at > time.time()
        assert sum(requests for _, requests, _ in pool.activity(5)) == 2
        # a second app (another worker on the machine) reads the same counters from the file
        assert summary(make_app(fake, store), "a").requests_today == 2
    finally:
        fake.default_reply.items.pop()


def test_the_accounts_command_lists_and_changes_accounts_without_secrets(fake, store):
    tokens = add_logins(fake, store, a={"suspended": True}, b={})
    app = make_app(fake, store, AMAZONQ_ACCOUNT_STRATEGY="priority", AMAZONQ_ACCOUNT_ORDER="a,b")
    app.test_client().post("/v1/messages", json=BODY)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["accounts"])
    assert result.exit_code == 0, result.output
    assert "a  (login)  suspended" in result.output and "AccessDeniedException TEMPORARILY_SUSPENDED" in result.output
    assert "b  (login)  active" in result.output and "today: 1 requests" in result.output
    assert not any(token in result.output for token in tokens.values())
    assert fake.client_secret not in result.output
    assert runner.invoke(args=["accounts", "disable", "b"]).exit_code == 0
    assert "b  (login)  disabled" in runner.invoke(args=["accounts"]).output
    assert runner.invoke(args=["accounts", "enable", "a"]).exit_code == 0
    assert runner.invoke(args=["accounts", "remove", "b"]).exit_code == 0
    assert store.accounts() == ["a"]
    missing = runner.invoke(args=["accounts", "disable", "nobody"])
    assert missing.exit_code != 0 and "no account named 'nobody'" in missing.output


def test_one_account_is_never_refused_on_health(fake, store):
    """Nothing to fail over to: Q's own answer reaches the client, as before the pool."""
    add_logins(fake, store, a={"throttled": 1})
    app = make_app(fake, store, UPSTREAM_MAX_ATTEMPTS="1")
    client = app.test_client()
    assert client.post("/v1/messages", json=BODY).status_code == 429
    assert summary(app, "a").state == "cooling"
    assert client.post("/v1/messages", json=BODY).status_code == 200


def test_per_account_metrics(fake, store, tmp_path):
    add_logins(fake, store, a={"throttled": 1}, b={})
    app = make_app(fake, store, AMAZONQ_ACCOUNT_STRATEGY="priority", AMAZONQ_ACCOUNT_ORDER="a,b")
    client = app.test_client()
    client.post("/v1/messages", json=BODY)
    text = client.get("/metrics").get_data(as_text=True)
    assert 'amq_account_requests_total{account="b"}' in text
    assert 'amq_account_errors_total{account="a",disposition="throttled"}' in text
    assert 'amq_account_cooldowns_total{account="a",state="cooling"}' in text


def test_the_pool_works_across_gunicorn_workers_with_the_file_store(fake, tmp_path):
    """Two workers on one machine share cooldowns through the file beside the token cache."""
    store = FileStore(str(tmp_path / "token.json"))
    add_logins(fake, store, a={"throttled": 1}, b={}, c={})
    env = amq_env(fake, tmp_path / "token.json", AMAZONQ_REFRESH_TOKEN="", AMAZONQ_COOLDOWN_THROTTLED="60",
                  AMAZONQ_POOL_SYNC_INTERVAL="0.2")
    server = AmqServer(env, tmp_path / "gunicorn.log", workers=2)
    try:
        while fake.accounts["a"].calls == 0:
            assert post(server).status_code == 200
        time.sleep(0.5)  # every worker has synced since
        for _ in range(12):
            assert post(server).status_code == 200
        assert fake.accounts["a"].calls == 1  # once one worker met the throttling, no worker chose it
        assert len({line.split()[2] for line in server.log().splitlines() if "amq.access: POST" in line}) == 2
        log = server.log()  # no login in the environment: the model list is asked with a pool account
        assert "Amazon Q offers" in log and "ListAvailableModels failed" not in log
        text = requests.get(server.url + "/metrics", timeout=10).text  # summed over both workers
        assert 'amq_account_state{account="a",state="cooling"} 1.0' in text
        assert 'amq_account_errors_total{account="a",disposition="throttled"} 1.0' in text
    finally:
        server.stop()


def post(server, **headers):
    return requests.post(server.url + "/v1/messages", json=fresh(), headers={"Connection": "close", **headers},
                         timeout=10)


def test_login_with_an_account_name_adds_an_account_that_joins_the_running_pool(fake, store):
    add_logins(fake, store, a={})
    running = make_app(fake, store)
    running.test_client().post("/v1/messages", json=fresh())
    fake.auto_approve = True
    cli = create_app(pool_config(fake, Path(store.path)), require_credentials=False).test_cli_runner()
    result = cli.invoke(args=["login", "--account", "work", "--oidc-url", fake.url,
                              "--profile-arn", "arn:aws:codewhisperer:us-east-1:123456789012:profile/ABCDEFGHIJKL"])
    assert result.exit_code == 0, result.output
    assert "account work joins the pool" in result.output
    stored = store.load("work")
    assert stored["profileArn"].endswith("profile/ABCDEFGHIJKL") and store.accounts() == ["a", "work"]
    assert stored["refreshToken"] not in result.output
    time.sleep(0.1)
    for _ in range(4):
        assert running.test_client().post("/v1/messages", json=fresh()).status_code == 200
    work = [r for r in fake.requests if r["account"] is None]  # the fake's device login is no FakeAccount
    assert len(work) == 2
    assert work[0]["body"]["profileArn"].endswith("profile/ABCDEFGHIJKL")  # this account's own profile
    bad = cli.invoke(args=["login", "--account", "../etc"])
    assert bad.exit_code != 0 and "--account" in bad.output


def test_exhaustion_lasts_until_the_reset_getusagelimits_reports(fake, store):
    add_logins(fake, store, a={"monthly": True, "days_until_reset": 3}, b={})
    app = make_app(fake, store, AMAZONQ_ACCOUNT_STRATEGY="priority", AMAZONQ_ACCOUNT_ORDER="a,b")
    assert app.test_client().post("/v1/messages", json=BODY).status_code == 200
    deadline = time.monotonic() + 5
    while summary(app, "a").until != pytest.approx(time.time() + 3 * 86400 + 600, abs=10):
        assert time.monotonic() < deadline, "the reset date was not learnt"
        time.sleep(0.05)
    exhausted = summary(app, "a")
    assert exhausted.state == "exhausted"
    assert exhausted.until == pytest.approx(time.time() + 3 * 86400 + 600, abs=10)


def test_an_account_of_another_region_uses_that_regions_endpoint():
    from amq.credentials.pool import account_endpoint

    default = "https://q.us-east-1.amazonaws.com/"
    frankfurt = "arn:aws:codewhisperer:eu-central-1:123456789012:profile/ABCDEFGHIJKL"
    assert account_endpoint(default, frankfurt) == "https://q.eu-central-1.amazonaws.com/"
    assert account_endpoint(default, frankfurt.replace("eu-central-1", "us-east-1")) is None
    assert account_endpoint(default, "") is None
    assert account_endpoint("http://127.0.0.1:9/", frankfurt) is None  # a configured endpoint wins


def test_import_q_cli_with_an_account_name_keeps_that_logins_profile(fake, store, tmp_path):
    from tests.test_login import cli_login, make_database

    arn = "arn:aws:codewhisperer:eu-central-1:123456789012:profile/ABCDEFGHIJKL"
    database = make_database(tmp_path / "q" / "data.sqlite3", "codewhisperer", **cli_login(fake),
                             profile={"arn": arn, "profile_name": "dev"})
    cli = create_app(pool_config(fake, Path(store.path)), require_credentials=False).test_cli_runner()
    result = cli.invoke(args=["import-q-cli", "--account", "laptop", str(database)])
    assert result.exit_code == 0, result.output
    stored = store.load("laptop")
    assert stored["refreshToken"] == fake.refresh_token and stored["profileArn"] == arn
    assert store.load() == {} and fake.refresh_token not in result.output
    assert "Account laptop joins the pool" in result.output


def test_a_model_no_account_offers_is_a_400_not_a_429(fake, store):
    add_logins(fake, store, a={}, b={})
    fake.enqueue(*[http_error(400, "ValidationException", "Invalid model.", reason="INVALID_MODEL_ID")] * 2)
    client = make_app(fake, store).test_client()
    first = client.post("/v1/messages", json=BODY)
    assert first.status_code == 400 and len(fake.requests) == 2  # both tried, Q's own answer
    again = client.post("/v1/messages", json=fresh())  # both known to lack it: no call at all
    assert again.status_code == 400 and "not offered" in again.get_json()["error"]["message"]
    assert len(fake.requests) == 2


def open_responses(proxy) -> list:
    """The Q responses `proxy` has opened and not yet closed (kept up to date)."""
    opened = []
    real_open = proxy.client.open

    def spy_open(*args, **kwargs):
        response = real_open(*args, **kwargs)
        real_close = response.close
        response.close = lambda: (opened.remove(response), real_close())
        opened.append(response)
        return response

    proxy.client.open = spy_open
    return opened


def test_a_stream_closed_right_after_its_first_event_frees_its_account_and_qs_connection(fake, store):
    add_logins(fake, store, a={})
    proxy = make_app(fake, store).extensions["amq"]
    opened = open_responses(proxy)
    for start in (True, False):  # the client drops at the first write, or before any
        events = proxy.open_message(proxy.validate(fresh()))
        if start:
            assert next(events)[0]["type"] == "message_start"
        events.close()
        events.close()  # twice is harmless
        assert opened == [] and proxy.pool.accounts()[0].inflight == 0


def test_a_failing_token_estimate_frees_the_account_and_qs_connection(fake, store, monkeypatch):
    """The estimate is made while Q is called, so it can fail after Q answered: the account and
    Q's connection are given back, and the client gets an Anthropic-shaped error."""
    add_logins(fake, store, a={})
    app = make_app(fake, store)
    proxy = app.extensions["amq"]
    opened = open_responses(proxy)

    def broken_estimate(payload):
        raise ValueError("estimate failed")

    monkeypatch.setattr("amq.proxy.count_request_tokens", broken_estimate)
    response = app.test_client().post("/v1/messages", json=fresh())
    assert response.status_code == 500 and response.get_json()["type"] == "error"
    assert response.get_json()["error"]["type"] == "api_error"
    assert fake.accounts["a"].served == 1  # Q was called: the estimate came after
    assert opened == [] and proxy.pool.accounts()[0].inflight == 0


def test_one_account_that_can_serve_keeps_the_in_call_retries(fake, store):
    add_logins(fake, store, a={}, b={})
    app = make_app(fake, store)
    app.extensions["amq"].pool.disable("b")
    fake.enqueue(http_error(500, "InternalServerException", "Encountered an unexpected error."))
    response = app.test_client().post("/v1/messages", json=fresh())
    assert response.status_code == 200, response.get_json()
    assert fake.accounts["a"].served == 1 and fake.accounts["b"].calls == 0


def test_a_model_one_account_lacks_while_the_others_cool_is_a_429_and_is_asked_again_later(
        fake, store, monkeypatch):
    monkeypatch.setattr("amq.credentials.pool.NO_MODEL_RECHECK", 0.5)
    add_logins(fake, store, a={}, b={})
    fake.enqueue(http_error(429, "ThrottlingException", "Too many requests", reason="USER_REQUEST_RATE_EXCEEDED"),
                 http_error(400, "ValidationException", "Invalid model.", reason="INVALID_MODEL_ID"))
    client = make_app(fake, store, AMAZONQ_ACCOUNT_STRATEGY="priority", AMAZONQ_ACCOUNT_ORDER="b,a",
                      AMAZONQ_COOLDOWN_THROTTLED="30").test_client()
    for _ in range(2):  # b cools, a lacks the model: wait for b, never a fatal 400
        response = client.post("/v1/messages", json=fresh())
        assert response.status_code == 429 and 0 < int(response.headers["retry-after"]) <= 30
    assert len(fake.requests) == 2
    time.sleep(0.6)  # an account's model list can change: it is asked again
    assert client.post("/v1/messages", json=fresh()).status_code == 200
    assert fake.accounts["a"].served == 1
