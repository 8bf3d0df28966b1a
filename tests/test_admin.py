"""The admin page in process: closed without ADMIN_KEY, start-up needs ADMIN_SECRET, the session
cookie's flags, CSRF, the slowdown after wrong keys, the JSON, the device login, the adapter.

The browser tests (tests/test_admin_browser.py) drive the same page in Chromium under gunicorn.
"""
from __future__ import annotations

import re
import time

import pytest
import requests

from amq.admin.auth import LoginThrottle, key_matches
from amq.admin.logins import PendingLogins
from amq.credentials.login import OidcClient
from amq.credentials.store import FileStore
from app import create_app
from tests.admin_support import ADMIN_KEY, admin_settings, secrets_of, store_login
from tests.support import app_config


@pytest.fixture
def store(tmp_path):
    return FileStore(str(tmp_path / "token.json"))


@pytest.fixture
def admin_app(fake_q, tmp_path, store):
    store_login(fake_q, store, "default")
    store_login(fake_q, store, "beta")
    return create_app(app_config(fake_q, tmp_path, LOG_LEVEL="WARNING", **admin_settings()),
                      require_credentials=True)


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def log_in(client, key: str = ADMIN_KEY, **headers):
    token = csrf_of(client.get("/admin/login").text)
    return client.post("/admin/login", data={"key": key, "csrf_token": token}, headers=headers)


def test_closed_without_admin_key(fake_q, tmp_path):
    client = create_app(app_config(fake_q, tmp_path, LOG_LEVEL="WARNING")).test_client()
    for path in ("/admin/", "/admin/login", "/admin/api/accounts", "/admin/static/admin.js"):
        response = client.get(path)
        assert response.status_code == 404
        assert response.json["error"]["type"] == "not_found_error"
    assert client.post("/admin/login", data={"key": ""}).status_code == 404


def test_admin_key_without_secret_stops_start_up(fake_q, tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="ADMIN_SECRET must be set when ADMIN_KEY is set"):
        create_app(app_config(fake_q, tmp_path, ADMIN_KEY=ADMIN_KEY))
    import app as app_module

    for key, value in app_config(fake_q, tmp_path, ADMIN_KEY=ADMIN_KEY).items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as stopped:
        app_module.check_settings()
    assert "\n" not in str(stopped.value.code) and "ADMIN_SECRET" in str(stopped.value.code)


def test_a_short_admin_key_stops_start_up_in_one_line(fake_q, tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="ADMIN_KEY must be at least 16 characters"):
        create_app(app_config(fake_q, tmp_path, **admin_settings(ADMIN_KEY="short-key-15chr")))
    import app as app_module

    for key, value in app_config(fake_q, tmp_path, **admin_settings(ADMIN_KEY="k" * 15)).items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as stopped:
        app_module.check_settings()
    assert "\n" not in str(stopped.value.code) and "ADMIN_KEY" in str(stopped.value.code)
    assert "k" * 15 not in str(stopped.value.code)
    create_app(app_config(fake_q, tmp_path, **admin_settings(ADMIN_KEY="k" * 16)))  # 16 will do


