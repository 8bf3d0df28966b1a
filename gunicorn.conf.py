"""gunicorn settings: `gunicorn wsgi:app` reads this file from the working directory.

An entry point: it loads `.env`, then takes its values from amq.config, where the defaults
are written once.
"""
# on_starting imports the app (and so ssl and sockets) in the master; patch first so the
# forked gevent workers do not inherit unpatched modules.
from gevent import monkey

monkey.patch_all()

import glob  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

from dotenv import load_dotenv  # noqa: E402

# gunicorn puts the project on sys.path only after reading this file.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from amq.config import ConfigError, load_server_settings  # noqa: E402

load_dotenv()
try:
    _server = load_server_settings()
except ConfigError as exc:
    sys.exit(f"amq: configuration error: {exc}")  # one line, no traceback

# Metrics: each worker writes its figures to files here and any worker's /metrics sums them.
# prometheus_client reads the variable when first imported, so it is set before anything
# imports it; workers inherit it. A directory of our own unless the operator names one.
METRICS_DIR_PREFIX = "amq-metrics-"
if not _server.metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=METRICS_DIR_PREFIX)
else:
    try:
        os.makedirs(_server.metrics_dir, exist_ok=True)
    except OSError as exc:
        sys.exit(f"amq: configuration error: PROMETHEUS_MULTIPROC_DIR cannot be created: {exc.strerror}")

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
if _server.log_format == "json":
    # gunicorn's own lines as JSON too; the root logger takes amq's (see amq/logs.py). Each
    # line is written once: gunicorn's error log does not propagate to the root's handler, and
    # its access log stays off (a log config turns it on) as amq writes its own access line.
    logconfig_dict = {
        "root": {"level": "INFO", "handlers": ["error_console"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["error_console"], "propagate": False,
                               "qualname": "gunicorn.error"},
            "gunicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False,
                                "qualname": "gunicorn.access"},
        },
        "formatters": {"generic": {"()": "amq.logs.JsonFormatter"}},
    }


def on_starting(server):
    """Start with empty metrics, then refuse to start, in one line, when a required setting is
    missing."""
    # Figures of an earlier run would be summed with this one's (a pid can come again).
    for path in glob.glob(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "*.db")):
        os.remove(path)
    from app import check_settings

    try:
        check_settings()
    except SystemExit:
        on_exit(server)  # gunicorn does not call it when on_starting refuses
        raise


def child_exit(server, worker):
    """A dead worker's streams are no longer in flight; its counters stay in the sums."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Remove the metrics directory if it is the one made above."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if os.path.basename(directory).startswith(METRICS_DIR_PREFIX) and \
            os.path.dirname(directory) == tempfile.gettempdir():
        shutil.rmtree(directory, ignore_errors=True)
