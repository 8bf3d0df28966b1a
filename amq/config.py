"""Settings: read once from the environment, validated, handed to constructors.

Every default is in DEFAULTS, the one mapping that the app (load_settings), gunicorn.conf.py
(load_server_settings) and the README's settings table (checked by a test) follow. `.env` is
loaded by the entry points (wsgi.py, gunicorn.conf.py; `flask` does it itself), never here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(Exception):
    """A setting is missing or malformed; the message names it and says what to do."""


def default_token_cache() -> str:
    """Per-user state file, outside the project so a checkout never holds tokens."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return os.path.join(base, "amq", "token.json")


# AWS Builder ID logins always live in us-east-1 (docs/oidc.md); IAM Identity Center uses its own region.
DEFAULT_REGION = "us-east-1"


def oidc_url(region: str) -> str:
    """Base URL of the SSO-OIDC service of `region` (RegisterClient, device flow, CreateToken)."""
    return f"https://oidc.{region}.amazonaws.com"


# Defaults in one mapping; every key is also the environment variable's name.
DEFAULTS: dict[str, str] = {
    "AMAZONQ_REFRESH_TOKEN": "",
    "AMAZONQ_CLIENT_ID": "",
    "AMAZONQ_CLIENT_SECRET": "",
    "AMAZONQ_PROFILE_ARN": "",
    "AMAZONQ_API_ENDPOINT": "https://q.us-east-1.amazonaws.com/",
    # Empty: the stored login's OIDC endpoint, else https://oidc.us-east-1.amazonaws.com/token.
    "AMAZONQ_TOKEN_ENDPOINT": "",
    "AMAZONQ_TOKEN_CACHE": "",
    # The RPC binding is what the Q CLI uses; REST is UNCONFIRMED on q.* hosts
    # (docs/amazon-q-api.md, "Endpoints and bindings").
    "AMAZONQ_API_BINDING": "rpc",
    # The Q CLI sends CLI; Kiro clients send other values (docs/amazon-q-api.md, "Request body").
    "AMAZONQ_ORIGIN": "CLI",
    # Where unknown Claude model names go; which ids an account may use is UNCONFIRMED
    # (docs/amazon-q-api.md, "Models").
    "AMAZONQ_DEFAULT_MODEL": "claude-sonnet-4.5",
    # "claude-name=q-id,..." overrides, applied before the built-in table.
    "AMAZONQ_MODEL_MAP": "",
    "UPSTREAM_CONNECT_TIMEOUT": "10",
    "UPSTREAM_READ_TIMEOUT": "300",
    # Retries before the first byte reaches the client (throttling, 5xx, connection errors).
    "UPSTREAM_MAX_ATTEMPTS": "3",
    "UPSTREAM_RETRY_BUDGET": "20",
    # Seconds of upstream silence after which a `ping` event keeps the client's stream open.
    "PING_INTERVAL": "10",
    # Comma-separated keys clients must send; unset means loopback clients only.
    "PROXY_API_KEYS": "",
    "MAX_REQUEST_BYTES": str(32 * 1024 * 1024),
    "PORT": "8080",
    "LOG_LEVEL": "INFO",
    # "text" (readable lines) or "json" (one JSON object per line, for log drains).
    "LOG_FORMAT": "text",
    # Bearer key a scraper sends for /metrics from other hosts; loopback needs none.
    "METRICS_KEY": "",
    # Where gunicorn workers keep their metric files (gunicorn.conf.py sets it; empty: one process).
    "PROMETHEUS_MULTIPROC_DIR": "",
    # gunicorn worker processes; each gevent worker serves many streams.
    "WEB_CONCURRENCY": "2",
    # gunicorn's connections per gevent worker; the upstream connection pool matches it.
    "WORKER_CONNECTIONS": "1000",
    # Empty: the credential store is the file AMAZONQ_TOKEN_CACHE. redis:// or rediss:// (TLS):
    # logins and refresh locks live in that Redis, shared by every instance.
    "REDIS_URL": "",
    # "none" accepts the self-signed certificates of PaaS Redis add-ons (rediss:// only).
    "REDIS_TLS_VERIFY": "required",
    # Put before every key amq writes, so several deployments can share one Redis.
    "REDIS_KEY_PREFIX": "amq:",
    # Which account serves a request: round-robin, least-busy, priority or quota.
    "AMAZONQ_ACCOUNT_STRATEGY": "round-robin",
    # Comma-separated account names, first first (priority, and the order `accounts` lists).
    "AMAZONQ_ACCOUNT_ORDER": "",
    # Keep a conversation on the account that served its previous turn (Q's prompt cache).
    "AMAZONQ_STICKY_SESSIONS": "true",
    # Seconds an account rests after per-user throttling (Q's Retry-After wins when longer).
    "AMAZONQ_COOLDOWN_THROTTLED": "10",
    # Seconds an account rests after Q's "suspicious activity ... temporary limits".
    "AMAZONQ_COOLDOWN_RISK": "1800",
    # Seconds an account rests after AMAZONQ_ERRORS_BEFORE_COOLDOWN 5xx or connection errors in a row.
    "AMAZONQ_COOLDOWN_ERRORS": "30",
    "AMAZONQ_ERRORS_BEFORE_COOLDOWN": "3",
    # Seconds added to the monthly reset before an exhausted account is tried again.
    "AMAZONQ_RESET_MARGIN": "600",
    # Seconds between GetUsageLimits calls per account (remaining credits, reset date).
    "AMAZONQ_USAGE_POLL_INTERVAL": "300",
    # Seconds between a worker's reads of the shared account health (one store round trip).
    "AMAZONQ_POOL_SYNC_INTERVAL": "1",
    # Empty: no admin page (/admin answers 404). Set: the key that opens /admin in a browser
    # (at least ADMIN_KEY_MIN_LENGTH characters: the slowdown is no defence for a short key).
    "ADMIN_KEY": "",
    # Signs the admin page's session cookie; required when ADMIN_KEY is set (a long random string).
    "ADMIN_SECRET": "",
}
ADMIN_KEY_MIN_LENGTH = 16
STRATEGIES = ("round-robin", "least-busy", "priority", "quota")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")

