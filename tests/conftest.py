"""Shared fixtures: a strict fake Q, and amq itself under real gunicorn with gevent workers."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.fakeq import FakeQ

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _clean_environ(monkeypatch):
    """No developer's AMAZONQ_* or proxy settings leak into a test."""
    for key in list(os.environ):
        if key.startswith(("AMAZONQ_", "PROXY_API_KEYS")):
            monkeypatch.delenv(key, raising=False)


def sse_events(response) -> list[tuple[str, dict]]:
    """(event name, data) pairs of a raw SSE body."""
    out = []
    for chunk in response.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in chunk.splitlines())
        out.append((lines["event"], json.loads(lines["data"])))
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AmqServer:
    """A gunicorn process serving wsgi:app; `url` is what ANTHROPIC_BASE_URL would be."""

    def __init__(self, env: dict, log_path: Path, workers: int = 1):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("AMAZONQ_")}
        full_env.update(env)
        self._log = open(log_path, "wb")
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

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def amq_env(fake: FakeQ, cache_path: Path, **extra) -> dict:
    env = {"AMAZONQ_REFRESH_TOKEN": fake.refresh_token, "AMAZONQ_CLIENT_ID": fake.client_id,
           "AMAZONQ_CLIENT_SECRET": fake.client_secret, "AMAZONQ_API_ENDPOINT": fake.url,
           "AMAZONQ_TOKEN_ENDPOINT": fake.token_url, "AMAZONQ_TOKEN_CACHE": str(cache_path),
           "LOG_LEVEL": "DEBUG"}
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def fake_q_session():
    with FakeQ() as fake:
        yield fake


def reset_fake(fake: FakeQ) -> FakeQ:
    """Empty the script and the request logs, so a shared fake starts each test clean."""
    with fake._lock:
        fake._script.clear()
    fake.requests.clear()
    fake.rejections.clear()
    fake.token_requests.clear()
    return fake


@pytest.fixture
def fake_q(fake_q_session):
    """The session's fake, clean for this test."""
    return reset_fake(fake_q_session)


@contextmanager
def running_amq(fake: FakeQ, tmp_path_factory, name: str, **settings):
    """amq under gunicorn in front of `fake`, with its own token store and log; stopped after."""
    directory = tmp_path_factory.mktemp(name)
    server = AmqServer(amq_env(fake, directory / "token.json", **settings), directory / "gunicorn.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def amq_server(fake_q_session, tmp_path_factory):
    with running_amq(fake_q_session, tmp_path_factory, "amq") as server:
        yield server


@pytest.fixture
def anthropic_client(amq_server):
    import anthropic

    return anthropic.Anthropic(base_url=amq_server.url, api_key="sk-test", max_retries=0, timeout=30)
