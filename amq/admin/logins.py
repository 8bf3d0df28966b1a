"""Device logins started from the admin page, each polled in a background thread (a greenlet
under gunicorn's gevent workers) until the user approves it; the login then goes into the store.

A pending login lives in the process that started it. The page's status poll may reach another
worker, which knows nothing of it: that worker answers from the store (done once the account's
record was logged in after the login started), so the page moves on whichever worker answers.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..credentials.login import DeviceAuthorization, LoginError, OidcClient, finish_device_login, start_device_login
from ..credentials.store import CredentialStore, check_account

logger = logging.getLogger(__name__)

KEEP = 3600.0  # finished logins are forgotten after this many seconds


@dataclass
class PendingLogin:
    id: str
    account: str
    started: float  # epoch seconds
    expires_at: float
    user_code: str
    url: str
    verification_uri: str
    state: str = "waiting"  # "waiting" | "done" | "failed"
    message: str = ""
    auth: DeviceAuthorization | None = field(default=None, repr=False)

    def status(self) -> dict:
        return {"id": self.id, "account": self.account, "state": self.state, "message": self.message}


class PendingLogins:
    """Starts device logins and remembers them; `make_oidc(region)` gives the OIDC client."""

    def __init__(self, store: CredentialStore, make_oidc: Callable[[str], OidcClient],
                 wall: Callable[[], float] = time.time):
        self.store = store
        self.make_oidc = make_oidc
        self.wall = wall
        self._logins: dict[str, PendingLogin] = {}
        self._lock = threading.Lock()

    def start(self, account: str, *, start_url: str, region: str) -> PendingLogin:
        """Start the device flow for `account` (new, or a re-login) and poll in the background.

        :raises ValueError: for a malformed account name; LoginError when the flow cannot start.
        """
        check_account(account)
        oidc = self.make_oidc(region)
        started = self.wall()
        auth = start_device_login(oidc, start_url=start_url, region=region,
                                  previous=self.store.load(account), wall=self.wall)
        login = PendingLogin(id=secrets.token_urlsafe(12), account=account, started=started,
                             expires_at=started + auth.expires_in, user_code=auth.user_code,
                             url=auth.url, verification_uri=auth.verification_uri, auth=auth)
        with self._lock:
            self._forget_old()
            self._logins[login.id] = login
        threading.Thread(target=self._finish, args=(login, oidc), daemon=True,
                         name=f"admin-login-{account}").start()
        logger.info("admin page: device login for account %s started", account)
        return login

    def _finish(self, login: PendingLogin, oidc: OidcClient) -> None:
        try:
            record = finish_device_login(oidc, login.auth, echo=lambda text: None, wall=self.wall)
            self.store.replace_login(record, account=login.account)
        except LoginError as exc:
            login.state, login.message = "failed", str(exc)
            logger.warning("admin page: device login for account %s failed: %s", login.account, exc)
        except Exception as exc:  # noqa: BLE001 - the store failed: tell the page, log the kind
            login.state, login.message = "failed", f"the login worked but cannot be stored ({type(exc).__name__})"
            logger.exception("admin page: cannot store the login of account %s", login.account)
        else:
            login.state = "done"
            logger.info("admin page: account %s logged in", login.account)
        finally:
            login.auth = None  # the device code and registration are not needed any more

    def status(self, login_id: str, account: str, since: float) -> dict:
        """The login's state; from the store when another process started it."""
        login = self._logins.get(login_id)
        if login is not None:
            return login.status()
        check_account(account)
        try:
            logged_in = float(self.store.load(account).get("loggedInAt") or 0)
        except (TypeError, ValueError):
            logged_in = 0.0
        done = logged_in >= since
        return {"id": login_id, "account": account, "state": "done" if done else "waiting", "message": ""}

    def _forget_old(self) -> None:
        now = self.wall()
        for key in [key for key, login in self._logins.items() if login.expires_at + KEEP < now]:
            del self._logins[key]