REQUIRED = ("AMAZONQ_REFRESH_TOKEN", "AMAZONQ_CLIENT_ID", "AMAZONQ_CLIENT_SECRET")


@dataclass(frozen=True)
class Settings:
    """Every setting, parsed; the values come from DEFAULTS and the environment, so the fields
    have no defaults of their own (one place for each default).

    Secrets stay out of repr(), so a logged Settings never shows them.
    """

    refresh_token: str = field(repr=False)
    client_id: str
    client_secret: str = field(repr=False)
    profile_arn: str
    api_endpoint: str
    token_endpoint: str
    token_cache: str
    api_binding: str
    origin: str
    default_model: str
    model_map: dict[str, str]
    connect_timeout: float
    read_timeout: float
    max_attempts: int
    retry_budget: float
    ping_interval: float
    proxy_api_keys: tuple[str, ...] = field(repr=False)
    max_request_bytes: int
    log_level: str
    worker_connections: int
    log_format: str
    metrics_key: str = field(repr=False)
    metrics_dir: str
    redis_url: str = field(repr=False)  # may hold a password
    redis_tls_verify: str
    redis_key_prefix: str
    account_strategy: str
    account_order: tuple[str, ...]
    sticky_sessions: bool
    cooldown_throttled: float
    cooldown_risk: float
    cooldown_errors: float
    errors_before_cooldown: int
    reset_margin: float
    usage_poll_interval: float
    pool_sync_interval: float
    admin_key: str = field(repr=False)
    admin_secret: str = field(repr=False)


