"""Commands on the app's CLI: `flask --app app login | import-q-cli | status`.

They run without any credentials configured (create_app requires them only when serving) and
never print a secret: no token, no client secret.
"""
from __future__ import annotations

import time

import click
import requests
from click.core import ParameterSource
from flask import current_app
from flask.cli import with_appcontext

from .config import DEFAULT_REGION, ConfigError, Settings, oidc_url
from .credentials.importer import ImportFailed, find_login
from .credentials.login import BUILDER_ID_START_URL, LoginError, OidcClient, device_login
from .credentials.record import DEFAULT_ACCOUNT, iso_time, stored_token, without_version
from .credentials.store import CredentialStore, LockTimeout, StaleWrite, check_account, open_file_store, open_store
from .errors import ProxyError


def register_commands(app) -> None:
    for command in (login_command, import_command, status_command, copy_command, accounts_command):
        app.cli.add_command(command)


def _proxy():
    return current_app.extensions["amq"]


def _where(store: CredentialStore, account: str = DEFAULT_ACCOUNT) -> str:
    """Where a login lives, for messages (a path or a URL without password)."""
    if store.kind == "redis":
        return f"Redis at {store.location} (account {account})"
    return f"{store.path_of(account)} (mode 0600)"  # type: ignore[attr-defined]


def _oidc_base(settings: Settings, override: str | None, region: str, region_given: bool) -> str:
    """--oidc-url, else the service of an explicit --region, else AMAZONQ_TOKEN_ENDPOINT without
    its /token, else the (default) region's service."""
    if override:
        return override.rstrip("/")
    endpoint = settings.token_endpoint.rstrip("/")
    if endpoint and not region_given:
        return endpoint[:-len("/token")] if endpoint.endswith("/token") else endpoint
    return oidc_url(region)


def _warn_environment(settings: Settings) -> None:
    if settings.refresh_token:
        click.echo("Warning: AMAZONQ_REFRESH_TOKEN is set (environment or .env) and wins over the "
                   "stored login at the next start; remove AMAZONQ_REFRESH_TOKEN, AMAZONQ_CLIENT_ID "
                   "and AMAZONQ_CLIENT_SECRET to use it.", err=True)


def _when(epoch: float, now: float) -> str:
    seconds = epoch - now
    span = abs(seconds)
    text = (f"{span / 86400:.0f} days" if span >= 2 * 86400 else f"{span / 3600:.1f} h" if span >= 3600
            else f"{span / 60:.0f} min" if span >= 60 else f"{span:.0f} s")
    return f"{iso_time(epoch)} (in {text})" if seconds >= 0 else f"{iso_time(epoch)} ({text} ago)"


@click.command("login")
@click.option("--start-url", default=BUILDER_ID_START_URL, show_default=True,
              help="Start URL of your IAM Identity Center portal; the default is AWS Builder ID.")
@click.option("--region", default=DEFAULT_REGION, show_default=True,
              help="Region of the login (IAM Identity Center: your directory's region).")
@click.option("--oidc-url", "oidc_override", metavar="URL",
              help="SSO-OIDC base URL. Default: https://oidc.REGION.amazonaws.com, or "
                   "AMAZONQ_TOKEN_ENDPOINT without /token if that is set and --region is not.")
@click.option("--account", default=DEFAULT_ACCOUNT, show_default=True,
              help="Name of the account in amq's pool (letters, digits, '.', '_', '-').")
@click.option("--profile-arn", default="", help="This account's Amazon Q Developer profile ARN "
              "(IAM Identity Center); default AMAZONQ_PROFILE_ARN.")
