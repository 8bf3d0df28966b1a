"""Getting a login: the device flow (`login`), the Q CLI / Kiro CLI import, `status`, and the
path from nothing to a working proxy."""
from __future__ import annotations

import json
import os
import re
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from amq.credentials.importer import default_paths
from amq.credentials.login import BUILDER_ID_START_URL, SCOPES, LoginError, OidcClient, device_login
from app import create_app
from tests.fakeq import FakeQ
from tests.support import ROOT, AmqServer


class FakeTime:
    """sleep() advances clock() at once; the sleeps are recorded."""

    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self):
        return self.now


def login(fake, approve=True, previous=None, **kwargs):
    """Run the device flow against the fake; the 'user' approves as soon as the code is shown."""
    fake_time, shown = FakeTime(), []

    def echo(text):
        shown.append(text)
        code = re.search(r"confirm the code (\S+):", text)
        if code and approve:
            fake.approve(code.group(1), deny=approve == "deny")

    record = device_login(OidcClient(fake.url, requests.Session()), previous=previous, echo=echo,
                          sleep=fake_time.sleep, clock=fake_time.clock, **kwargs)
    return record, fake_time.sleeps, "\n".join(shown)


def device_polls(fake):
    return [e["error"] for e in fake.token_log if e["grantType"] == "urn:ietf:params:oauth:grant-type:device_code"]


# --------------------------------------------------------------------------- device flow

def test_device_flow_registers_shows_the_code_and_polls_until_approved(fake):
    fake.device_interval = 2
    fake.enforce_poll_interval = False  # the client's clock is fake; the script decides
    fake.device_script = ["authorization_pending", "slow_down", "authorization_pending"]
    record, sleeps, shown = login(fake)
    assert sleeps == [2, 2, 7, 7]  # slow_down adds 5 s for good
    assert device_polls(fake) == ["authorization_pending", "slow_down", "authorization_pending", None]
    assert fake.registrations == [{"clientName": "amq", "clientType": "public", "scopes": SCOPES}]
    assert fake.device_authorizations[0]["startUrl"] == BUILDER_ID_START_URL
    assert fake.url + "device/?user_code=" in shown
    assert fake.refresh_token_valid(record["refreshToken"]) and fake.access_token_valid(record["accessToken"])
    assert record["tokenEndpoint"] == fake.token_url and record["region"] == "us-east-1"
    assert record["source"] == "login" and record["clientSecretExpiresAt"] > time.time() + 86400
    assert record["refreshToken"] not in shown and record["clientSecret"] not in shown


def test_device_flow_gives_up_when_the_code_expires(fake):
    fake.device_interval, fake.device_expires_in = 5, 12
    fake.enforce_poll_interval = False
    with pytest.raises(LoginError, match="expired"):
        login(fake, approve=False)
    assert device_polls(fake) == ["authorization_pending"] * 2  # at 5 s and 10 s; 15 s is too late


@pytest.mark.parametrize("script, message", [
    (["authorization_pending", "expired_token"], "expired"),
    (["access_denied"], "denied"),
], ids=["service-says-expired", "denied"])
def test_device_flow_ends_on_the_services_verdict(fake, script, message):
    fake.enforce_poll_interval = False
    fake.device_script = list(script)
    with pytest.raises(LoginError, match=message):
        login(fake, approve=False)
    assert device_polls(fake) == script


def test_device_flow_denied_in_the_browser(fake):
    fake.enforce_poll_interval = False
    with pytest.raises(LoginError, match="denied"):
        login(fake, approve="deny")


def test_registration_is_reused_while_valid_and_renewed_when_refused(fake):
    fake.enforce_poll_interval = False
    first, _, _ = login(fake)
    second, _, _ = login(fake, previous=first)
    assert len(fake.registrations) == 1 and second["clientId"] == first["clientId"]
    third, _, _ = login(fake, previous=dict(second, clientSecret="revoked"))
    assert len(fake.registrations) == 2 and third["clientId"] != first["clientId"]
    login(fake, previous=dict(third, clientSecretExpiresAt=time.time() + 30))  # about to expire
    assert len(fake.registrations) == 3
    login(fake, previous=dict(third, source="Amazon Q CLI (data.sqlite3)"))  # the CLI's own
    assert len(fake.registrations) == 4


# --------------------------------------------------------------------------- the commands

def app_for(tmp_path, fake, **extra):
    config = {"AMAZONQ_TOKEN_CACHE": str(tmp_path / "store.json"), "AMAZONQ_TOKEN_ENDPOINT": fake.token_url,
              "AMAZONQ_API_ENDPOINT": fake.url, **extra}
    return create_app(config, require_credentials=False)


def invoke(tmp_path, fake, *args, **extra):
    return app_for(tmp_path, fake, **extra).test_cli_runner().invoke(args=list(args))


def secrets_of(fake, store: Path) -> list[str]:
    stored = json.loads(store.read_text()) if store.exists() else {}
    return [s for s in (fake.client_secret, fake.refresh_token, stored.get("refreshToken"),
                        stored.get("clientSecret"), stored.get("accessToken")) if s]


