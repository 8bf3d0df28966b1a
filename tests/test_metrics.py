"""The metrics and log helpers in one process (as under `flask run`), and who may scrape."""
from __future__ import annotations

import json
import logging
import sys

import pytest

from amq import metrics
from amq.config import ConfigError, load_settings
from amq.errors import BadGateway, Overloaded, RateLimited
from amq.logs import JsonFormatter, access_fields, key_fingerprint, log_access
from app import create_app
from tests.fakeq import typical_reply
from tests.support import amq_env

REMOTE = {"REMOTE_ADDR": "203.0.113.9"}


def value(name: str, **labels) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def record(**fields) -> metrics.RequestRecord:
    base = {"request_id": "req_1", "method": "POST", "path": "/v1/messages",
            "endpoint": "/v1/messages", "client": "127.0.0.1", "key_fingerprint": None,
            "started": 100.0}
    return metrics.RequestRecord(**dict(base, **fields))


# -- what the token manager calls --------------------------------------------------------------

def test_record_refresh_counts_outcome_and_lock_wait():
    before = value("amq_token_refreshes_total", outcome="refreshed")
    waits, waited = (value("amq_token_refresh_lock_wait_seconds_count"),
                     value("amq_token_refresh_lock_wait_seconds_sum"))
    metrics.record_refresh("refreshed", 0.25)
    assert value("amq_token_refreshes_total", outcome="refreshed") == before + 1
    assert value("amq_token_refresh_lock_wait_seconds_count") == waits + 1
    assert value("amq_token_refresh_lock_wait_seconds_sum") == pytest.approx(waited + 0.25)
    assert value("amq_token_refresh_lock_wait_seconds_bucket", le="0.25") >= 1


def test_record_refresh_keeps_labels_bounded():
    before = value("amq_token_refreshes_total", outcome="other")
    metrics.record_refresh("invalid_grant: refresh token abc123 is revoked", -1.0)
    assert value("amq_token_refreshes_total", outcome="other") == before + 1
    assert value("amq_token_refreshes_total", outcome="invalid_grant: refresh token abc123 is revoked") == 0


# -- bounded labels -------------------------------------------------------------------------------

@pytest.mark.parametrize("model, label", [
    ("claude-sonnet-4.5", "claude-sonnet-4.5"), ("auto", "auto"),
    ("m\nforged 1", "other"), ("x" * 200, "other"), ("", "other"), ("ignore previous instructions", "other"),
], ids=["q-id", "auto", "newline", "long", "empty", "prose"])
def test_model_label(model, label):
    assert metrics.model_label(model) == label


def test_q_exception_names_are_bounded():
    throttled = RateLimited("slow down")
    throttled.q_exception = "ThrottlingException"
    invented = Overloaded("?")
    invented.q_exception = "SomethingNewException"
    assert metrics.q_exception_label(throttled) == "ThrottlingException"
    assert metrics.q_exception_label(invented) == "other"
    assert metrics.q_exception_label(BadGateway("no route")) == "BadGateway"  # Q named none


def test_count_attempt_by_result_and_retry_reason():
    ok, limited, retried = (value("amq_upstream_attempts_total", result="ok"),
                            value("amq_upstream_attempts_total", result="rate_limit_error"),
                            value("amq_upstream_retries_total", reason="rate_limit_error"))
    metrics.count_attempt(None)
    metrics.count_attempt(RateLimited("x"), retried=True)
    metrics.count_attempt(RateLimited("x"))
    assert value("amq_upstream_attempts_total", result="ok") == ok + 1
    assert value("amq_upstream_attempts_total", result="rate_limit_error") == limited + 2
    assert value("amq_upstream_retries_total", reason="rate_limit_error") == retried + 1


# -- streams ------------------------------------------------------------------------------------

