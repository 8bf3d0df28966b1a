"""The credential store: its interface, the file backend, and choosing a backend from the settings.

A store holds one login record per account name (today's single login is `default`) and a lock
per account that serialises refreshes across every process sharing the store. Each write bumps
the record's `version`; a write that names the version it read is refused (`StaleWrite`) when
someone else wrote in between. That version is the fence: a lock can expire under a paused
holder (Redis) or be skipped when it cannot be taken (file store), the version cannot.

The file backend keeps its guarantees from before the split:

* one JSON file per account (AMAZONQ_TOKEN_CACHE for `default`, mode 0600), replaced atomically
  (temp file, fsync, rename, directory fsync): a reader never sees a partial file and a killed
  writer leaves the old file or the new one;
* the lock is fcntl.flock on `<file>.lock`, released by the kernel when its holder dies, taken
  by polling so a waiting gevent worker keeps serving.

REDIS_URL switches to the Redis backend (amq/credentials/redis_store.py), same interface.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import tempfile
import time
from typing import Protocol

from ..config import ConfigError, Settings
from .record import DEFAULT_ACCOUNT, LoginRecord

logger = logging.getLogger(__name__)

ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class LockTimeout(TimeoutError):
    """The store's lock stayed taken for longer than the timeout."""


class StaleWrite(Exception):
    """A fenced write was refused: the record changed since the writer read it."""

    def __init__(self, expected: int, current: int):
        super().__init__(f"record is at version {current}, the writer read version {expected}")
        self.expected, self.current = expected, current


class StoreLock(Protocol):
    """Serialises refreshes of one account; a context manager."""

    description: str

    def acquire(self) -> None:
        """:raises LockTimeout: when it stays taken; OSError or StoreUnavailable when the
        store cannot be reached."""

    def release(self) -> None: ...

    def __enter__(self) -> StoreLock: ...

    def __exit__(self, *exc) -> None: ...


class CredentialStore(Protocol):
    """What the manager, the commands and (later) the account pool need from a store.

    Backends raise amq.errors.StoreUnavailable when they cannot be reached (the file store
    raises OSError where it did before).
    """

    kind: str  # "file" or "redis"
    location: str  # path or URL without password: safe to print

    def load(self, account: str = DEFAULT_ACCOUNT) -> LoginRecord:
        """The account's record with its `version` ({} when there is none)."""

    def version(self, account: str = DEFAULT_ACCOUNT) -> int:
        """The record's version (0: none); cheap, for noticing someone else's write."""

    def save(self, record: LoginRecord, account: str = DEFAULT_ACCOUNT, *,
             expected_version: int | None = None) -> int:
        """Write the record whole; return its new version.

        With `expected_version`, refuse (StaleWrite) unless the stored version is still that.
        Call it holding `lock(account)` (the file store cleans up dead writers' temp files).
        """

    def replace_login(self, record: LoginRecord, account: str = DEFAULT_ACCOUNT) -> int:
        """Store a new login (`login`, an import, a copy) in place of whatever was there."""

    def lock(self, account: str = DEFAULT_ACCOUNT) -> StoreLock:
        """A new, not yet acquired lock on the account."""

    def accounts(self) -> list[str]:
        """Names of the accounts that hold a record."""

    def remove(self, account: str) -> None:
        """Delete the account's login (and its lock); nothing happens if there is none."""

    def describe(self) -> dict:
        """Facts for `status` and the start-up log: no secret."""


def check_account(account: str) -> str:
    """Account names become file names and key names: keep them plain (never a secret)."""
    if not ACCOUNT_NAME.match(account):
        raise ValueError(f"account name {account!r}: use letters, digits, '.', '_' and '-' (max 64)")
    return account


