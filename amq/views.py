"""HTTP endpoints: messages (streaming or not), count_tokens, models, health, metrics."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from itertools import chain

from flask import Blueprint, Response, current_app, g, jsonify, request

from . import metrics
from .access import check_metrics_access
from .cooperative import give_way
from .errors import INTERNAL_ERROR, InvalidRequest, NotFound, ProxyError, RequestTooLarge
from .jsonio import loads
from .message import collect_message
from .sse import error_event, format_event
from .tokencount import count_request_tokens

logger = logging.getLogger(__name__)
bp = Blueprint("api", __name__)
LARGE_BODY = 64 * 1024  # bytes: a body whose parse and conversion each take a millisecond or more


def _proxy():
    return current_app.extensions["amq"]


def _body() -> bytes:
    """The raw body, refused with 413 once it passes MAX_CONTENT_LENGTH.

    Werkzeug checks a declared Content-Length itself, but silently cuts a chunked body at
    the limit; here the read stops there and says so.
    """
    if request.content_length is not None:
        return request.get_data(cache=False)
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    stream, chunks, size = request.environ["wsgi.input"], [], 0
    while True:
        chunk = stream.read(64 * 1024)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"request body is larger than {limit} bytes (MAX_REQUEST_BYTES)")
        chunks.append(chunk)


def _json_body():
    """The request body as JSON, or a 400 that says what is wrong (the validation step then
    insists on an object)."""
    raw = _body()
    if not raw:
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        payload = loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidRequest("request body is nested too deeply") from None
    if len(raw) > LARGE_BODY:
        give_way()  # the other streams' events, before the conversion of a large request
    return payload


def _sse(batches: Iterator[list[dict]], record: metrics.RequestRecord) -> Iterator[bytes]:
    """Write each batch of events as soon as it exists; a fault ends the stream with an error
    event (carrying the request id, as error bodies do) and is noted as its outcome."""
    request_id = record.request_id
    try:
        for batch in batches:
            # One write per batch: each write is a chunk and two syscalls in gunicorn.
            yield b"".join(map(format_event, batch))
    except ProxyError as exc:
        record.outcome = metrics.error_outcome(exc)
        logger.warning("stream %s ended by %s: %s", request_id, exc.error_type, exc.message)
        yield error_event(exc, request_id)
    except Exception as exc:  # noqa: BLE001 - the client must still get an error event
        record.outcome = metrics.error_outcome(exc)
        logger.exception("unexpected failure while streaming %s", request_id)
        yield error_event(ProxyError(INTERNAL_ERROR), request_id)
    finally:
        batches.close()  # closes the upstream response, also when the client went away


@bp.post("/v1/messages")
def create_message():
    """Create a message, streamed as SSE when `stream` is true."""
    payload = _json_body()
    message = _proxy().validate(payload)
    events = _proxy().open_message(message, record=g.record,
                                   session=request.headers.get("X-Claude-Code-Session-Id"))
    if message.stream:
        body = metrics.observe_stream(_sse(events, g.record), g.record)
        return Response(body, status=200, mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        return jsonify(collect_message(chain.from_iterable(events)))
    finally:
        events.close()


@bp.post("/v1/messages/count_tokens")
def count_tokens():
    """Estimated input tokens of a Messages request (see README: how close it is)."""
    payload = _json_body()
    _proxy().validate(payload)  # what /v1/messages would refuse, this refuses too
    return jsonify({"input_tokens": count_request_tokens(payload)})


@bp.get("/v1/models")
def list_models():
    """Claude ids amq can serve, newest first, in Anthropic's paginated list shape."""
    entries = _proxy().models.claude_models()
    try:
        limit = int(request.args.get("limit", 20))
    except ValueError:
        raise InvalidRequest("limit: must be an integer") from None
    if not 1 <= limit <= 1000:
        raise InvalidRequest("limit: must be between 1 and 1000")
    ids = [entry["id"] for entry in entries]
    start, end = 0, len(entries)
    if request.args.get("after_id") in ids:
        start = ids.index(request.args["after_id"]) + 1
    if request.args.get("before_id") in ids:
        end = ids.index(request.args["before_id"])
        start = max(start, end - limit) if "after_id" not in request.args else start
    page = entries[start:end][:limit]
    return jsonify({"data": page, "has_more": start + len(page) < end,
                    "first_id": page[0]["id"] if page else None,
                    "last_id": page[-1]["id"] if page else None})


@bp.get("/v1/models/<path:model_id>")
def get_model(model_id: str):
    """One model by its Claude id."""
    for entry in _proxy().models.claude_models():
        if entry["id"] == model_id:
            return jsonify(entry)
    raise NotFound(f"model '{model_id}' is not available through amq")


@bp.get("/health")
def health():
    """Liveness and token state; never a secret."""
    return jsonify({"status": "ok", **_proxy().tokens.status()})


@bp.get("/metrics")
def prometheus_metrics():
    """Prometheus figures of every worker: open to loopback, else METRICS_KEY (see README)."""
    settings = _proxy().settings
    check_metrics_access(request.headers, request.remote_addr, settings.metrics_key)
    body, content_type = metrics.exposition(settings.metrics_dir, request.headers.get("Accept", ""))
    return Response(body, content_type=content_type)


@bp.route("/api/hello", methods=["GET", "HEAD"])
def hello():
    """Claude Code's connectivity check."""
    return jsonify({"status": "ok"})