def test_login_command_with_identity_center_options(tmp_path, fake, monkeypatch):
    fake.auto_approve = True
    result = invoke(tmp_path, fake, "login", "--start-url", "https://d-123.awsapps.com/start",
                    "--region", "eu-west-1", "--oidc-url", fake.url)
    assert result.exit_code == 0, result.output
    stored = json.loads((tmp_path / "store.json").read_text())
    assert fake.device_authorizations[0]["startUrl"] == "https://d-123.awsapps.com/start"
    assert (stored["region"], stored["startUrl"]) == ("eu-west-1", "https://d-123.awsapps.com/start")
    assert "AMAZONQ_PROFILE_ARN" in result.output
    assert not [s for s in secrets_of(fake, tmp_path / "store.json") if s in result.output]


def test_oidc_service_of_login():
    from amq.cli import _oidc_base
    from amq.config import load_settings

    plain, pointed = load_settings({}), load_settings({"AMAZONQ_TOKEN_ENDPOINT": "http://fake:1/token"})
    assert _oidc_base(plain, None, "us-east-1", False) == "https://oidc.us-east-1.amazonaws.com"
    assert _oidc_base(pointed, None, "us-east-1", False) == "http://fake:1"
    assert _oidc_base(pointed, None, "eu-west-1", True) == "https://oidc.eu-west-1.amazonaws.com"
    assert _oidc_base(pointed, "http://other:2/", "eu-west-1", True) == "http://other:2"


def test_status_without_credentials_says_how_to_log_in(tmp_path, fake):
    result = invoke(tmp_path, fake, "status")
    assert result.exit_code == 1
    assert "credentials: none" in result.output and "flask --app app login" in result.output


def test_status_reports_a_refused_login(tmp_path, fake):
    (tmp_path / "store.json").write_text(json.dumps(
        {"clientId": fake.client_id, "clientSecret": fake.client_secret, "refreshToken": "aor-spent"}))
    result = invoke(tmp_path, fake, "status")
    assert result.exit_code == 1
    assert "live check: FAILED" in result.output and "refresh token is no longer valid" in result.output
    assert "aor-spent" not in result.output and fake.client_secret not in result.output


