"""Test support: a clean environment, amq under real gunicorn in front of the fake, the SDK client.

conftest.py serves these as fixtures (`app`, `client`, `fake_q`, `amq_server`,
`anthropic_client`); tests that need their own instance use them directly.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import requests

from amq.config import DEFAULTS
from tests.fakeq import FakeQ

ROOT = Path(__file__).resolve().parent.parent
# The developer's own home, for tools that need their configuration (npm's registry).
USER_HOME = Path.home()
# Variables that would change what amq does: its settings, and those of the services it may use.
AMQ_PREFIXES = ("AMAZONQ_", "PROXY_", "UPSTREAM_", "LOG_", "REDIS_", "PROMETHEUS_", "WEB_", "WORKER_")
# Where a developer's login, store and Q CLI database live; tests get empty ones.
STATE_DIRS = ("XDG_STATE_HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")


def is_amq_setting(name: str) -> bool:
    return name in DEFAULTS or name.startswith(AMQ_PREFIXES)


def clean_environ(environ: Mapping[str, str], home: Path) -> dict[str, str]:
    """`environ` without amq's settings, and with HOME and the XDG directories under `home`,
    so neither a developer's `.env` values nor their credential store reach a test."""
    env = {key: value for key, value in environ.items() if not is_amq_setting(key)}
    env["HOME"] = str(home)
    # The entry points (wsgi.py, gunicorn.conf.py, `flask`) load the checkout's `.env`:
    # python-dotenv skips it when this is set, so a developer's `.env` reaches no server a test starts.
    env["PYTHON_DOTENV_DISABLED"] = "1"
    for name in STATE_DIRS:
        env[name] = str(home / ("." + name.removeprefix("XDG_").removesuffix("_HOME").lower()))
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sse_events(response) -> list[tuple[str, dict]]:
    """(event name, data) pairs of a raw SSE body."""
    out = []
    for chunk in response.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in chunk.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def seed_login(store, fake: FakeQ, **extra) -> None:
    """The fake's login in a credential store, as `flask --app app login` leaves it."""
    store.replace_login({"clientId": fake.client_id, "clientSecret": fake.client_secret,
                         "refreshToken": fake.refresh_token, "source": "login", "seed": "", **extra})


def refreshes(fake: FakeQ) -> list[dict]:
    """The refresh-token grants the fake has answered, in order."""
    return [e for e in fake.token_log if e["grantType"] == "refresh_token"]


def amq_env(fake: FakeQ, cache_path: Path, **extra) -> dict:
    """The settings that point amq at `fake`, with its own credential store."""
    env = {"AMAZONQ_REFRESH_TOKEN": fake.refresh_token, "AMAZONQ_CLIENT_ID": fake.client_id,
           "AMAZONQ_CLIENT_SECRET": fake.client_secret, "AMAZONQ_API_ENDPOINT": fake.url,
           "AMAZONQ_TOKEN_ENDPOINT": fake.token_url, "AMAZONQ_TOKEN_CACHE": str(cache_path),
           "LOG_LEVEL": "DEBUG"}
    env.update(extra)
    return env


class AmqServer:
    """A gunicorn process serving wsgi:app; `url` is what ANTHROPIC_BASE_URL would be."""

    def __init__(self, env: dict, log_path: Path, workers: int = 1):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("AMAZONQ_")}
        full_env.update(env)
        self._log = open(log_path, "wb")  # noqa: SIM115 - open for the server's whole life
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-k", "gevent", "-c", "gunicorn.conf.py",
             "--workers", str(workers), "--bind", f"127.0.0.1:{self.port}", "wsgi:app"],
            cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited early:\n{self.log()}")
            try:
                requests.get(self.url + "/health", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gunicorn did not start:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_once(self, *texts: str, timeout: float = 5.0) -> str:
        """The log, once it holds every one of `texts`: access lines are written when the
        server closes an answer, which can be just after the client has read it."""
        deadline = time.monotonic() + timeout
        while not all(text in (log := self.log()) for text in texts):
            assert time.monotonic() < deadline, f"not in the log within {timeout} s: {texts}"
            time.sleep(0.05)
        return log

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@contextmanager
def running_amq(fake: FakeQ, directory: Path, **settings) -> Iterator[AmqServer]:
    """amq under gunicorn in front of `fake`, with its store and log in `directory`; stopped after."""
    server = AmqServer(amq_env(fake, directory / "token.json", **settings), directory / "gunicorn.log")
    try:
        yield server
    finally:
        server.stop()


def app_config(fake: FakeQ, directory: Path, **settings) -> dict:
    """create_app's test mapping for an in-process app in front of `fake`."""
    return amq_env(fake, directory / "token.json", **settings)


def sdk_client(url: str, **options):
    """The official SDK pointed at amq, failing fast (no retries of its own)."""
    import anthropic

    return anthropic.Anthropic(base_url=url, **{"api_key": "sk-test", "max_retries": 0, "timeout": 30,
                                                **options})


def add_logins(fake: FakeQ, store, **accounts: dict) -> dict[str, str]:
    """Store a login for each account the fake knows; returns name -> refresh token."""
    tokens = {}
    for name, behaviour in accounts.items():
        tokens[name] = fake.add_account(name, **behaviour)
        store.replace_login({"clientId": fake.client_id, "clientSecret": fake.client_secret,
                             "refreshToken": tokens[name], "tokenEndpoint": fake.token_url,
                             "source": "login"}, name)
    return tokens
