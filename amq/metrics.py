"""Prometheus metrics: what amq counts, the record of one request, and the scrape.

Under gunicorn every worker writes its figures to files in PROMETHEUS_MULTIPROC_DIR
(gunicorn.conf.py sets it before prometheus_client is imported); a scrape sums the files of
all workers, so any worker answers /metrics for the whole server. Without that directory
(`flask run`) the figures live in this process.

Label values are bounded: route templates, Q model ids, statuses, a fixed set of outcomes and
error names. Nothing a client writes (request ids, prompts, model names as sent) becomes a label.
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector

from .translate import Usage

# LLM streams: a first byte in a fraction of a second, whole answers of up to ten minutes.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
LOCK_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# The exceptions Q's streaming service declares; any other name Q sends is counted as "other".
Q_EXCEPTIONS = frozenset({
    "AccessDeniedException", "ConflictException", "DryRunOperationException",
    "InternalServerException", "ResourceNotFoundException", "ServiceQuotaExceededException",
    "ServiceUnavailableException", "ThrottlingException", "ValidationException"})
REFRESH_OUTCOMES = frozenset({"refreshed", "shared", "rejected", "failed", "lock_timeout", "store_unavailable"})
NOT_A_STREAM = "none"
_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,79}")

REGISTRY = CollectorRegistry()
REQUESTS = Counter(
    "amq_requests_total", "Requests answered, by endpoint, Q model, HTTP status and stream outcome "
    "(none for answers that are not streams).",
    ("endpoint", "model", "status", "outcome"), registry=REGISTRY)
FIRST_BYTE = Histogram(
    "amq_time_to_first_byte_seconds", "From the request's arrival to the first byte of the answer.",
    ("endpoint", "model"), buckets=LATENCY_BUCKETS, registry=REGISTRY)
DURATION = Histogram(
    "amq_request_duration_seconds", "From the request's arrival to the end of the answer "
    "(for a stream: its last byte or the client leaving).",
    ("endpoint", "model"), buckets=LATENCY_BUCKETS, registry=REGISTRY)
STREAMS_IN_FLIGHT = Gauge(
    "amq_streams_in_flight", "Streams being answered now, summed over the live workers.",
    registry=REGISTRY, multiprocess_mode="livesum")
UPSTREAM_ATTEMPTS = Counter(
    "amq_upstream_attempts_total", "Calls to Amazon Q, by result: ok, or the Anthropic error type "
    "the failure maps to.", ("result",), registry=REGISTRY)
UPSTREAM_RETRIES = Counter(
    "amq_upstream_retries_total", "Calls to Amazon Q sent again before the client saw anything, "
    "by the error type that caused it.", ("reason",), registry=REGISTRY)
UPSTREAM_ERRORS = Counter(
    "amq_upstream_errors_total", "Failures of Amazon Q calls, before or during the answer, by Q's "
    "exception name (or amq's error class when Q named none: connection faults, timeouts).",
    ("exception",), registry=REGISTRY)
INPUT_TOKENS = Counter(
    "amq_input_tokens_total", "Input tokens of answered messages (Q's figure, else amq's estimate).",
    ("model",), registry=REGISTRY)
OUTPUT_TOKENS = Counter(
    "amq_output_tokens_total", "Output tokens of answered messages (Q's figure, else amq's estimate).",
    ("model",), registry=REGISTRY)
CREDITS = Counter(
    "amq_credits_total", "Amazon Q credits charged, as Q's meteringEvent reports them.",
    ("model",), registry=REGISTRY)
TOKEN_REFRESHES = Counter(
    "amq_token_refreshes_total", "Access-token refreshes, by outcome.", ("outcome",),
    registry=REGISTRY)
REFRESH_LOCK_WAIT = Histogram(
    "amq_token_refresh_lock_wait_seconds", "Time spent waiting for the refresh lock.",
    buckets=LOCK_WAIT_BUCKETS, registry=REGISTRY)
ACCOUNT_REQUESTS = Counter(
    "amq_account_requests_total", "Calls to Amazon Q, by the account that made them.",
    ("account",), registry=REGISTRY)
ACCOUNT_ERRORS = Counter(
    "amq_account_errors_total", "Failed calls to Amazon Q, by account and what the error meant for "
    "the account (amq/q_errors.py, DISPOSITIONS).", ("account", "disposition"), registry=REGISTRY)
ACCOUNT_COOLDOWNS = Counter(
    "amq_account_cooldowns_total", "Times an account was taken out of the pool, by the state it went to.",
    ("account", "state"), registry=REGISTRY)
ACCOUNT_STATE = Gauge(
    "amq_account_state", "1 for each account's current state (as the workers last saw it), else 0.",
    ("account", "state"), registry=REGISTRY, multiprocess_mode="mostrecent")
ACCOUNT_STATES = ("active", "cooling", "exhausted", "suspended", "invalid", "disabled")
DISPOSITION_LABELS = frozenset({"request", "model", "throttled", "risk", "monthly", "suspended",
                                "invalid", "transient", "other"})


def account_event(kind: str, account: str, label: str) -> None:
    """For the account pool: a call ("request"), a failure ("error", its disposition), a rest
    ("cooldown", the state) or the state seen at a sync ("state"). Account names are the
    operator's (bounded, checked by amq.credentials.store.check_account)."""
    if kind == "request":
        ACCOUNT_REQUESTS.labels(account).inc()
    elif kind == "error":
        ACCOUNT_ERRORS.labels(account, label if label in DISPOSITION_LABELS else "other").inc()
    elif kind == "cooldown" and label in ACCOUNT_STATES:
        ACCOUNT_COOLDOWNS.labels(account, label).inc()
    elif kind == "state" and label in ACCOUNT_STATES:
        for state in ACCOUNT_STATES:
            ACCOUNT_STATE.labels(account, state).set(1 if state == label else 0)


