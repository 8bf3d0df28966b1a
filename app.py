"""amq: an Anthropic Messages API proxy in front of Amazon Q Developer.

`flask --app app run` finds `create_app`; gunicorn loads `wsgi:app`.
"""
from __future__ import annotations

import logging
import os
import sys
import time
import uuid

import click
from dotenv import load_dotenv
from flask import Flask, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from amq.access import check_access
from amq.cli import register_commands
from amq.config import ConfigError, load_settings
from amq.errors import InvalidRequest, MethodNotAllowed, NotFound, ProxyError, RequestTooLarge
from amq.jsonio import OrjsonProvider
from amq.models import ModelCatalogue
from amq.proxy import Proxy
from amq.tokens import TokenManager
from amq.upstream import QClient, new_session
from amq.views import bp

logger = logging.getLogger("amq")


def _configure_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(stream=sys.stderr,
                            format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s")
    logging.getLogger("amq").setLevel(level)
    # urllib3 logs URLs and headers at DEBUG; keep it quiet whatever LOG_LEVEL says.
    logging.getLogger("urllib3").setLevel(logging.WARNING)


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


def _log_safe(value) -> str:
    """Client-supplied text for a log line: printable, one line, at most 100 characters."""
    text = value if isinstance(value, str) else repr(value)
    if text.isprintable() and len(text) <= 100:
        return text
    return repr(text[:100])


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
    """Build the app; settings come from the environment, `.env`, and `test_config` on top.

    Credentials are required when serving (default: unless a flask command other than `run`
    builds the app, so `flask --app app login` works before any login exists).
    :raises SystemExit: with one line naming a missing or malformed setting (no traceback
        for `flask run` or gunicorn).
    """
    load_dotenv()
    environ = dict(os.environ)
    environ.update(test_config or {})
    try:
        settings = load_settings(environ)
        session = new_session(settings.worker_connections)
        required = _serving() if require_credentials is None else require_credentials
        tokens = TokenManager.from_settings(settings, session, required=required)
    except ConfigError as exc:
        raise SystemExit(f"amq: configuration error: {exc}") from None
    _configure_logging(settings.log_level)

    app = Flask(__name__)
    app.json = OrjsonProvider(app)  # jsonify: the same JSON values, written faster
    # Werkzeug refuses a larger declared Content-Length; views._body() limits chunked bodies.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    client = QClient(endpoint=settings.api_endpoint, binding=settings.api_binding, tokens=tokens,
                     session=session, timeout=(settings.connect_timeout, settings.read_timeout),
                     max_attempts=settings.max_attempts, retry_budget=settings.retry_budget)
    models = ModelCatalogue(settings.default_model, settings.model_map,
                            fetch=lambda: client.list_models(settings.origin, settings.profile_arn))
    app.extensions["amq"] = Proxy(settings=settings, tokens=tokens, client=client, models=models)
    app.register_blueprint(bp)
    register_commands(app)

    @app.before_request
    def _start():
        g.request_id = "req_" + uuid.uuid4().hex
        g.started = time.monotonic()
        if request.path.startswith("/v1/"):
            check_access(request.headers, request.remote_addr, settings.proxy_api_keys)

    @app.after_request
    def _finish(response):
        response.headers["request-id"] = g.request_id
        # The model name is the client's text: quoted and cut, so it cannot forge log lines.
        model = getattr(g, "model", None)
        logger.info("%s %s %s %.0fms model=%s stream=%s %s", request.method, request.path,
                    response.status_code, (time.monotonic() - g.started) * 1000,
                    _log_safe(model) if model is not None else "-", getattr(g, "streamed", False),
                    g.request_id)
        return response

    @app.errorhandler(ProxyError)
    def _proxy_error(error: ProxyError):
        if error.status >= 500:
            logger.warning("%s: %s", error.error_type, error.message)
        return _error_response(error)

    @app.errorhandler(HTTPException)
    def _werkzeug_error(exc: HTTPException):
        return _error_response(_http_error(exc))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        logger.exception("unhandled error")
        return _error_response(ProxyError("internal error in amq"))

    return app


def check_settings() -> None:
    """Fail fast, in the gunicorn master before any worker forks, naming a missing setting."""
    try:
        load_dotenv()
        TokenManager.from_settings(load_settings(), new_session(1))
    except ConfigError as exc:
        sys.exit(f"amq: configuration error: {exc}")
