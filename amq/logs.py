"""Log output: readable lines or one JSON object per line (LOG_FORMAT), and the access line.

The access line is written once per request when its answer ends; it carries no secret and no
prompt text: the API key only as a short fingerprint, client-chosen text quoted and cut.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import logging
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # gunicorn's master imports this module for its logs alone
    from .metrics import RequestRecord

TEXT_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
access_logger = logging.getLogger("amq.access")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, tracebacks included, for log drains.

    An access line also carries its fields as keys, so drains can filter on them.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "process": record.process,
            "message": record.getMessage(),
        }
        fields = getattr(record, "access", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: str, log_format: str = "text") -> None:
    """Send logs to stderr as text or JSON, unless the host (gunicorn's logconfig, pytest)
    already set up the root logger."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
        root.addHandler(handler)
    logging.getLogger("amq").setLevel(level)
    # urllib3 logs URLs and headers at DEBUG; keep it quiet whatever LOG_LEVEL says.
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def key_fingerprint(key: str | None) -> str | None:
    """Eight hex digits of the key's SHA-256: tells keys apart in logs, reveals nothing usable."""
    if not key:
        return None
    return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:8]


def log_safe(value: object) -> str:
    """Client-supplied text for a log line: printable, one line, at most 100 characters."""
    text = value if isinstance(value, str) else repr(value)
    if text.isprintable() and " " not in text and len(text) <= 100:
        return text
    return repr(text[:100])


def access_fields(record: RequestRecord) -> dict:
    """The access line's fields, in order; None where a figure does not apply."""
    usage = record.usage
    return {
        "request_id": record.request_id, "method": log_safe(record.method), "path": log_safe(record.path),
        "status": record.status, "outcome": record.outcome, "model": record.model,
        "account": record.account,
        "input_tokens": usage.input_tokens if usage else None,
        "output_tokens": usage.output_tokens if usage else None,
        "credits": usage.credits if usage else None,
        "ttfb_ms": round(record.first_byte * 1000, 1) if record.first_byte is not None else None,
        "duration_ms": round(record.duration * 1000, 1) if record.duration is not None else None,
        "client": record.client, "key": record.key_fingerprint,
    }


def log_access(record: RequestRecord) -> None:
    """The request's one INFO line: `POST /v1/messages 200 outcome=complete model=... id=...`."""
    if not access_logger.isEnabledFor(logging.INFO):
        return
    fields = access_fields(record)
    shown = " ".join(f"{name}={'-' if value is None else value}" for name, value in fields.items()
                     if name not in ("method", "path", "status", "request_id"))
    access_logger.info("%s %s %s %s id=%s", fields["method"], fields["path"], record.status, shown,
                       record.request_id, extra={"access": fields})