@with_appcontext
def login_command(start_url: str, region: str, oidc_override: str | None, account: str, profile_arn: str):
    """Log in to Amazon Q (device code flow) and store the login for amq."""
    settings = _proxy().settings
    cache = _proxy().tokens.store
    _check_name(account)
    region_given = click.get_current_context().get_parameter_source("region") != ParameterSource.DEFAULT
    oidc = OidcClient(_oidc_base(settings, oidc_override, region, region_given), requests.Session(),
                      timeout=(settings.connect_timeout, 30.0))
    try:
        record = device_login(oidc, start_url=start_url, region=region, previous=cache.load(account),
                              echo=click.echo)
    except LoginError as exc:
        raise click.ClickException(str(exc)) from None
    if profile_arn:
        record["profileArn"] = profile_arn
    try:
        cache.replace_login(record, account)
    except ProxyError as exc:
        raise click.ClickException(f"the login worked but cannot be stored: {exc.message}") from None
    click.echo(f"Logged in. The login is stored in {_where(cache, account)}"
               + (f"; account {account} joins the pool within seconds." if account != DEFAULT_ACCOUNT else "."))
    if account == DEFAULT_ACCOUNT:
        _warn_environment(settings)
    if start_url != BUILDER_ID_START_URL and not (settings.profile_arn or profile_arn):
        click.echo("IAM Identity Center: set AMAZONQ_PROFILE_ARN to your Amazon Q Developer profile "
                   "ARN (and AMAZONQ_API_ENDPOINT for profiles outside us-east-1).")
    click.echo("Start amq with `gunicorn wsgi:app`; `flask --app app status` checks the login.")


@click.command("import-q-cli")
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@click.option("--kiro", is_flag=True, help="Take the Kiro CLI's login (default database, or its keys in PATH).")
@click.option("--account", default=DEFAULT_ACCOUNT, show_default=True, help="Name of the account in amq's pool.")
@with_appcontext
def import_command(path: str | None, kiro: bool, account: str):
    """Import the Amazon Q CLI's (or Kiro CLI's) login from its SQLite database.

    PATH defaults to data.sqlite3 in the CLI's data directory (Linux: ~/.local/share/amazon-q/,
    macOS: ~/Library/Application Support/amazon-q/, Windows: %LOCALAPPDATA%\\amazon-q\\; the Kiro
    CLI's is kiro-cli/ beside it).
    """
    settings = _proxy().settings
    _check_name(account)
    try:
        found = find_login(path, prefer="Kiro CLI" if kiro else None)
    except ImportFailed as exc:
        raise click.ClickException(str(exc)) from None
    cache = _proxy().tokens.store
    if account != DEFAULT_ACCOUNT and found.profile_arn:
        found.record["profileArn"] = found.profile_arn  # a named account keeps its own profile
    try:
        cache.replace_login(found.record, account)
    except ProxyError as exc:
        raise click.ClickException(f"cannot store the login: {exc.message}") from None
    record = found.record
    expiry = record.get("clientSecretExpiresAt")
    click.echo(f"Imported the {found.source} login from {found.path} into {_where(cache, account)} "
               f"(region {record['region']}"
               + (f", registration valid until {iso_time(expiry)}" if expiry else "") + ").")
    if account != DEFAULT_ACCOUNT:
        click.echo(f"Account {account} joins the pool within seconds.")
    for note in found.notes:
        click.echo(f"Note: {note}.")
    click.echo(f"Note: amq and the {found.source} now share one refresh token. If the service "
               "rotates it, whichever refreshes first signs the other out; `flask --app app login` "
               "gives amq a login of its own.")
    if found.profile_arn and found.profile_arn != settings.profile_arn and account == DEFAULT_ACCOUNT:
        region = found.profile_arn.split(":")[3] if found.profile_arn.count(":") >= 5 else ""
        click.echo(f"The {found.source} uses the profile {found.profile_arn}: set AMAZONQ_PROFILE_ARN "
                   "to it" + (f" and AMAZONQ_API_ENDPOINT=https://q.{region}.amazonaws.com/"
                              if region and region != DEFAULT_REGION else "") + ".")
    if account == DEFAULT_ACCOUNT:
        _warn_environment(settings)


def _check_name(account: str) -> None:
    try:
        check_account(account)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--account") from None


