"""Token manager: refresh timing, rotation persisted, cache preference, single flight."""
import json
import os
import stat
import threading
import time

import pytest
import requests
import responses

from amq.config import ConfigError, load_settings
from amq.credentials.manager import TokenManager
from amq.credentials.store import FileStore
from amq.errors import BadGateway, CredentialsRejected

TOKEN_URL = "https://oidc.test/token"


class Clock:
    def __init__(self, now=1_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


def token_reply(access="at-1", expires_in=3600, refresh=None):
    body = {"accessToken": access, "tokenType": "Bearer", "expiresIn": expires_in}
    if refresh:
        body["refreshToken"] = refresh
    return body


def make_manager(tmp_path, clock=None, refresh_token="rt-0"):
    return TokenManager(client_id="cid", client_secret="csecret", refresh_token=refresh_token,
                        token_endpoint=TOKEN_URL, store=FileStore(str(tmp_path / "token.json")),
                        session=requests.Session(), clock=clock or Clock())


def settings(tmp_path, **env):
    base = {"AMAZONQ_REFRESH_TOKEN": "rt-env", "AMAZONQ_CLIENT_ID": "cid",
            "AMAZONQ_CLIENT_SECRET": "csecret", "AMAZONQ_TOKEN_ENDPOINT": TOKEN_URL,
            "AMAZONQ_TOKEN_CACHE": str(tmp_path / "token.json")}
    base.update(env)
    return load_settings({k: v for k, v in base.items() if v is not None})


@responses.activate
def test_refresh_sends_camel_case_body_and_caches_the_token(tmp_path):
    call = responses.post(TOKEN_URL, json=token_reply())
    manager = make_manager(tmp_path)
    assert manager.get_token() == "at-1"
    assert manager.get_token() == "at-1"
    assert call.call_count == 1
    assert json.loads(call.calls[0].request.body) == {
        "clientId": "cid", "clientSecret": "csecret", "grantType": "refresh_token", "refreshToken": "rt-0"}


@responses.activate
def test_refreshes_five_minutes_before_expiry(tmp_path):
    clock = Clock()
    responses.post(TOKEN_URL, json=token_reply("at-1"))
    responses.post(TOKEN_URL, json=token_reply("at-2"))
    manager = make_manager(tmp_path, clock)
    assert manager.get_token() == "at-1"
    clock.now += 3600 - 301
    assert manager.get_token() == "at-1"
    clock.now += 2
    assert manager.get_token() == "at-2"


@responses.activate
def test_rotated_refresh_token_is_stored_at_once_with_mode_0600(tmp_path):
    responses.post(TOKEN_URL, json=token_reply(refresh="rt-1"))
    responses.post(TOKEN_URL, json=token_reply("at-2", refresh="rt-2"))
    clock = Clock()
    manager = make_manager(tmp_path, clock)
    manager.get_token()
    path = tmp_path / "token.json"
    stored = json.loads(path.read_text())
    assert stored["refreshToken"] == "rt-1" and stored["accessToken"] == "at-1"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    clock.now += 4000
    manager.get_token()
    assert json.loads(responses.calls[1].request.body)["refreshToken"] == "rt-1"
    assert json.loads(path.read_text())["refreshToken"] == "rt-2"
    assert sorted(os.listdir(tmp_path)) == ["token.json", "token.json.lock"]  # no temp files left


@responses.activate
def test_short_lived_token_is_used_for_its_request_without_a_refresh_loop(tmp_path):
    call = responses.post(TOKEN_URL, json=token_reply(expires_in=60))
    manager = make_manager(tmp_path)
    assert manager.get_token() == "at-1"
    assert call.call_count == 1


@responses.activate
def test_short_lived_tokens_are_refreshed_at_four_fifths_of_their_life(tmp_path):
    clock = Clock()
    responses.post(TOKEN_URL, json=token_reply("at-1", expires_in=60))
    responses.post(TOKEN_URL, json=token_reply("at-2", expires_in=60))
    manager = make_manager(tmp_path, clock)
    assert manager.get_token() == "at-1"
    clock.now += 47
    assert manager.get_token() == "at-1"
    clock.now += 2
    assert manager.get_token() == "at-2"


@responses.activate
def test_invalid_grant_is_a_clear_authentication_error(tmp_path):
    responses.post(TOKEN_URL, status=400, json={"error": "invalid_grant",
                                                "error_description": "Invalid refresh token provided"},
                   headers={"x-amzn-ErrorType": "InvalidGrantException:http://internal.amazon.com/coral/"})
    with pytest.raises(CredentialsRejected) as info:
        make_manager(tmp_path).get_token()
    assert info.value.status == 401 and "refresh token is no longer valid" in info.value.message
    assert "rt-0" not in info.value.message


@responses.activate
def test_rejection_refreshes_once_then_reuses_the_new_token(tmp_path):
    call = responses.post(TOKEN_URL, json=token_reply("at-1"))
    responses.post(TOKEN_URL, json=token_reply("at-2"))
    manager = make_manager(tmp_path)
    first = manager.get_token()
    assert manager.refresh_after_rejection(first) == "at-2"
    assert manager.refresh_after_rejection(first) == "at-2"  # already replaced: no new refresh
    assert call.call_count + 1 == len(responses.calls) == 2


def test_concurrent_callers_share_one_refresh(tmp_path):
    calls = []

    class SlowSession:
        def post(self, url, json, timeout):
            calls.append(json)
            time.sleep(0.2)
            response = requests.Response()
            response.status_code = 200
            response._content = b'{"accessToken": "at-1", "expiresIn": 60}'  # shorter than margin
            return response

    manager = TokenManager(client_id="c", client_secret="s", refresh_token="r", token_endpoint=TOKEN_URL,
                           store=FileStore(str(tmp_path / "t.json")), session=SlowSession())
    results = []
    threads = [threading.Thread(target=lambda: results.append(manager.get_token())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["at-1"] * 8
    assert len(calls) == 1


def test_cache_refresh_token_is_preferred_on_restart(tmp_path):
    first = TokenManager.from_settings(settings(tmp_path), requests.Session())
    assert first._refresh_token == "rt-env"
    first._refresh_token = "rt-rotated"
    first._token = None
    from amq.credentials.record import AccessToken
    first._token = AccessToken("at-x", time.time() + 3600)
    first._store()
    again = TokenManager.from_settings(settings(tmp_path), requests.Session())
    assert again._refresh_token == "rt-rotated"
    assert again.get_token() == "at-x"  # the cached access token is reused, no refresh


def test_new_environment_credentials_win_over_an_old_cache(tmp_path):
    FileStore(str(tmp_path / "token.json")).save(
        {"clientId": "cid", "refreshToken": "rt-old-rotated", "seed": "other-login"})
    manager = TokenManager.from_settings(settings(tmp_path, AMAZONQ_REFRESH_TOKEN="rt-new-login"),
                                         requests.Session())
    assert manager._refresh_token == "rt-new-login"


def test_credentials_may_come_from_the_cache_alone(tmp_path):
    FileStore(str(tmp_path / "token.json")).save(
        {"clientId": "cid2", "clientSecret": "s2", "refreshToken": "rt-cached"})
    manager = TokenManager.from_settings(settings(tmp_path, AMAZONQ_REFRESH_TOKEN=None,
                                                  AMAZONQ_CLIENT_ID=None, AMAZONQ_CLIENT_SECRET=None),
                                         requests.Session())
    assert (manager.client_id, manager._refresh_token) == ("cid2", "rt-cached")


@pytest.mark.parametrize("missing", ["AMAZONQ_REFRESH_TOKEN", "AMAZONQ_CLIENT_ID", "AMAZONQ_CLIENT_SECRET"])
def test_missing_credential_is_named(tmp_path, missing):
    with pytest.raises(ConfigError) as info:
        TokenManager.from_settings(settings(tmp_path, **{missing: None}), requests.Session())
    assert str(info.value).startswith(missing)


@responses.activate
def test_status_reports_no_secret(tmp_path):
    responses.post(TOKEN_URL, json=token_reply("at-secret", refresh="rt-secret"))
    clock = Clock()
    manager = make_manager(tmp_path, clock)
    assert manager.status() == {"has_token": False, "token_expired": False}
    manager.get_token()
    assert manager.status() == {"has_token": True, "token_expired": False}
    clock.now += 4000
    assert manager.status() == {"has_token": True, "token_expired": True}
    assert "secret" not in json.dumps(manager.status())


def test_callers_waiting_on_a_failed_refresh_share_its_failure(tmp_path):
    """A broken token service costs one timeout, not one per queued request."""
    calls = []

    class FailingSession:
        def post(self, url, json, timeout):
            calls.append(1)
            time.sleep(0.2)
            raise requests.ConnectionError("token service down")

    manager = TokenManager(client_id="c", client_secret="s", refresh_token="r", token_endpoint=TOKEN_URL,
                           store=FileStore(str(tmp_path / "t.json")), session=FailingSession())
    failures = []

    def call():
        try:
            manager.get_token()
        except Exception as exc:  # noqa: BLE001
            failures.append(type(exc).__name__)

    threads = [threading.Thread(target=call) for _ in range(6)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == ["BadGateway"] * 6
    assert len(calls) == 1 and time.monotonic() - started < 1.0
    # A later caller tries again.
    with pytest.raises(BadGateway):
        manager.get_token()
    assert len(calls) == 2