def test_with_the_admin_page_amq_starts_without_any_login(fake_q, tmp_path, monkeypatch, caplog):
    """On a PaaS with no terminal the first account is added at /admin, so no login is needed
    to start; until one exists, API requests get a 401 that says so."""
    settings = app_config(fake_q, tmp_path, **admin_settings())
    import app as app_module

    # check_settings() marks the process as checked (as in the gunicorn master); undo it after
    # this test, or later create_app() calls would not stop on a bad REDIS_URL.
    monkeypatch.setattr(app_module, "_store_checked", False)
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    app_module.check_settings()  # no SystemExit
    assert "no Amazon Q login yet: add an account on the admin page" in caplog.text
    client = create_app(settings, require_credentials=True).test_client()
    answer = client.post("/v1/messages", json={"model": "claude-sonnet-4-5", "max_tokens": 10,
                                               "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 401 and "no Amazon Q login" in answer.json["error"]["message"]
    assert client.get("/admin/login").status_code == 200
    monkeypatch.delenv("ADMIN_KEY")
    with pytest.raises(SystemExit, match="AMAZONQ_REFRESH_TOKEN is not set"):
        app_module.check_settings()  # without the admin page, a login is still required


def test_pages_need_the_session(admin_app):
    client = admin_app.test_client()
    response = client.get("/admin/")
    assert response.status_code == 302 and response.headers["Location"].endswith("/admin/login")
    assert client.get("/admin/api/accounts").status_code == 401


def test_login_sets_a_strict_httponly_cookie_secure_behind_https(admin_app):
    response = log_in(admin_app.test_client())
    assert response.status_code == 302
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/admin" in cookie
    assert "Secure" not in cookie  # plain http: a Secure cookie would never come back
    behind_router = log_in(admin_app.test_client(), **{"X-Forwarded-Proto": "https"})
    assert "; Secure" in behind_router.headers["Set-Cookie"]
    assert ADMIN_KEY not in cookie


def test_wrong_key_is_refused_then_slowed_down(admin_app):
    client = admin_app.test_client()
    wrong = log_in(client, "not-the-key")
    assert wrong.status_code == 401 and "Wrong key" in wrong.text
    too_soon = log_in(client)  # the right key, but within the wait: not even checked
    assert too_soon.status_code == 429 and "try again in" in too_soon.text
    assert client.get("/admin/api/accounts").status_code == 401
    time.sleep(1.05)
    assert log_in(client).status_code == 302
    assert client.get("/admin/api/accounts").status_code == 200


def test_throttle_doubles_the_wait_and_forgets_after_success():
    now = [100.0]
    throttle = LoginThrottle(clock=lambda: now[0], first=1.0, most=8.0)
    delays = []
    for _ in range(5):
        allowed, delay = throttle.attempt("a")  # counted before the key is even compared
        assert allowed
        delays.append(delay)
        assert throttle.attempt("a") == (False, delay)  # within the wait: refused, not counted
        now[0] += delay
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert throttle.attempt("b") == (True, 1.0)
    throttle.succeeded("a")
    assert throttle.attempt("a") == (True, 1.0)


def _parallel_wrong_keys(app, monkeypatch, count: int = 30) -> list[int]:
    """`count` clients send a wrong key at the same moment; the key compare is slow (it yields),
    as a Redis round trip is. Returns the statuses; asserts how many keys were compared."""
    import threading

    from amq.admin import views

    compared, real = [], views.key_matches

    def slow_compare(presented, key):
        compared.append(presented)
        time.sleep(0.05)
        return real(presented, key)

    monkeypatch.setattr(views, "key_matches", slow_compare)
    clients = [app.test_client() for _ in range(count)]
    tokens = [csrf_of(client.get("/admin/login").text) for client in clients]
    start, statuses = threading.Barrier(count), []

    def attempt(client, token):
        start.wait()
        statuses.append(client.post("/admin/login", data={"key": "wrong-" + token, "csrf_token": token}).status_code)

    threads = [threading.Thread(target=attempt, args=pair) for pair in zip(clients, tokens, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(compared) == 1, f"{len(compared)} wrong keys were compared within one slowdown window"
    return statuses


def test_parallel_wrong_keys_get_one_compare_per_slowdown_window(admin_app, monkeypatch):
    statuses = _parallel_wrong_keys(admin_app, monkeypatch)
    assert sorted(statuses) == [401] + [429] * (len(statuses) - 1)


def test_parallel_wrong_keys_with_redis_get_one_compare_per_slowdown_window(fake_q, tmp_path, monkeypatch):
    from tests.redis_server import RedisServer

    with RedisServer(tmp_path / "redis") as server:
        settings = app_config(fake_q, tmp_path, LOG_LEVEL="WARNING", REDIS_URL=server.url, **admin_settings())
        statuses = _parallel_wrong_keys(create_app(settings, require_credentials=False), monkeypatch)
        assert sorted(statuses) == [401] + [429] * (len(statuses) - 1)


def test_key_compare():
    assert key_matches(ADMIN_KEY, ADMIN_KEY)
    assert not key_matches(ADMIN_KEY[:-1], ADMIN_KEY) and not key_matches("", ADMIN_KEY)


def test_post_without_csrf_token_is_refused(admin_app):
    client = admin_app.test_client()
    log_in(client)
    for path in ("/admin/accounts/beta/disable", "/admin/logout", "/admin/logins"):
        response = client.post(path, data={"account": "beta"})
        assert response.status_code == 403 and "CSRF token" in response.text
        wrong = client.post(path, data={"account": "beta", "csrf_token": "forged"})
        assert wrong.status_code == 403
    states = {row["name"]: row["state"] for row in client.get("/admin/api/accounts").json["accounts"]}
    assert states == {"default": "active", "beta": "active"}
    token = csrf_of(client.get("/admin/").text)
    assert client.post("/admin/accounts/beta/disable", data={"csrf_token": token}).status_code == 302
    assert client.post("/admin/accounts/beta/enable",
                       headers={"X-CSRF-Token": token}).status_code == 302  # the header works too


def test_accounts_json_lists_the_store_and_holds_no_secret(admin_app, fake_q, store):
    client = admin_app.test_client()
    log_in(client)
    answer = client.get("/admin/api/accounts")
    data = answer.json
    assert [row["name"] for row in data["accounts"]] == ["beta", "default"]  # the pool's order: alphabetical by default
    row = data["accounts"][1]
    assert row["source"] == "login" and row["token_expires_at"] == pytest.approx(store.load("beta")["expiresAt"])
    assert len(data["activity"]) == 60 and all(len(minute) == 3 for minute in data["activity"])
    assert answer.headers["Cache-Control"] == "no-store"
    page = client.get("/admin/").text
    for secret in secrets_of(fake_q, store):
        assert secret not in answer.text and secret not in page


def test_logout_ends_the_session(admin_app):
    client = admin_app.test_client()
    log_in(client)
    token = csrf_of(client.get("/admin/").text)
    assert client.post("/admin/logout", data={"csrf_token": token}).status_code == 302
    assert client.get("/admin/api/accounts").status_code == 401


def test_a_session_made_under_one_key_is_refused_after_the_key_changes(admin_app, fake_q, tmp_path):
    """Changing ADMIN_KEY (and restarting) revokes every session: the cookie carries an HMAC of
    the key it was made under, checked on every request."""
    client = admin_app.test_client()
    log_in(client)
    assert client.get("/admin/api/accounts").status_code == 200
    cookie = client.get_cookie("amq_admin", path="/admin")
    same = create_app(app_config(fake_q, tmp_path, LOG_LEVEL="WARNING", **admin_settings()),
                      require_credentials=True).test_client()
    same.set_cookie("amq_admin", cookie.value, path="/admin")
    assert same.get("/admin/api/accounts").status_code == 200  # the same key: still valid
    changed = create_app(app_config(fake_q, tmp_path, LOG_LEVEL="WARNING",
                                    **admin_settings(ADMIN_KEY="a-brand-new-admin-key-0123")),
                         require_credentials=True).test_client()
    changed.set_cookie("amq_admin", cookie.value, path="/admin")
    assert changed.get("/admin/api/accounts").status_code == 401
    page = changed.get("/admin/")
    assert page.status_code == 302 and page.headers["Location"].endswith("/admin/login")
    assert changed.get("/admin/login").status_code == 200  # the login form, not a redirect to the page


def test_device_login_from_the_page_stores_the_account(fake_q, store):
    fake_q.device_interval = 1
    logins = PendingLogins(store, lambda region: OidcClient(fake_q.url, requests.Session()))
    pending = logins.start("gamma", start_url="https://view.awsapps.com/start", region="us-east-1")
    assert pending.user_code and pending.url.startswith(fake_q.url)
    assert logins.status(pending.id, "gamma", pending.started)["state"] == "waiting"
    fake_q.approve(pending.user_code)
    deadline = time.monotonic() + 10
    while logins.status(pending.id, "gamma", pending.started)["state"] == "waiting":
        assert time.monotonic() < deadline, "the login did not finish"
        time.sleep(0.1)
    assert logins.status(pending.id, "gamma", pending.started)["state"] == "done"
    assert "gamma" in store.accounts() and store.load("gamma")["source"] == "login"
    assert fake_q.refresh_token_valid(store.load("gamma")["refreshToken"])
    # Another worker knows nothing of the login: it answers from the store.
    other = PendingLogins(store, lambda region: None)
    assert other.status("unknown-id", "gamma", pending.started)["state"] == "done"
    assert other.status("unknown-id", "gamma", time.time() + 60)["state"] == "waiting"
    with pytest.raises(ValueError):
        logins.start("../etc", start_url="x", region="us-east-1")


def test_with_redis_every_instance_shows_the_same_accounts_and_counts_the_same_wrong_keys(fake_q, tmp_path):
    from amq.config import load_settings
    from amq.credentials.redis_store import RedisStore
    from tests.redis_server import RedisServer

    with RedisServer(tmp_path / "redis") as server:
        settings = app_config(fake_q, tmp_path, LOG_LEVEL="WARNING", REDIS_URL=server.url, **admin_settings())
        store = RedisStore.from_settings(load_settings(overrides=settings))
        store_login(fake_q, store, "default")
        store_login(fake_q, store, "beta")
        first, second = (create_app(settings, require_credentials=True).test_client() for _ in range(2))
        assert log_in(first, "wrong").status_code == 401
        assert log_in(second).status_code == 429  # the other instance knows of the wrong key
        time.sleep(1.05)
        assert log_in(second).status_code == 302 and log_in(first).status_code == 302
        store_login(fake_q, store, "gamma")  # as the device flow on one instance would
        lists = [[row["name"] for row in client.get("/admin/api/accounts").json["accounts"]]
                 for client in (first, second)]
        assert lists[0] == lists[1] and set(lists[0]) == {"default", "beta", "gamma"}


def test_shared_slowdown_falls_back_to_the_process_when_redis_is_down():
    import redis

    from amq.admin.auth import RedisLoginThrottle

    def fail(*args, **kwargs):
        raise redis.ConnectionError("Connection refused")

    class Down:
        def register_script(self, script):
            return fail  # a Script object makes no call until it is run

        def __getattr__(self, name):
            return fail

    now = [100.0]
    throttle = RedisLoginThrottle(Down(), "amq:admin:")
    throttle.local.clock = lambda: now[0]
    assert throttle.attempt("a") == (True, 1.0)
    assert throttle.attempt("a") == (False, 1.0)
    now[0] += 1.0
    assert throttle.attempt("a") == (True, 2.0)
    throttle.succeeded("a")
    assert throttle.attempt("a") == (True, 1.0)
