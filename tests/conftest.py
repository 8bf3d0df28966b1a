"""Fixtures, flaskr-style: `app` and `client` in process, `fake_q` (a strict fake Q, clean for each
test), `fake` (a fake Q of the test's own), `redis_server` (one per test module), `amq_server`
(amq under real gunicorn with gevent workers) and `anthropic_client`.

The helpers themselves live in tests/support.py (re-exported here for older imports).
"""
from __future__ import annotations

import os

import pytest

from app import create_app
from tests.fakeq import FakeQ
from tests.redis_server import shared_server
from tests.support import ROOT, AmqServer, amq_env, app_config, clean_environ, running_amq, sdk_client

__all__ = ["ROOT", "AmqServer", "amq_env"]


@pytest.fixture(scope="session", autouse=True)
def _clean_environ(tmp_path_factory):
    """No developer's settings (AMAZONQ_*, PROXY_*, REDIS_URL, LOG_*, ...) or stored login leak
    into a test, nor into the servers tests start: HOME and XDG_* point at an empty folder."""
    clean = clean_environ(os.environ, tmp_path_factory.mktemp("home"))
    with pytest.MonkeyPatch.context() as patch:
        for key in set(os.environ) - set(clean):
            patch.delenv(key)
        for key, value in clean.items():
            patch.setenv(key, value)
        yield


@pytest.fixture(scope="session")
def fake_q_session():
    with FakeQ() as fake:
        yield fake


@pytest.fixture
def fake():
    """A fake Q of this test's own, for tests that change its logins, tokens or state."""
    with FakeQ() as server:
        yield server


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """A real redis-server per test module; tests keep apart by their own key prefixes."""
    yield from shared_server(tmp_path_factory)


@pytest.fixture
def fake_q(fake_q_session):
    """The session's fake, clean for this test."""
    return fake_q_session.reset()


@pytest.fixture(scope="session")
def amq_server(fake_q_session, tmp_path_factory):
    """amq under gunicorn in front of the session's fake."""
    with running_amq(fake_q_session, tmp_path_factory.mktemp("amq")) as server:
        yield server


@pytest.fixture
def anthropic_client(amq_server):
    return sdk_client(amq_server.url)


@pytest.fixture
def app(fake_q, tmp_path):
    """amq in process, in front of the fake."""
    return create_app(app_config(fake_q, tmp_path, LOG_LEVEL="WARNING"))


@pytest.fixture
def client(app):
    return app.test_client()
