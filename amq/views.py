"""HTTP endpoints: the Messages API, health."""
from __future__ import annotations

import json
import logging
from typing import Iterator

from flask import Blueprint, Response, current_app, g, jsonify, request

from .errors import InvalidRequest, ProxyError
from .message import collect_message
from .sse import format_event
from .translate import StreamTranslator

logger = logging.getLogger(__name__)
bp = Blueprint("api", __name__)


def _proxy():
    return current_app.extensions["amq"]


def _json_object() -> dict:
    """The request body as a JSON object, or a 400 that says what is wrong."""
    raw = request.get_data(cache=False)
    if not raw:
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("request body must be a JSON object")
    return payload


def _sse(events: Iterator[dict]) -> Iterator[bytes]:
    """Write each event as soon as it exists; a fault ends the stream with an error event."""
    try:
        for event in events:
            yield format_event(event)
    except ProxyError as exc:
        logger.warning("stream ended by %s: %s", exc.error_type, exc.message)
        yield format_event(StreamTranslator.error(exc))
    except Exception:  # noqa: BLE001 - the client must still get an error event
        logger.exception("unexpected failure while streaming")
        yield format_event({"type": "error", "error": {"type": "api_error",
                                                       "message": "internal error in amq"}})
    finally:
        events.close()  # closes the upstream response, also when the client went away


@bp.post("/v1/messages")
def create_message():
    """Create a message, streamed as SSE when `stream` is true."""
    payload = _json_object()
    g.model = payload.get("model")
    g.streamed = payload.get("stream") is True
    events = _proxy().open_message(payload)
    if g.streamed:
        return Response(_sse(events), status=200, mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        return jsonify(collect_message(events))
    finally:
        events.close()


@bp.get("/health")
def health():
    """Liveness and token state; never a secret."""
    return jsonify({"status": "ok", **_proxy().tokens.status()})


@bp.route("/api/hello", methods=["GET", "HEAD"])
def hello():
    """Claude Code's connectivity check."""
    return jsonify({"status": "ok"})