def make_database(path: Path, prefix: str, *, token=None, registration=None, profile=None, extra=None):
    """A SQLite file in the layout the Q CLI and Kiro CLI use (docs/oidc.md)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE auth_kv (key TEXT PRIMARY KEY, value TEXT)")
    connection.execute("CREATE TABLE state (key TEXT PRIMARY KEY, value BLOB)")
    rows = {f"{prefix}:odic:token": token, f"{prefix}:odic:device-registration": registration, **(extra or {})}
    connection.executemany("INSERT INTO auth_kv VALUES (?, ?)",
                           [(k, json.dumps(v)) for k, v in rows.items() if v is not None])
    if profile:
        connection.execute("INSERT INTO state VALUES (?, ?)",
                           ("api.codewhisperer.profile", json.dumps(profile).encode()))
    connection.commit()
    connection.close()
    return path


def cli_login(fake, prefix="codewhisperer", *, secret_expires="2099-01-01T00:00:00.123456789Z"):
    token = {"access_token": "aoa-expired", "expires_at": "2020-05-01T10:00:00.987654321Z",
             "refresh_token": fake.refresh_token, "region": "us-east-1", "start_url": BUILDER_ID_START_URL,
             "oauth_flow": "DeviceCode", "scopes": SCOPES}
    registration = {"client_id": fake.client_id, "client_secret": fake.client_secret,
                    "client_secret_expires_at": secret_expires, "region": "us-east-1",
                    "oauth_flow": "DeviceCode", "scopes": SCOPES}
    return {"token": token, "registration": registration}


def test_import_q_cli_database_then_status_proves_it_works(tmp_path, fake):
    arn = "arn:aws:codewhisperer:eu-central-1:123456789012:profile/ABCDEFGHIJKL"
    database = make_database(tmp_path / "q" / "data.sqlite3", "codewhisperer", **cli_login(fake),
                             profile={"arn": arn, "profile_name": "dev"})
    result = invoke(tmp_path, fake, "import-q-cli", str(database))
    assert result.exit_code == 0, result.output
    stored = json.loads((tmp_path / "store.json").read_text())
    assert (stored["clientId"], stored["refreshToken"]) == (fake.client_id, fake.refresh_token)
    assert stored["clientSecretExpiresAt"] == pytest.approx(4070908800.123456)
    assert "accessToken" not in stored  # it had expired
    assert stat.S_IMODE(os.stat(tmp_path / "store.json").st_mode) == 0o600
    assert "Amazon Q CLI" in result.output and "share one refresh token" in result.output
    assert "AMAZONQ_PROFILE_ARN" in result.output and "q.eu-central-1.amazonaws.com" in result.output

    status = invoke(tmp_path, fake, "status")
    assert status.exit_code == 0, status.output
    assert "imported from the Amazon Q CLI" in status.output and "live check: OK" in status.output
    assert "client registration: expires 2099-01-01" in status.output
    assert [e["error"] for e in fake.token_log] == [None]  # refreshed with the imported token
    assert fake.model_requests and fake.model_requests[0]["body"]["origin"] == "CLI"
    everything = result.output + status.output
    assert not [s for s in secrets_of(fake, tmp_path / "store.json") if s in everything]


def test_import_finds_the_kiro_cli_database_in_its_default_place(tmp_path, fake, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    make_database(tmp_path / "data" / "kiro-cli" / "data.sqlite3", "kirocli", **cli_login(fake))
    result = invoke(tmp_path, fake, "import-q-cli")
    assert result.exit_code == 0, result.output
    assert "Kiro CLI" in result.output
    assert json.loads((tmp_path / "store.json").read_text())["refreshToken"] == fake.refresh_token


def test_import_says_clearly_when_nothing_is_found(tmp_path, fake, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    result = invoke(tmp_path, fake, "import-q-cli")
    assert result.exit_code == 1
    assert "no Amazon Q CLI or Kiro CLI login found" in result.output
    assert str(tmp_path / "data" / "amazon-q" / "data.sqlite3") in result.output
    assert str(tmp_path / "data" / "kiro-cli" / "data.sqlite3") in result.output
    assert not (tmp_path / "store.json").exists()


@pytest.mark.parametrize("case, message", [
    ("social", "cannot refresh"),
    ("expired-registration", "has expired"),
    ("no-token", "no refresh token"),
    ("not-a-database", "not a Q CLI / Kiro CLI database"),
])
def test_import_explains_what_it_cannot_use(tmp_path, fake, case, message):
    path = tmp_path / "data.sqlite3"
    login = cli_login(fake, "kirocli")
    if case == "social":
        make_database(path, "kirocli", extra={"kirocli:social:token": {"refresh_token": "x", "provider": "github"}})
    elif case == "expired-registration":
        make_database(path, "codewhisperer", **cli_login(fake, secret_expires="2021-01-01T00:00:00Z"))
    elif case == "no-token":
        make_database(path, "kirocli", registration=login["registration"])
    else:
        sqlite3.connect(path).execute("CREATE TABLE other (x)").connection.close()
    result = invoke(tmp_path, fake, "import-q-cli", str(path))
    assert result.exit_code == 1 and message in result.output, result.output
    assert not (tmp_path / "store.json").exists()


def test_default_database_paths_per_platform(tmp_path):
    home = Path("/home/u")
    assert [str(p) for _, p in default_paths(platform="linux", environ={}, home=home)] == [
        "/home/u/.local/share/amazon-q/data.sqlite3", "/home/u/.local/share/kiro-cli/data.sqlite3"]
    assert str(default_paths(platform="darwin", environ={}, home=home)[0][1]) == \
        "/home/u/Library/Application Support/amazon-q/data.sqlite3"
    assert str(default_paths(platform="win32", environ={"LOCALAPPDATA": "/c/Local"}, home=home)[1][1]) == \
        "/c/Local/kiro-cli/data.sqlite3"


# --------------------------------------------------------------------------- nothing -> working proxy

def test_from_nothing_to_a_working_proxy_with_login(tmp_path):
    """`flask --app app login` (the user approves in the browser), `status`, then gunicorn with
    no AMAZONQ_* secret anywhere in the environment answers a Claude request."""
    import anthropic

    with FakeQ() as fake:  # real time: polls faster than `interval` would get slow_down
        env = {k: v for k, v in os.environ.items() if not k.startswith("AMAZONQ_")}
        env.update(HOME=str(tmp_path), XDG_STATE_HOME=str(tmp_path / "state"),
                   AMAZONQ_TOKEN_ENDPOINT=fake.token_url, AMAZONQ_API_ENDPOINT=fake.url)
        store = tmp_path / "state" / "amq" / "token.json"  # the default place
        process = subprocess.Popen([sys.executable, "-m", "flask", "--app", "app", "login"], cwd=ROOT, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []

        def user():
            for line in process.stdout:
                lines.append(line)
                code = re.search(r"confirm the code (\S+):", line)
                if code:
                    time.sleep(1.5)  # reading the screen, opening the browser...
                    fake.approve(code.group(1))

        reader = threading.Thread(target=user, daemon=True)
        reader.start()
        assert process.wait(60) == 0, "".join(lines)
        reader.join(5)
        output = "".join(lines)
        assert "Logged in" in output and str(store) in output
        assert "slow_down" not in [e["error"] for e in fake.token_log]  # `interval` was honoured
        assert stat.S_IMODE(os.stat(store).st_mode) == 0o600

        status = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "status"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "stored by `flask --app app login`" in status.stdout and "live check: OK" in status.stdout
        for secret in secrets_of(fake, store):
            assert secret not in output + status.stdout + status.stderr

        server = AmqServer({k: v for k, v in env.items() if k.startswith(("AMAZONQ_", "HOME", "XDG_"))},
                           tmp_path / "gunicorn.log", workers=2)
        try:
            client = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0, timeout=30)
            message = client.messages.create(model="claude-sonnet-4-5", max_tokens=50,
                                             messages=[{"role": "user", "content": "hi"}])
            assert message.content[0].text == "Hello from fake Q."
        finally:
            server.stop()
