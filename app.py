"""amq: an Anthropic Messages API proxy in front of Amazon Q Developer.

`flask --app app run` finds `create_app`; gunicorn loads `wsgi:app`.
"""
from __future__ import annotations

import logging
import sys
import time
import uuid
from dataclasses import replace
from functools import partial

import click
from flask import Flask, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from amq import metrics
from amq.access import check_access, presented_key
from amq.cli import register_commands
from amq.config import ConfigError, load_settings
from amq.credentials.manager import TokenManager
from amq.credentials.pool import AccountPool
from amq.credentials.pool_state import open_pool_state
from amq.credentials.store import report_store
from amq.errors import INTERNAL_ERROR, InvalidRequest, MethodNotAllowed, NotFound, ProxyError, RequestTooLarge
from amq.jsonio import OrjsonProvider
from amq.logs import configure_logging, key_fingerprint, log_access
from amq.models import ModelCatalogue
from amq.proxy import Proxy
from amq.upstream import QClient, new_session
from amq.views import bp

logger = logging.getLogger("amq")


def _http_error(exc: HTTPException) -> ProxyError:
    """Werkzeug's own errors (404, 405, 413, bad requests) in the Anthropic shape."""
    if exc.code == 404:
        return NotFound(f"no such endpoint: {request.method} {request.path}")
    if exc.code == 405:
        return MethodNotAllowed(f"method {request.method} is not allowed on {request.path}")
    if exc.code == 413:
        return RequestTooLarge(f"request body is larger than {current_app.config['MAX_CONTENT_LENGTH']} "
                               "bytes (MAX_REQUEST_BYTES)")
    error = InvalidRequest(exc.description or exc.name) if (exc.code or 500) < 500 else ProxyError(exc.name)
    error.status = exc.code or 500
    return error


def _close(record: metrics.RequestRecord) -> None:
    try:
        metrics.finish_request(record)
        log_access(record)
    except Exception:  # noqa: BLE001 - the answer is out; a metrics fault must not turn into a 500
        logger.exception("could not record request %s", record.request_id)


def _as_proxy_error(exc: Exception) -> ProxyError:
    """Ours as they are, werkzeug's translated, anything else an internal error (logged)."""
    if isinstance(exc, ProxyError):
        if exc.status >= 500:
            logger.warning("%s: %s", exc.error_type, exc.message)
        return exc
    if isinstance(exc, HTTPException):
        return _http_error(exc)
    logger.exception("unhandled error")
    return ProxyError(INTERNAL_ERROR)


def _error_response(error: ProxyError):
    response = jsonify(error.to_dict(getattr(g, "request_id", None)))
    response.status_code = error.status
    response.headers.update(error.headers)
    return response


def _serving() -> bool:
    """gunicorn (no click context) and `flask run` serve; other flask commands (login...) do not."""
    context = click.get_current_context(silent=True)
    return context is None or context.info_name == "run"


