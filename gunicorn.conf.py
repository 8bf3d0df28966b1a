"""gunicorn settings: `gunicorn wsgi:app` reads this file from the working directory.

An entry point: it loads `.env`, then takes its values from amq.config, where the defaults
are written once.
"""
# on_starting imports the app (and so ssl and sockets) in the master; patch first so the
# forked gevent workers do not inherit unpatched modules.
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import sys  # noqa: E402

from dotenv import load_dotenv  # noqa: E402

# gunicorn puts the project on sys.path only after reading this file.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from amq.config import ConfigError, load_server_settings  # noqa: E402

load_dotenv()
try:
    _server = load_server_settings()
except ConfigError as exc:
    sys.exit(f"amq: configuration error: {exc}")  # one line, no traceback

bind = f"0.0.0.0:{_server.port}"
worker_class = "gevent"
# One gevent worker serves hundreds of concurrent streams; a second one keeps serving while the
# other is busy (CPU, a restart). Workers share one credential store: refreshes are serialised
# across processes by its lock, so a rotating refresh token is never lost between them.
workers = _server.web_concurrency
worker_connections = _server.worker_connections
# Streams can run for minutes; the gevent worker's heartbeat keeps it alive meanwhile.
timeout = 60
graceful_timeout = 30
keepalive = 5
loglevel = _server.log_level.lower()


def on_starting(server):
    """Refuse to start, in one line, when a required setting is missing."""
    from app import check_settings

    check_settings()
