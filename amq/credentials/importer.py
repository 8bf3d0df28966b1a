"""`import-q-cli`: take the login of the Amazon Q CLI or the Kiro CLI from their SQLite database.

Layout (docs/oidc.md, "Where the CLIs keep their login"): table `auth_kv(key TEXT PRIMARY KEY,
value TEXT)` with JSON values under
`codewhisperer:odic:token` / `codewhisperer:odic:device-registration` (Q CLI) or
`kirocli:odic:token` / `kirocli:odic:device-registration` (Kiro CLI); "odic" is their spelling.
The token holds {access_token, expires_at (RFC 3339), refresh_token, region, start_url, ...},
the registration {client_id, client_secret, client_secret_expires_at (RFC 3339), region, ...}.
Table `state(key, value)` may hold `api.codewhisperer.profile` = {arn, profile_name}.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ..config import DEFAULT_REGION, oidc_url
from .record import LoginRecord

SOURCES = {  # name -> (data directory name, auth_kv key prefix)
    "Amazon Q CLI": ("amazon-q", "codewhisperer"),
    "Kiro CLI": ("kiro-cli", "kirocli"),
}


class ImportFailed(Exception):
    """Nothing usable was found; the message says where amq looked and what to do."""


@dataclass
class ImportedLogin:
    source: str
    path: str
    record: LoginRecord  # for the credential store
    profile_arn: str = ""
    notes: list[str] = field(default_factory=list)


def data_local_dir(platform: str = sys.platform, environ=os.environ, home: Path | None = None) -> Path:
    """Rust's dirs::data_local_dir(), where both CLIs keep data.sqlite3."""
    home = home or Path.home()
    if platform == "darwin":
        return home / "Library" / "Application Support"
    if platform.startswith("win"):
        return Path(environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    return Path(environ.get("XDG_DATA_HOME") or home / ".local" / "share")


def default_paths(**kwargs) -> list[tuple[str, Path]]:
    base = data_local_dir(**kwargs)
    return [(name, base / directory / "data.sqlite3") for name, (directory, _) in SOURCES.items()]


def parse_time(value) -> float | None:
    """RFC 3339 (the CLIs write up to nanoseconds and a Z) or epoch seconds, as epoch seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str) or not value:
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", value.strip()).replace("Z", "+00:00").replace("z", "+00:00")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _json(raw):
    if isinstance(raw, (bytes, bytearray, memoryview)):
        raw = bytes(raw).decode("utf-8", "replace")
    try:
        value = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _read_tables(path: str) -> tuple[dict, dict]:
    """(auth_kv, state) of the database, read-only; KeyError-free dicts."""
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    try:
        connection = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as exc:
        raise ImportFailed(f"cannot open {path}: {exc}") from None
    try:
        try:
            auth = dict(connection.execute("SELECT key, value FROM auth_kv").fetchall())
        except sqlite3.DatabaseError as exc:
            raise ImportFailed(f"{path} is not a Q CLI / Kiro CLI database (no auth_kv table: {exc})") from None
        try:
            state = dict(connection.execute("SELECT key, value FROM state").fetchall())
        except sqlite3.DatabaseError:
            state = {}
    finally:
        connection.close()
    return auth, state


def read_login(path: str, prefer: str | None = None, now: float | None = None) -> ImportedLogin:
    """The OIDC login stored in the database at `path` (Q CLI keys first unless `prefer`).

    :raises FileNotFoundError: if there is no such file; ImportFailed if it holds no usable login.
    """
    now = time.time() if now is None else now
    auth, state = _read_tables(path)
    names = sorted(SOURCES, key=lambda name: name != prefer)
    found_other = []
    for name in names:
        prefix = SOURCES[name][1]
        token = _json(auth.get(f"{prefix}:odic:token"))
        registration = _json(auth.get(f"{prefix}:odic:device-registration"))
        if token is None and registration is None:
            for other in ("social", "external-idp"):
                if auth.get(f"{prefix}:{other}:token"):
                    found_other.append(f"{name} ({other} login)")
            continue
        return _login(name, path, token, registration, state, now)
    if found_other:
        raise ImportFailed(f"{path} holds only a {', '.join(found_other)}, which amq cannot refresh "
                           "(it refreshes through AWS SSO-OIDC). Use `flask --app app login` instead.")
    raise ImportFailed(f"{path} holds no Amazon Q login (no codewhisperer:odic:token or kirocli:odic:token "
                       "in auth_kv). Log in with the CLI first, or use `flask --app app login`.")


def _login(name: str, path: str, token: dict | None, registration: dict | None, state: dict,
           now: float) -> ImportedLogin:
    if not token or not token.get("refresh_token"):
        raise ImportFailed(f"{name} database {path} has a client registration but no refresh token: "
                           "log in with the CLI again, or use `flask --app app login`.")
    if not registration or not registration.get("client_id") or not registration.get("client_secret"):
        raise ImportFailed(f"{name} database {path} has a token but no client registration "
                           "(device-registration); amq needs both to refresh.")
    secret_expires = parse_time(registration.get("client_secret_expires_at"))
    if secret_expires is not None and secret_expires <= now + 60:
        raise ImportFailed(f"the {name} client registration in {path} has expired; log in with the "
                           "CLI again, or use `flask --app app login`.")
    region = str(token.get("region") or registration.get("region") or DEFAULT_REGION)
    if registration.get("region") and registration["region"] != region:
        raise ImportFailed(f"the {name} token ({region}) and registration ({registration['region']}) "
                           "are for different regions; log in with the CLI again.")
    record = {"clientId": str(registration["client_id"]), "clientSecret": str(registration["client_secret"]),
              "clientSecretExpiresAt": secret_expires, "region": region,
              "startUrl": token.get("start_url") or None,
              "tokenEndpoint": oidc_url(region) + "/token",
              "source": f"{name} ({path})", "seed": "",
              "refreshToken": str(token["refresh_token"])}
    expires_at = parse_time(token.get("expires_at"))
    if token.get("access_token") and expires_at and expires_at > now:
        record.update(accessToken=str(token["access_token"]), expiresAt=expires_at)
    profile = _json(state.get("api.codewhisperer.profile")) or {}
    notes = []
    if token.get("oauth_flow") and token["oauth_flow"] != "DeviceCode":
        notes.append(f"the {name} logged in with {token['oauth_flow']}; its refresh works the same way")
    return ImportedLogin(source=name, path=path, profile_arn=str(profile.get("arn") or ""), notes=notes,
                         record={k: v for k, v in record.items() if v is not None})


def find_login(path: str | None = None, prefer: str | None = None, **kwargs) -> ImportedLogin:
    """Read `path`, or the first default database that exists (Q CLI, then Kiro CLI; only the
    one named by `prefer` if given).

    :raises ImportFailed: naming every place looked at.
    """
    if path:
        try:
            return read_login(path, prefer)
        except FileNotFoundError:
            raise ImportFailed(f"no such file: {path}") from None
    candidates = [(name, p) for name, p in default_paths(**kwargs) if prefer in (None, name)]
    problems = []
    for name, candidate in candidates:
        try:
            return read_login(str(candidate), name)
        except FileNotFoundError:
            continue
        except ImportFailed as exc:
            problems.append(str(exc))
    if problems:
        raise ImportFailed("\n".join(problems))
    looked = ", ".join(str(p) for _, p in candidates)
    raise ImportFailed(f"no Amazon Q CLI or Kiro CLI login found (looked at {looked}). Give the "
                       "database's path, or log in with `flask --app app login`.")