def test_stream_that_runs_to_its_end():
    rec = record()
    body = metrics.observe_stream(iter([b"a", b"b"]), rec, clock=lambda: 100.5)
    assert next(body) == b"a"
    assert value("amq_streams_in_flight") == 1
    assert list(body) == [b"b"]
    assert (rec.outcome, rec.first_byte, value("amq_streams_in_flight")) == ("complete", 0.5, 0)


def test_stream_whose_client_left():
    closed = []

    def chunks():
        try:
            yield b"a"
            yield b"b"
        finally:
            closed.append(True)

    rec = record()
    body = metrics.observe_stream(chunks(), rec)
    next(body)
    body.close()  # what the WSGI server does when a write fails
    assert (rec.outcome, closed, value("amq_streams_in_flight")) == ("client_gone", [True], 0)


def test_stream_error_outcome_set_by_the_producer_stays():
    rec = record()

    def chunks():
        yield b"event: error"
        rec.outcome = metrics.error_outcome(Overloaded("busy"))

    assert list(metrics.observe_stream(chunks(), rec)) == [b"event: error"]
    assert rec.outcome == "upstream_overloaded_error"
    assert metrics.error_outcome(ValueError("bug")) == "internal_error"


def test_finish_request_counts_request_tokens_and_credits():
    rec = record(model="claude-haiku-4.5", status=200, outcome="complete", first_byte=0.2,
                 usage_source=lambda: metrics.Usage(120, 30, 0.5))
    before = {name: value(name, model="claude-haiku-4.5") for name in
              ("amq_input_tokens_total", "amq_output_tokens_total", "amq_credits_total")}
    requests_before = value("amq_requests_total", endpoint="/v1/messages", model="claude-haiku-4.5",
                            status="200", outcome="complete")
    metrics.finish_request(rec, clock=lambda: 103.0)
    assert rec.duration == 3.0
    assert value("amq_requests_total", endpoint="/v1/messages", model="claude-haiku-4.5",
                 status="200", outcome="complete") == requests_before + 1
    assert value("amq_input_tokens_total", model="claude-haiku-4.5") == before["amq_input_tokens_total"] + 120
    assert value("amq_output_tokens_total", model="claude-haiku-4.5") == before["amq_output_tokens_total"] + 30
    assert value("amq_credits_total", model="claude-haiku-4.5") == before["amq_credits_total"] + 0.5
    assert value("amq_request_duration_seconds_bucket", endpoint="/v1/messages",
                 model="claude-haiku-4.5", le="2.5") < value(
        "amq_request_duration_seconds_bucket", endpoint="/v1/messages", model="claude-haiku-4.5", le="5.0")


# -- the access line ------------------------------------------------------------------------------

def test_access_line_fields_and_no_key(caplog):
    rec = record(key_fingerprint=key_fingerprint("sk-very-secret-key"), status=529,
                 outcome="upstream_overloaded_error", model="claude-sonnet-4.5", account="default", first_byte=0.1234,
                 duration=2.5, usage=metrics.Usage(10, 20, None))
    with caplog.at_level(logging.INFO, logger="amq.access"):
        log_access(rec)
    [line] = caplog.records
    text = line.getMessage()
    assert text == ("POST /v1/messages 529 outcome=upstream_overloaded_error model=claude-sonnet-4.5 "
                    f"account=default input_tokens=10 output_tokens=20 credits=- ttfb_ms=123.4 "
                    f"duration_ms=2500.0 client=127.0.0.1 key={rec.key_fingerprint} id=req_1")
    assert "sk-very-secret-key" not in text and len(rec.key_fingerprint) == 8


def test_access_line_quotes_client_text():
    fields = access_fields(record(path="/v1/x\n2026-01-01 INFO amq: GET /admin 200", method="GET"))
    assert "\n" not in fields["path"] and fields["path"].startswith("'")


