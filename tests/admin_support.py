"""Shared by the admin page's tests: stored logins at the fake, the secrets no answer may hold."""
from __future__ import annotations

import time

from amq.credentials.store import FileStore
from tests.fakeq import FakeQ

ADMIN_KEY = "admin-key-\u00e9-" + "k" * 20  # non-ASCII on purpose: compared as bytes
ADMIN_SECRET = "admin-secret-" + "s" * 40


def store_login(fake: FakeQ, store: FileStore, account: str) -> dict:
    """A login for `account` at the fake, as `login --account` would store it."""
    now = time.time()
    record = {"clientId": fake.client_id, "clientSecret": fake.client_secret, "region": "us-east-1",
              "startUrl": "https://view.awsapps.com/start", "tokenEndpoint": fake.token_url,
              "source": "login", "seed": "", "refreshToken": fake.new_login(),
              "accessToken": fake.issue_access_token(), "expiresAt": now + 3600, "obtainedAt": now,
              "loggedInAt": now}
    store.replace_login(record, account=account)
    return record


def admin_settings(**extra) -> dict:
    """Settings for a server that serves stored logins only (no environment login) and /admin."""
    return {"AMAZONQ_REFRESH_TOKEN": "", "AMAZONQ_CLIENT_ID": "", "AMAZONQ_CLIENT_SECRET": "",
            "ADMIN_KEY": ADMIN_KEY, "ADMIN_SECRET": ADMIN_SECRET, **extra}


def secrets_of(fake: FakeQ, store: FileStore) -> set[str]:
    """Every secret that must never reach a page: the admin key and secret, each stored token and
    client secret, the fake's tokens and device codes."""
    found = {ADMIN_KEY, ADMIN_SECRET, fake.client_secret, fake.refresh_token, fake.access_token}
    for account in store.accounts():
        record = store.load(account)
        found.update(str(record[key]) for key in ("refreshToken", "accessToken", "clientSecret") if record.get(key))
    with fake._lock:
        found.update(fake._access_tokens)
        found.update(fake._grants)
        found.update(fake._devices)
        found.update(secret for secret, _ in fake._clients.values())
    return {secret for secret in found if secret}