@click.group("accounts", invoke_without_command=True)
@click.pass_context
@with_appcontext
def accounts_command(context):
    """List the Amazon Q accounts of the pool; `disable`, `enable` or `remove` one."""
    if context.invoked_subcommand is not None:
        return
    pool = _proxy().pool
    try:
        summaries = pool.summaries()
    except ProxyError as exc:
        raise click.ClickException(exc.message) from None
    if not summaries:
        click.echo("no accounts: `flask --app app login --account NAME` adds one")
        return
    now = time.time()
    click.echo(f"strategy: {pool.settings.account_strategy}"
               + (", conversations stay on their account" if pool.settings.sticky_sessions else ""))
    for item in summaries:
        state = item.state + (f" until {_when(item.until, now)}" if item.until else "")
        click.echo(f"{item.name}  ({item.source})  {state}" + (f"  why: {item.reason}" if item.reason else ""))
        click.echo(f"    today: {item.requests_today} requests, {item.errors_today} errors;  this month: "
                   f"{item.input_tokens_month} input / {item.output_tokens_month} output tokens, "
                   f"{item.credits_month:.2f} credits")
        click.echo("    access token: " + (f"expires {_when(item.token_expires_at, now)}"
                                            if item.token_expires_at else "none yet"))
        if item.last_error:
            click.echo(f"    last error: {item.last_error}")


def _pool_action(name: str, action: str, done: str) -> None:
    pool = _proxy().pool
    try:
        getattr(pool, action)(name)
    except KeyError:
        raise click.ClickException(f"no account named {name!r}; `flask --app app accounts` lists them") from None
    except ProxyError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"account {name}: {done}")


@accounts_command.command("disable")
@click.argument("name")
@with_appcontext
def disable_command(name: str):
    """Take an account out of the pool until `enable`."""
    _pool_action(name, "disable", "disabled; no instance chooses it until `accounts enable`")


@accounts_command.command("enable")
@click.argument("name")
@with_appcontext
def enable_command(name: str):
    """Put an account back (also after a suspension, once it is lifted)."""
    _pool_action(name, "enable", "enabled")


@accounts_command.command("remove")
@click.argument("name")
@with_appcontext
def remove_command(name: str):
    """Delete an account's login from the store and the pool."""
    _pool_action(name, "remove", "removed (its login is deleted from the store)")


@click.command("status")
@click.option("--offline", is_flag=True, help="Only show what is stored; do not contact Amazon Q.")
@with_appcontext
def status_command(offline: bool):
    """Show where the credentials come from and check them against Amazon Q."""
    proxy = _proxy()
    settings, tokens = proxy.settings, proxy.tokens
    now = time.time()
    try:
        stored = tokens.store.load(tokens.account)
        facts = tokens.store.describe()
    except ProxyError as exc:
        click.echo(f"store: {tokens.store.kind} {tokens.store.location}: {exc.message}")
        raise click.exceptions.Exit(1) from None
    click.echo(f"store: {facts['backend']} {facts['location']}"
               + (f" (key prefix {facts['key prefix']})" if facts.get("key prefix") else ""))
    click.echo(f"  lock: {facts['lock']}")
    click.echo(f"  persistence: {facts['persistence']}")
    if facts.get("durable") is False:
        click.echo("  warning: this Redis reports no persistence; a restart of Redis loses the login "
                   "(turn on AOF or RDB, or choose a plan that keeps data)")
    if tokens.missing:
        click.echo(f"credentials: none ({tokens.missing} is not set and {_where(tokens.store)} holds "
                   "no login). Run `flask --app app login` or `flask --app app import-q-cli`.")
        raise click.exceptions.Exit(1)
    owns = tokens.owns(stored)
    source = tokens.source or "environment"
    if source == "login":
        text = "stored by `flask --app app login`"
        if stored.get("loggedInAt"):
            text += f" on {iso_time(float(stored['loggedInAt']))}"
    elif source == "environment":
        text = "the environment (AMAZONQ_REFRESH_TOKEN, AMAZONQ_CLIENT_ID, AMAZONQ_CLIENT_SECRET)"
        if owns:
            text += "; its newest refresh token is in the store"
    else:
        text = f"imported from the {source}"
    click.echo(f"credentials: {text}")
    if not owns:
        click.echo("  (the store holds no login of these credentials yet)")
    if owns and stored.get("obtainedAt"):
        click.echo(f"last refresh: {_when(float(stored['obtainedAt']), now)}")
    if owns and (stored.get("region") or stored.get("startUrl")):
        click.echo(f"login: region {stored.get('region', '?')}, start URL {stored.get('startUrl', '?')}")
    click.echo(f"token endpoint: {tokens.token_endpoint}")
    if owns and stored.get("clientSecretExpiresAt"):
        expires = float(stored["clientSecretExpiresAt"])
        click.echo(f"client registration: expires {_when(expires, now)}"
                   + ("; log in again soon" if expires - now < 7 * 86400 else ""))
    token = tokens.token or (stored_token(stored) if owns else None)
    if token is None:
        click.echo("access token: none yet (the first request refreshes)")
    else:
        click.echo(f"access token: {'expires' if token.expires_at > now else 'expired'} {_when(token.expires_at, now)}")
    if owns and stored.get("refreshStartedAt"):
        click.echo(f"warning: a refresh started at {iso_time(float(stored['refreshStartedAt']))} did not "
                   "finish; if the next one is refused, log in again")
    click.echo(f"profile ARN: {settings.profile_arn or 'none (AWS Builder ID)'}")
    if offline:
        return
    before = tokens.token
    try:
        access = tokens.get_token()
        if before is None or before.token != access:
            click.echo(f"access token: refreshed, expires {_when(tokens.token.expires_at, time.time())}")
        models, default = proxy.client.list_models(settings.origin, settings.profile_arn)
    except ProxyError as exc:
        click.echo(f"live check: FAILED: {exc.message}")
        raise click.exceptions.Exit(1) from None
    click.echo(f"live check: OK (ListAvailableModels at {settings.api_endpoint}: {len(models)} models"
               + (f", default {default}" if default else "") + ")")