@dataclass
class RequestRecord:
    """What one request did; read at its end for the metrics and the access-log line."""

    request_id: str
    method: str
    path: str
    endpoint: str  # the route template, or "unmatched"
    client: str  # the peer's address
    key_fingerprint: str | None  # a short hash of the presented API key, never the key
    started: float
    model: str = "-"  # the Q model id, once resolved
    account: str = "-"  # the account that served it (the pool sets it)
    status: int = 0
    outcome: str = NOT_A_STREAM
    first_byte: float | None = None  # seconds after `started`
    duration: float | None = None
    usage: Usage | None = None
    usage_source: Callable[[], Usage] | None = None  # read once the answer is over


def model_label(model_id: str) -> str:
    """A Q model id as a label value; anything that does not look like one is "other"."""
    return model_id if _MODEL_ID.fullmatch(model_id) else "other"


def error_outcome(error: Exception) -> str:
    """The stream outcome of a fault mid-answer: `upstream_<Anthropic error type>` for the
    proxy's errors (a bounded set), `internal_error` for anything else."""
    error_type = getattr(error, "error_type", None)
    return f"upstream_{error_type}" if isinstance(error_type, str) else "internal_error"


def q_exception_label(error: Exception) -> str:
    """Q's exception name when it gave one (known names only), else amq's error class."""
    code = getattr(error, "q_exception", "")
    if code:
        return code if code in Q_EXCEPTIONS else "other"
    return type(error).__name__


def count_attempt(error: Exception | None, retried: bool = False) -> None:
    """One call to Q: ok, or failed (and whether it is being sent again)."""
    if error is None:
        UPSTREAM_ATTEMPTS.labels("ok").inc()
        return
    kind = getattr(error, "error_type", "internal_error")
    UPSTREAM_ATTEMPTS.labels(kind).inc()
    UPSTREAM_ERRORS.labels(q_exception_label(error)).inc()
    if retried:
        UPSTREAM_RETRIES.labels(kind).inc()


def count_stream_errors(batches: Iterator) -> Iterator:
    """Pass Q's event batches through, counting a fault mid-answer before it propagates."""
    try:
        yield from batches
    except Exception as exc:
        UPSTREAM_ERRORS.labels(q_exception_label(exc)).inc()
        raise
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def record_refresh(outcome: str, lock_wait_seconds: float) -> None:
    """For the token manager, once per refresh it takes part in.

    :param outcome: "refreshed" (this process got a new token), "shared" (another process
        refreshed while this one waited), "rejected" (the login was refused), "failed"
        (network or service fault), "lock_timeout", "store_unavailable" (Redis did not answer);
        anything else is counted as "other".
    :param lock_wait_seconds: time spent waiting for the refresh lock.
    """
    TOKEN_REFRESHES.labels(outcome if outcome in REFRESH_OUTCOMES else "other").inc()
    REFRESH_LOCK_WAIT.observe(max(0.0, lock_wait_seconds))


def observe_stream(chunks: Iterable[bytes], record: RequestRecord,
                   clock: Callable[[], float] = time.monotonic) -> Iterator[bytes]:
    """A stream's body, counted in flight while it runs; notes its first byte and whether it
    ran to its end (the body's producer sets an error outcome itself) or the client left."""
    STREAMS_IN_FLIGHT.inc()
    try:
        for chunk in chunks:
            if record.first_byte is None:
                record.first_byte = clock() - record.started
            yield chunk
        if record.outcome == NOT_A_STREAM:
            record.outcome = "complete"
    except GeneratorExit:
        if record.outcome == NOT_A_STREAM:
            record.outcome = "client_gone"  # the server closes the body when a write fails
        raise
    except BaseException:
        if record.outcome == NOT_A_STREAM:
            record.outcome = "aborted"  # the worker stopped it (shutdown, a gevent Timeout)
        raise
    finally:
        STREAMS_IN_FLIGHT.dec()
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def finish_request(record: RequestRecord, clock: Callable[[], float] = time.monotonic) -> None:
    """Close the record (duration, usage) and count it."""
    record.duration = clock() - record.started
    if record.usage is None and record.usage_source is not None:
        record.usage = record.usage_source()
    model = model_label(record.model) if record.model != "-" else "-"
    REQUESTS.labels(record.endpoint, model, str(record.status), record.outcome).inc()
    DURATION.labels(record.endpoint, model).observe(record.duration)
    if record.first_byte is not None:
        FIRST_BYTE.labels(record.endpoint, model).observe(record.first_byte)
    usage = record.usage
    if usage is not None:
        INPUT_TOKENS.labels(model).inc(max(0, usage.input_tokens))
        OUTPUT_TOKENS.labels(model).inc(max(0, usage.output_tokens))
        if usage.credits:
            CREDITS.labels(model).inc(usage.credits)


def exposition(multiprocess_dir: str = "", accept: str = "") -> tuple[bytes, str]:
    """The scrape body in the format the scraper's Accept header asks for, and its content
    type: every worker's figures when `multiprocess_dir` is set, this process's otherwise."""
    if multiprocess_dir:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=multiprocess_dir)
    else:
        registry = REGISTRY
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type
