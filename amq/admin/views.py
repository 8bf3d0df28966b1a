"""The /admin blueprint: log in, the accounts page and its JSON, the account actions.

Every POST carries the session's CSRF token (a form field, or the X-CSRF-Token header for the
page's own fetch calls); without it the answer is a plain 403 page. Pages other than the login
form need the session; the JSON answers 401 without it. No answer holds a token or the key:
the accounts come from the pool's summaries, which have none, and only their named fields go out.
"""
from __future__ import annotations

import dataclasses
import math
import time
from datetime import UTC, datetime, timedelta

import requests
from flask import Blueprint, Flask, current_app, flash, jsonify, redirect, render_template, request, session, url_for

from ..config import DEFAULT_REGION, Settings, oidc_url
from ..credentials.login import BUILDER_ID_START_URL, LoginError, OidcClient
from ..credentials.pool import AccountPool, AccountSummary
from .auth import (
    AdminSessionInterface,
    LoginThrottle,
    RedisLoginThrottle,
    csrf_ok,
    csrf_token,
    key_mark,
    key_matches,
    signed_in,
)
from .logins import PendingLogins

bp = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates",
               static_folder="static")

REFRESH_SECONDS = 5
SESSION_HOURS = 12
FIELDS = tuple(f.name for f in dataclasses.fields(AccountSummary))  # what the page may show
OPEN_ENDPOINTS = ("admin.login", "admin.static")


@dataclasses.dataclass
class Admin:
    """The admin page's long-lived parts (app.extensions["amq_admin"])."""

    settings: Settings
    logins: PendingLogins
    throttle: LoginThrottle | RedisLoginThrottle


def register_admin(app: Flask, settings: Settings, store) -> None:
    """Mount /admin (only called when ADMIN_KEY is set; load_settings then requires ADMIN_SECRET)."""
    app.secret_key = settings.admin_secret
    app.session_interface = AdminSessionInterface()
    app.config.update(SESSION_COOKIE_NAME="amq_admin", SESSION_COOKIE_PATH="/admin",
                      SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict",
                      PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS))

    def make_oidc(region: str) -> OidcClient:
        # As `login`: AMAZONQ_TOKEN_ENDPOINT's service for the default region, else the region's.
        endpoint = settings.token_endpoint.rstrip("/")
        base = endpoint.removesuffix("/token") if endpoint and region == DEFAULT_REGION else oidc_url(region)
        return OidcClient(base, requests.Session(), timeout=(settings.connect_timeout, 30.0))

    # With Redis, wrong keys count on every instance alike; the file store has no shared counter.
    throttle = (RedisLoginThrottle(store.client, store.prefix + "admin:") if store.kind == "redis"
                else LoginThrottle())
    app.extensions["amq_admin"] = Admin(settings=settings,
                                        logins=PendingLogins(store, make_oidc), throttle=throttle)
    app.jinja_env.filters["when"] = _when
    app.register_blueprint(bp)


def _admin() -> Admin:
    return current_app.extensions["amq_admin"]


def _pool() -> AccountPool:
    """The app's account pool: the same accounts, health and counts on every instance."""
    return current_app.extensions["amq"].pool


def _when(epoch: float | None) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC") if epoch else "—"


def _refused(message: str, status: int):
    return render_template("admin/refused.html", message=message), status


def _signed_in() -> bool:
    settings = _admin().settings
    return signed_in(settings.admin_key, settings.admin_secret)


@bp.before_request
def _guard():
    if request.method == "POST" and not csrf_ok(request):
        return _refused("The form's CSRF token is missing or wrong. Reload the page and try again.", 403)
    if request.endpoint in OPEN_ENDPOINTS or _signed_in():
        return None
    if request.path.startswith("/admin/api/"):
        return jsonify({"error": "log in first"}), 401
    return redirect(url_for("admin.login"))


@bp.after_request
def _headers(response):
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' data:; "
                                                   "frame-ancestors 'none'; form-action 'self'")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@bp.app_context_processor
def _template_globals():
    return {"csrf_token": csrf_token}


@bp.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "GET":
        return redirect(url_for("admin.accounts")) if _signed_in() else render_template("admin/login.html")
    admin, client = _admin(), request.remote_addr or "-"
    # The try is counted before the key is compared (one atomic step): parallel wrong keys
    # cannot all pass while the wait is 0.
    allowed, delay = admin.throttle.attempt(client)
    if not allowed:
        return render_template("admin/login.html",
                               error=f"Too many wrong keys: try again in {math.ceil(delay)} s."), 429
    if not key_matches(request.form.get("key", ""), admin.settings.admin_key):
        current_app.logger.warning("admin page: wrong key from %s", client)
        return render_template("admin/login.html",
                               error=f"Wrong key. The next try is possible in {math.ceil(delay)} s."), 401
    admin.throttle.succeeded(client)
    session.clear()
    session.permanent = True
    session.update(admin=True, since=time.time(),
                   key=key_mark(admin.settings.admin_key, admin.settings.admin_secret))
    csrf_token()  # a fresh token for the new session
    return redirect(url_for("admin.accounts"))


@bp.post("/logout")
def logout():
    session.clear()
    return redirect(url_for("admin.login"))


def _rows() -> list[dict]:
    return [{name: getattr(summary, name) for name in FIELDS} for summary in _pool().summaries()]


@bp.get("/")
def accounts():
    return render_template("admin/accounts.html", rows=_rows(), refresh=REFRESH_SECONDS,
                           builder_id=BUILDER_ID_START_URL, default_region=DEFAULT_REGION)


@bp.get("/api/accounts")
def accounts_json():
    pool = _pool()
    return jsonify({"now": time.time(), "accounts": _rows(),
                    "activity": [list(minute) for minute in pool.activity(60)]})


def _action(name: str, act, done: str):
    try:
        act(name)
    except KeyError:
        flash(f"There is no account {name!r}.", "error")
    else:
        flash(done, "ok")
    return redirect(url_for("admin.accounts"))


@bp.post("/accounts/<name>/disable")
def disable(name: str):
    return _action(name, _pool().disable, f"Account {name} is disabled: requests skip it.")


@bp.post("/accounts/<name>/enable")
def enable(name: str):
    return _action(name, _pool().enable, f"Account {name} is enabled again.")


@bp.route("/accounts/<name>/remove", methods=["GET", "POST"])
def remove(name: str):
    if request.method == "GET":
        return render_template("admin/remove.html", name=name)
    return _action(name, _pool().remove, f"Account {name} is removed, its login deleted.")


@bp.post("/logins")
def start_login():
    """Start a device login (a new account or a re-login) and show its URL and code."""
    name = request.form.get("account", "").strip()
    start_url = request.form.get("start_url", "").strip() or BUILDER_ID_START_URL
    region = request.form.get("region", "").strip() or DEFAULT_REGION
    try:
        pending = _admin().logins.start(name, start_url=start_url, region=region)
    except (ValueError, LoginError) as exc:
        flash(f"Cannot start the login: {exc}", "error")
        return redirect(url_for("admin.accounts"))
    return render_template("admin/pending.html", login=pending)


@bp.get("/api/logins/<login_id>")
def login_status(login_id: str):
    try:
        since = float(request.args.get("since", ""))
        return jsonify(_admin().logins.status(login_id, request.args.get("account", ""), since))
    except ValueError:
        return jsonify({"error": "account and since are needed"}), 400