def create_app(test_config: dict | None = None, require_credentials: bool | None = None) -> Flask:
    """Build the app; settings come from the environment with `test_config` on top (the entry
    points load `.env` first: wsgi.py, gunicorn.conf.py, and `flask` itself).

    Credentials are required when serving (default: unless a flask command other than `run`
    builds the app, so `flask --app app login` works before any login exists; wsgi.py leaves
    that check to gunicorn's master, `check_settings`).
    :raises SystemExit: with one line naming a missing or malformed setting (no traceback
        for `flask run` or gunicorn).
    """
    try:
        settings = load_settings(overrides=test_config)
        session = new_session(settings.worker_connections)
        serving = _serving() if require_credentials is None else require_credentials
        # With the admin page, an operator with no terminal (a PaaS) adds the first account there.
        required = serving and not settings.admin_key
        # Only a gunicorn master that checked the store sets this, and only its workers see it.
        tokens = TokenManager.from_settings(settings, session, required=required,
                                            store_outage_ok=_store_checked,
                                            on_refresh=metrics.record_refresh)
    except ConfigError as exc:
        raise SystemExit(f"amq: configuration error: {exc}") from None
    configure_logging(settings.log_level, settings.log_format)

    app = Flask(__name__)
    app.json = OrjsonProvider(app)  # jsonify: the same JSON values, written faster
    # Werkzeug refuses a larger declared Content-Length; views._body() limits chunked bodies.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    client = QClient(endpoint=settings.api_endpoint, binding=settings.api_binding, tokens=tokens,
                     session=session, timeout=(settings.connect_timeout, settings.read_timeout),
                     max_attempts=settings.max_attempts, retry_budget=settings.retry_budget)
    pool = AccountPool(settings, tokens.store, open_pool_state(tokens.store), default_tokens=tokens,
                       make_tokens=partial(_account_tokens, settings, session, tokens.store),
                       usage_limits=lambda account: client.usage_limits(account.tokens, account.profile_arn,
                                                                         account.endpoint),
                       observe=metrics.account_event)
    models = ModelCatalogue(settings.default_model, settings.model_map, fetch=partial(_list_models, client, pool))
    app.extensions["amq"] = Proxy(settings=settings, tokens=tokens, client=client, models=models, pool=pool)
    app.register_blueprint(bp)
    if settings.admin_key:  # closed (404) without it
        from amq.admin.views import register_admin

        register_admin(app, settings, tokens.store)
    register_commands(app)

    @app.before_request
    def _start():
        g.request_id = "req_" + uuid.uuid4().hex
        g.record = metrics.RequestRecord(
            request_id=g.request_id, method=request.method, path=request.path,
            endpoint=request.url_rule.rule if request.url_rule else "unmatched",
            client=request.remote_addr or "-",
            key_fingerprint=key_fingerprint(presented_key(request.headers)),
            started=time.monotonic())
        if request.path.startswith("/v1/"):
            check_access(request.headers, request.remote_addr, settings.proxy_api_keys)

    @app.after_request
    def _finish(response):
        response.headers["request-id"] = g.request_id
        record = g.record
        record.status = response.status_code
        if not response.is_streamed:
            record.first_byte = time.monotonic() - record.started
        # Counted and logged when the server closes the answer: for a stream, at its end.
        response.call_on_close(partial(_close, record))
        return response

    @app.errorhandler(Exception)
    def _error(exc: Exception):
        """The one error handler: every failure leaves as an Anthropic-shaped JSON error."""
        return _error_response(_as_proxy_error(exc))

    return app


def _list_models(client: QClient, pool: AccountPool):
    """ListAvailableModels with an account of the pool (the environment's may not exist)."""
    account = pool.any_account()
    if account is None:
        return client.list_models(pool.settings.origin, pool.settings.profile_arn)
    return client.list_models(pool.settings.origin, account.profile_arn, tokens=account.tokens,
                              endpoint=account.endpoint)


def _account_tokens(settings, session, store, account: str) -> TokenManager:
    """The token manager of a stored account other than the environment's `default`: its
    login is the store's alone."""
    stored_only = replace(settings, refresh_token="", client_id="", client_secret="")
    return TokenManager.from_settings(stored_only, session, required=False, store=store, account=account,
                                      store_outage_ok=True, on_refresh=metrics.record_refresh)


_store_checked = False  # set in the gunicorn master; its forked workers inherit it


def check_settings() -> None:
    """Fail fast, in the gunicorn master before any worker forks, naming a missing setting.

    Once this passed, a worker (re)started during a Redis outage serves (503 for requests that
    need a refresh) instead of failing to boot, which would stop the whole server.
    """
    global _store_checked
    try:
        settings = load_settings()
        tokens = TokenManager.from_settings(settings, new_session(1), required=not settings.admin_key)
    except ConfigError as exc:
        sys.exit(f"amq: configuration error: {exc}")
    configure_logging(settings.log_level, settings.log_format)
    if tokens.missing and not tokens.store.accounts():
        logger.warning("amq has no Amazon Q login yet: add an account on the admin page (/admin)")
    _store_checked = True
    report_store(tokens.store)  # once, in the master: whether the logins survive a Redis restart
