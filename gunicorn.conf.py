"""gunicorn settings: `gunicorn wsgi:app` reads this file from the working directory."""
import os

from dotenv import load_dotenv

load_dotenv()

bind = f"0.0.0.0:{os.environ.get('PORT', '8080')}"
worker_class = "gevent"
# One gevent worker serves hundreds of concurrent streams. Token refreshes are serialised
# within a process only, so keep one worker unless the refresh token never rotates.
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "1000"))
# Streams can run for minutes; the gevent worker's heartbeat keeps it alive meanwhile.
timeout = 60
graceful_timeout = 30
keepalive = 5
loglevel = os.environ.get("LOG_LEVEL", "info").lower()


def on_starting(server):
    """Refuse to start, in one line, when a required setting is missing."""
    from app import check_settings

    check_settings()
