"""gunicorn settings: `gunicorn wsgi:app` reads this file from the working directory."""
# on_starting imports the app (and so ssl and sockets) in the master; patch first so the
# forked gevent workers do not inherit unpatched modules.
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import sys  # noqa: E402

from dotenv import load_dotenv  # noqa: E402

load_dotenv()


def _whole_number(name: str, default: str) -> int:
    """A positive integer setting, or one line naming it (no traceback)."""
    raw = os.environ.get(name) or default
    if not raw.isdigit() or int(raw) < 1:
        sys.exit(f"amq: configuration error: {name} must be a positive whole number, got '{raw}'")
    return int(raw)


bind = f"0.0.0.0:{os.environ.get('PORT', '8080')}"
worker_class = "gevent"
# One gevent worker serves hundreds of concurrent streams; a second one keeps serving while the
# other is busy (CPU, a restart). Workers share one credential store: refreshes are serialised
# across processes by its lock, so a rotating refresh token is never lost between them.
workers = _whole_number("WEB_CONCURRENCY", "2")
worker_connections = _whole_number("WORKER_CONNECTIONS", "1000")
# Streams can run for minutes; the gevent worker's heartbeat keeps it alive meanwhile.
timeout = 60
graceful_timeout = 30
keepalive = 5
loglevel = os.environ.get("LOG_LEVEL", "info").lower()


def on_starting(server):
    """Refuse to start, in one line, when a required setting is missing."""
    from app import check_settings

    check_settings()