@click.command("copy-login")
@click.option("--to", "target", type=click.Choice(["redis", "file"]), required=True,
              help="Copy from the file store into Redis (redis), or from Redis into the file (file).")
@click.option("--account", default=DEFAULT_ACCOUNT, show_default=True, help="Which login to copy.")
@click.option("--force", is_flag=True, help="Replace a different login the destination holds.")
@with_appcontext
def copy_command(target: str, account: str, force: bool):
    """Copy a login between the file store (AMAZONQ_TOKEN_CACHE) and Redis (REDIS_URL)."""
    settings = _proxy().settings
    if not settings.redis_url:
        raise click.ClickException("REDIS_URL is not set: there is no Redis store to copy to or from.")
    try:
        file_store, redis_store = open_file_store(settings), open_store(settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    source, destination = (file_store, redis_store) if target == "redis" else (redis_store, file_store)
    try:
        check_account(account)
        record = without_version(source.load(account))
        if not record.get("refreshToken"):
            raise click.ClickException(f"{_where(source, account)} holds no login to copy.")
        # Compare and write under the destination's lock, fenced by the version compared: a
        # refresh by a running amq in between must not get its rotated token overwritten.
        with destination.lock(account):
            existing = destination.load(account)
            if existing.get("refreshToken") not in (None, record["refreshToken"]) and not force:
                raise click.ClickException(f"{_where(destination, account)} already holds another login; "
                                           "--force replaces it.")
            destination.save(record, account, expected_version=int(existing.get("version") or 0))
    except StaleWrite:
        raise click.ClickException(f"{_where(destination, account)} changed while copy-login was copying "
                                   "(a running amq refreshed it?); nothing was copied. Run copy-login "
                                   "again to compare with the new login.") from None
    except LockTimeout as exc:
        raise click.ClickException(f"{_where(destination, account)} is busy ({exc}); nothing was "
                                   "copied. Try again.") from None
    except (ProxyError, ValueError) as exc:
        raise click.ClickException(getattr(exc, "message", str(exc))) from None
    click.echo(f"Copied the login of account {account} from {_where(source, account)} to "
               f"{_where(destination, account)}.")
    click.echo("Note: both stores now hold the same refresh token. The service rotates it at a refresh, "
               "so serve from one store only: the other copy stops working after the first refresh.")