class FileLock:
    """An exclusive lock shared by every process (flock on `path`), released when the holder
    exits or dies. Taken by polling a non-blocking flock with short sleeps: a blocking flock
    would stall every greenlet of a gevent worker, while time.sleep yields to them."""

    def __init__(self, path: str, timeout: float):
        self.path = path
        self.description = f"lock {path}"
        self.timeout = timeout
        self._fd: int | None = None

    def acquire(self) -> None:
        """:raises LockTimeout: after `timeout` seconds; OSError if the file cannot be opened."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + self.timeout
        delay = 0.001
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockTimeout(f"{self.path} stayed locked for {self.timeout:.0f}s") from None
                    time.sleep(delay)  # cooperative under gevent
                    delay = min(delay * 2, 0.05)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class FileStore:
    """One JSON file per account (mode 0600) and its lock file beside it."""

    kind = "file"

    def __init__(self, path: str, lock_timeout: float = 90.0):
        self.path = path
        self.location = path
        self.lock_path = path + ".lock"
        self.lock_timeout = lock_timeout

    # paths: `default` is the file itself (the format of every earlier version)
    def path_of(self, account: str = DEFAULT_ACCOUNT) -> str:
        if account == DEFAULT_ACCOUNT:
            return self.path
        stem, ext = os.path.splitext(self.path)
        return f"{stem}.{check_account(account)}{ext or '.json'}"

    def load(self, account: str = DEFAULT_ACCOUNT) -> LoginRecord:
        """The store's contents ({} if absent). Safe without the lock: the file is only ever
        replaced whole."""
        path = self.path_of(account)
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("token cache %s unreadable (%s); ignoring it", path, type(exc).__name__)
            return {}
        return data if isinstance(data, dict) else {}

    def version(self, account: str = DEFAULT_ACCOUNT) -> int:
        return _version(self.load(account))

    def lock(self, account: str = DEFAULT_ACCOUNT) -> FileLock:
        """A new (not yet acquired) lock on the store; use as a context manager."""
        self._make_directory()
        path = self.path_of(account)
        return FileLock(path + ".lock", self.lock_timeout)

    def save(self, record: LoginRecord, account: str = DEFAULT_ACCOUNT, *,
             expected_version: int | None = None) -> int:
        """Replace the file atomically: temp file, fsync, rename, fsync of the directory.

        Call it holding `lock()` (or where no other writer can exist): the version check and
        the removal of temp files left by a writer that died are safe only then.
        """
        path = self.path_of(account)
        current = self.version(account)
        if expected_version is not None and current != expected_version:
            raise StaleWrite(expected_version, current)
        data = dict(record, version=current + 1)
        directory = self._make_directory()
        prefix = "." + os.path.basename(path) + ".tmp-"
        self._remove_stale_temp_files(directory, prefix)
        fd, tmp = tempfile.mkstemp(prefix=prefix, dir=directory)  # created 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        try:  # make the rename itself durable (power loss; a killed process needs no fsync)
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            pass
        return current + 1

    def replace_login(self, record: LoginRecord, account: str = DEFAULT_ACCOUNT) -> int:
        with self.lock(account):
            return self.save(record, account)

    def remove(self, account: str) -> None:
        with self.lock(account), contextlib.suppress(FileNotFoundError):
            os.unlink(self.path_of(account))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path_of(account) + ".lock")

    def accounts(self) -> list[str]:
        names = [DEFAULT_ACCOUNT] if self.load() else []
        stem, ext = os.path.splitext(os.path.basename(self.path))
        pattern = re.compile(re.escape(stem) + r"\.(.+)" + re.escape(ext or ".json") + "$")
        try:
            entries = sorted(os.listdir(os.path.dirname(os.path.abspath(self.path))))
        except OSError:
            entries = []
        for entry in entries:
            match = pattern.match(entry)
            if match and ACCOUNT_NAME.match(match.group(1)) and self.load(match.group(1)):
                names.append(match.group(1))
        return names

    def describe(self) -> dict:
        return {"backend": "file", "location": self.path, "lock": self.lock_path,
                "persistence": "the file system (fsync before every rename)"}

    def _make_directory(self) -> str:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        return directory

    @staticmethod
    def _remove_stale_temp_files(directory: str, prefix: str) -> None:
        try:
            names = [n for n in os.listdir(directory) if n.startswith(prefix)]
        except OSError:
            return
        for name in names:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))


def _version(record: LoginRecord) -> int:
    try:
        return int(record.get("version") or 0)
    except (TypeError, ValueError):
        return 0


def lock_ttl(settings: Settings) -> float:
    """How long a refresh may hold the lock: CreateToken's timeouts plus room for the writes."""
    return settings.connect_timeout + min(settings.read_timeout, 60.0) + 10.0


def open_store(settings: Settings, *, check: bool = True) -> CredentialStore:
    """The store the settings name: Redis when REDIS_URL is set, else the file store.

    :raises ConfigError: (with `check`) naming REDIS_URL when the server cannot be used.
    """
    if settings.redis_url:
        from .redis_store import RedisStore  # redis-py is imported only when it is used

        store = RedisStore.from_settings(settings)
        if check:
            store.check()
        return store
    if not settings.token_cache:
        raise ConfigError("AMAZONQ_TOKEN_CACHE is empty")
    return FileStore(settings.token_cache, lock_timeout=lock_ttl(settings) + 20.0)


def open_file_store(settings: Settings) -> FileStore:
    """The file store whatever REDIS_URL says (for copying a login between the backends)."""
    return FileStore(settings.token_cache, lock_timeout=lock_ttl(settings) + 20.0)


def report_store(store: CredentialStore) -> None:
    """One log line at start naming the store; a warning when Redis keeps no data on disk."""
    if store.kind != "redis":
        logger.info("credential store: file %s", store.location)
        return
    from .redis_store import warn_if_volatile

    warn_if_volatile(store)  # type: ignore[arg-type]