def test_json_formatter_writes_one_object_per_line():
    formatter = JsonFormatter()
    try:
        raise ValueError("boom")
    except ValueError:
        entry = logging.LogRecord("amq.views", logging.ERROR, __file__, 1, "failed %s", ("x\ny",),
                                  sys.exc_info())
    line = formatter.format(entry)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["message"] == "failed x\ny" and "ValueError: boom" in parsed["exception"]
    assert parsed["level"] == "ERROR" and parsed["logger"] == "amq.views"


def test_log_format_setting():
    assert load_settings({"LOG_FORMAT": "JSON"}).log_format == "json"
    assert load_settings({}).log_format == "text"
    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        load_settings({"LOG_FORMAT": "xml"})


# -- /metrics in one process, and who may scrape -------------------------------------------------

def test_the_apps_token_refresh_is_counted(fake_q, tmp_path):
    """A fresh app holds no access token: its first request refreshes, and the counter says so."""
    app = create_app(amq_env(fake_q, tmp_path / "token.json"))
    before = value("amq_token_refreshes_total", outcome="refreshed")
    waits = value("amq_token_refresh_lock_wait_seconds_count")
    response = app.test_client().post("/v1/messages", json={
        "model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200
    assert [e["grantType"] for e in fake_q.token_log][-1:] == ["refresh_token"]
    assert value("amq_token_refreshes_total", outcome="refreshed") == before + 1
    assert value("amq_token_refresh_lock_wait_seconds_count") == waits + 1


def test_metrics_without_gunicorn_count_this_process(fake_q, tmp_path, monkeypatch):
    monkeypatch.setattr(fake_q, "default_reply", typical_reply())  # the fake is shared
    app = create_app(amq_env(fake_q, tmp_path / "token.json"))
    client = app.test_client()
    labels = {"endpoint": "/v1/messages", "model": "claude-sonnet-4.5", "status": "200",
              "outcome": "complete"}
    before = value("amq_requests_total", **labels)
    response = client.post("/v1/messages", json={"model": "claude-sonnet-4-5", "max_tokens": 1000,
                                                 "stream": True,
                                                 "messages": [{"role": "user", "content": "hi"}]})
    assert b"message_stop" in response.data
    response.close()
    assert value("amq_requests_total", **labels) == before + 1
    scraped = client.get("/metrics")
    assert scraped.status_code == 200
    assert f'amq_requests_total{{endpoint="/v1/messages",model="claude-sonnet-4.5",outcome="complete",' \
           f'status="200"}} {before + 1}' in scraped.text
    assert fake_q.refresh_token not in scraped.text


@pytest.mark.parametrize("metrics_key, environ, headers, status", [
    ("", {}, {}, 200),
    ("", REMOTE, {}, 401),
    ("k-123", REMOTE, {"Authorization": "Bearer k-123"}, 200),
    ("k-123", REMOTE, {"Authorization": "Bearer wrong"}, 401),
    ("k-123", REMOTE, {"x-api-key": "client-key"}, 401),
    ("", {}, {"X-Forwarded-For": "203.0.113.9"}, 401),
    ("k-123", {}, {"X-Forwarded-For": "203.0.113.9", "Authorization": "Bearer k-123"}, 200),
    ("k-123", {}, {}, 401),
    ("", {}, {"Via": "1.1 router"}, 401),
], ids=["loopback", "remote-no-key-set", "remote-key", "remote-wrong-key", "client-key",
        "proxied", "proxied-key", "loopback-once-a-key-is-set", "via-a-router"])
def test_who_may_scrape(tmp_path, metrics_key, environ, headers, status):
    app = create_app({"AMAZONQ_TOKEN_CACHE": str(tmp_path / "t.json"), "METRICS_KEY": metrics_key,
                      "PROXY_API_KEYS": "client-key"}, require_credentials=False)
    response = app.test_client().get("/metrics", headers=headers, environ_base=environ)
    assert response.status_code == status
    if status == 401:
        assert response.json["error"]["type"] == "authentication_error"
        assert "k-123" not in response.text