@dataclass(frozen=True)
class ServerSettings:
    """What gunicorn.conf.py needs: where to listen, workers and connections, logging, metric files."""

    port: int
    web_concurrency: int
    worker_connections: int
    log_level: str
    log_format: str
    metrics_dir: str


def _parse_model_map(raw: str) -> dict[str, str]:
    mapping = {}
    for item in _names(raw):
        name, sep, target = item.partition("=")
        if not sep or not name.strip() or not target.strip():
            raise ConfigError(
                f"AMAZONQ_MODEL_MAP: '{item}' is not of the form claude-name=q-model-id"
            )
        mapping[name.strip()] = target.strip()
    return mapping


def _names(raw: str) -> tuple[str, ...]:
    """A comma-separated setting (keys, account names, model map entries) as its non-empty items."""
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _number(values: dict, key: str, kind=float):
    try:
        value = kind(values[key])
    except ValueError:
        raise ConfigError(f"{key} must be a {'whole ' if kind is int else ''}number, "
                          f"got '{values[key]}'") from None
    if value <= 0:
        raise ConfigError(f"{key} must be positive, got '{values[key]}'")
    return value


def _values(environ: dict | None, overrides: dict | None) -> dict[str, str]:
    """Every setting: `overrides` over `environ` (default: os.environ) over DEFAULTS."""
    env = dict(os.environ if environ is None else environ)
    env.update(overrides or {})
    values = {key: str(env.get(key) or default).strip() for key, default in DEFAULTS.items()}
    if values["LOG_LEVEL"].upper() not in LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got '{values['LOG_LEVEL']}'")
    if values["LOG_FORMAT"].lower() not in LOG_FORMATS:
        raise ConfigError(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, got '{values['LOG_FORMAT']}'")
    return values


def load_server_settings(environ: dict | None = None) -> ServerSettings:
    """gunicorn's settings from `environ` (default: os.environ) laid over DEFAULTS.

    :raises ConfigError: naming the first malformed setting.
    """
    values = _values(environ, None)
    return ServerSettings(port=_number(values, "PORT", int),
                          web_concurrency=_number(values, "WEB_CONCURRENCY", int),
                          worker_connections=_number(values, "WORKER_CONNECTIONS", int),
                          log_level=values["LOG_LEVEL"].upper(),
                          log_format=values["LOG_FORMAT"].lower(),
                          metrics_dir=values["PROMETHEUS_MULTIPROC_DIR"])


def load_settings(environ: dict | None = None, overrides: dict | None = None) -> Settings:
    """Build Settings from `overrides` over `environ` (default: os.environ) over DEFAULTS.

    The credentials (REQUIRED) are checked by the token manager, which also knows what the
    token cache holds.
    :raises ConfigError: naming the first malformed setting.
    """
    values = _values(environ, overrides)
    if values["AMAZONQ_API_BINDING"] not in ("rpc", "rest"):
        raise ConfigError("AMAZONQ_API_BINDING must be 'rpc' or 'rest'")
    if values["REDIS_URL"] and not values["REDIS_URL"].startswith(("redis://", "rediss://")):
        raise ConfigError("REDIS_URL must start with redis:// or rediss:// (TLS)")
    if values["REDIS_TLS_VERIFY"] not in ("required", "none"):
        raise ConfigError(f"REDIS_TLS_VERIFY must be 'required' or 'none', got '{values['REDIS_TLS_VERIFY']}'")
    if values["AMAZONQ_ACCOUNT_STRATEGY"] not in STRATEGIES:
        raise ConfigError(f"AMAZONQ_ACCOUNT_STRATEGY must be one of {', '.join(STRATEGIES)}, "
                          f"got '{values['AMAZONQ_ACCOUNT_STRATEGY']}'")
    if values["AMAZONQ_STICKY_SESSIONS"].lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError("AMAZONQ_STICKY_SESSIONS must be true or false")
    for key in ("AMAZONQ_API_ENDPOINT", "AMAZONQ_TOKEN_ENDPOINT"):
        if values[key] and not values[key].startswith(("http://", "https://")):
            raise ConfigError(f"{key} must be an http(s) URL, got '{values[key]}'")
    if values["ADMIN_KEY"] and len(values["ADMIN_KEY"]) < ADMIN_KEY_MIN_LENGTH:
        raise ConfigError(f"ADMIN_KEY must be at least {ADMIN_KEY_MIN_LENGTH} characters long (it is "
                          f"{len(values['ADMIN_KEY'])}); use a long random string")
    if values["ADMIN_KEY"] and not values["ADMIN_SECRET"]:
        raise ConfigError("ADMIN_SECRET must be set when ADMIN_KEY is set (it signs the admin page's "
                          "session cookie; use a long random string)")
    return Settings(
        refresh_token=values["AMAZONQ_REFRESH_TOKEN"],
        client_id=values["AMAZONQ_CLIENT_ID"],
        client_secret=values["AMAZONQ_CLIENT_SECRET"],
        profile_arn=values["AMAZONQ_PROFILE_ARN"],
        api_endpoint=values["AMAZONQ_API_ENDPOINT"],
        token_endpoint=values["AMAZONQ_TOKEN_ENDPOINT"],
        token_cache=values["AMAZONQ_TOKEN_CACHE"] or default_token_cache(),
        api_binding=values["AMAZONQ_API_BINDING"],
        origin=values["AMAZONQ_ORIGIN"],
        default_model=values["AMAZONQ_DEFAULT_MODEL"],
        model_map=_parse_model_map(values["AMAZONQ_MODEL_MAP"]),
        connect_timeout=_number(values, "UPSTREAM_CONNECT_TIMEOUT"),
        read_timeout=_number(values, "UPSTREAM_READ_TIMEOUT"),
        max_attempts=_number(values, "UPSTREAM_MAX_ATTEMPTS", int),
        retry_budget=_number(values, "UPSTREAM_RETRY_BUDGET"),
        ping_interval=_number(values, "PING_INTERVAL"),
        proxy_api_keys=_names(values["PROXY_API_KEYS"]),
        max_request_bytes=_number(values, "MAX_REQUEST_BYTES", int),
        log_level=values["LOG_LEVEL"].upper(),
        worker_connections=_number(values, "WORKER_CONNECTIONS", int),
        log_format=values["LOG_FORMAT"].lower(),
        metrics_key=values["METRICS_KEY"],
        metrics_dir=values["PROMETHEUS_MULTIPROC_DIR"],
        redis_url=values["REDIS_URL"],
        redis_tls_verify=values["REDIS_TLS_VERIFY"],
        redis_key_prefix=values["REDIS_KEY_PREFIX"],
        account_strategy=values["AMAZONQ_ACCOUNT_STRATEGY"],
        account_order=_names(values["AMAZONQ_ACCOUNT_ORDER"]),
        sticky_sessions=values["AMAZONQ_STICKY_SESSIONS"].lower() in ("true", "1", "yes"),
        cooldown_throttled=_number(values, "AMAZONQ_COOLDOWN_THROTTLED"),
        cooldown_risk=_number(values, "AMAZONQ_COOLDOWN_RISK"),
        cooldown_errors=_number(values, "AMAZONQ_COOLDOWN_ERRORS"),
        errors_before_cooldown=_number(values, "AMAZONQ_ERRORS_BEFORE_COOLDOWN", int),
        reset_margin=_number(values, "AMAZONQ_RESET_MARGIN"),
        usage_poll_interval=_number(values, "AMAZONQ_USAGE_POLL_INTERVAL"),
        pool_sync_interval=_number(values, "AMAZONQ_POOL_SYNC_INTERVAL"),
        admin_key=values["ADMIN_KEY"],
        admin_secret=values["ADMIN_SECRET"],
    )
