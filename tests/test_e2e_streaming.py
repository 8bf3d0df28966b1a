"""End to end: the anthropic SDK -> amq under gunicorn+gevent -> the strict fake Q."""
import json

import anthropic
import pytest
import requests

from tests.claude_code_requests import sized_request
from tests.eventstream_encode import encode_event, encode_exception
from tests.fakeq import events_reply, http_error, raw_reply, text_reply, tool_reply
from tests.support import sse_events

BASH = {"name": "Bash", "description": "Run a shell command",
        "input_schema": {"type": "object", "properties": {"command": {"type": "string"}},
                         "required": ["command"]}}


def post_stream(amq_server, body):
    return requests.post(amq_server.url + "/v1/messages?beta=true", json=dict(body, stream=True),
                         headers={"x-api-key": "sk-test", "anthropic-version": "2023-06-01"}, timeout=30)


def test_text_turn(anthropic_client, fake_q):
    fake_q.enqueue(text_reply("The answer is 42.", chunks=5))
    with anthropic_client.messages.stream(model="claude-sonnet-4-5-20250929", max_tokens=100,
                                          messages=[{"role": "user", "content": "What is it?"}]) as stream:
        message = stream.get_final_message()
    assert message.content[0].type == "text" and message.content[0].text == "The answer is 42."
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens >= 1 and message.usage.input_tokens >= 1
    sent = fake_q.requests[-1]
    assert sent["target"] == "AmazonCodeWhispererStreamingService.GenerateAssistantResponse"
    current = sent["body"]["conversationState"]["currentMessage"]["userInputMessage"]
    assert current["content"] == "What is it?" and current["modelId"] == "claude-sonnet-4.5"
    assert sent["headers"]["authorization"].startswith("Bearer ")


def test_tool_call_turn(anthropic_client, fake_q):
    fake_q.enqueue(tool_reply("Bash", {"command": "ls -la /tmp"}, text="Let me look.", fragments=4))
    with anthropic_client.messages.stream(model="claude-sonnet-4-5", max_tokens=100, tools=[BASH],
                                          messages=[{"role": "user", "content": "List /tmp"}]) as stream:
        message = stream.get_final_message()
    assert [block.type for block in message.content] == ["text", "tool_use"]
    assert message.content[1].name == "Bash"
    assert message.content[1].input == {"command": "ls -la /tmp"}
    assert message.stop_reason == "tool_use"


def test_tool_result_turn_reaches_q_as_tool_results(anthropic_client, fake_q):
    fake_q.enqueue(text_reply("Two files."))
    with anthropic_client.messages.stream(model="claude-sonnet-4-5", max_tokens=100, tools=[BASH], messages=[
        {"role": "user", "content": "List /tmp"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01A", "name": "Bash",
                                           "input": {"command": "ls"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01A",
                                      "content": "a.txt\nb.txt", "is_error": False}]},
    ]) as stream:
        message = stream.get_final_message()
    assert message.content[0].text == "Two files."
    state = fake_q.requests[-1]["body"]["conversationState"]
    results = state["currentMessage"]["userInputMessage"]["userInputMessageContext"]["toolResults"]
    assert results == [{"toolUseId": "toolu_01A", "status": "success", "content": [{"text": "a.txt\nb.txt"}]}]
    assert state["history"][-1]["assistantResponseMessage"]["toolUses"][0]["input"] == {"command": "ls"}


def test_claude_code_shaped_request_is_accepted_by_strict_q(amq_server, fake_q):
    """The shape Claude Code 2.1.x sends: system blocks, role:system messages, betas, thinking."""
    fake_q.enqueue(text_reply("ok"))
    body = {
        "model": "claude-opus-5-5", "max_tokens": 128000,
        "thinking": {"type": "adaptive", "display": "omitted"}, "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "metadata": {"user_id": json.dumps({"device_id": "d", "session_id": "s"})},
        "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1"},
                   {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
        "tools": [BASH, dict(BASH, name="ToolSearch", defer_loading=True),
                  {"type": "web_search_20250305", "name": "web_search", "max_uses": 8}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
                                         {"type": "text", "text": "run it"}]},
            {"role": "system", "content": "Environment: linux", "output_config": {"effort": "high"}},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "ok", "signature": "EqQB"},
                {"type": "tool_use", "id": "toolu_01X", "name": "Bash", "input": {"command": "echo hi"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01X", "content": "hi",
                                          "is_error": False, "cache_control": {"type": "ephemeral"}}]},
            {"role": "system", "content": [{"type": "text", "text": "mid-conversation note",
                                            "cache_control": {"type": "ephemeral"}}]},
        ]}
    response = post_stream(amq_server, body)
    events = sse_events(response)
    assert response.status_code == 200 and fake_q.rejections == []
    assert events[-1][0] == "message_stop"
    current = fake_q.requests[-1]["body"]["conversationState"]["currentMessage"]["userInputMessage"]
    assert "mid-conversation note" in current["content"]
    assert current["modelId"] == "claude-opus-4.7"  # not offered: the best opus the account has
    sent_text = json.dumps(fake_q.requests[-1]["body"])
    assert "You are Claude Code." in sent_text and "Environment: linux" in sent_text


def test_large_request_reports_the_same_estimate_as_count_tokens(amq_server, fake_q):
    """The estimate of a long conversation is made while Q is called (a greenlet in the gevent
    worker); message_start still carries exactly what count_tokens says."""
    request = sized_request("150k", 3)
    fake_q.enqueue(text_reply("ok"))
    events = sse_events(post_stream(amq_server, request))
    counted = requests.post(amq_server.url + "/v1/messages/count_tokens", json=request, timeout=30,
                            headers={"x-api-key": "sk-test", "anthropic-version": "2023-06-01"})
    assert events[0][0] == "message_start" and events[-1][0] == "message_stop"
    assert counted.json()["input_tokens"] > 10_000
    assert events[0][1]["message"]["usage"]["input_tokens"] == counted.json()["input_tokens"]


def test_sse_wire_format_and_headers(amq_server, fake_q):
    fake_q.enqueue(text_reply("Hi"))
    response = post_stream(amq_server, {"model": "claude-haiku-4-5", "max_tokens": 10,
                                        "messages": [{"role": "user", "content": "hi"}]})
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["request-id"].startswith("req_")
    names = [name for name, _ in sse_events(response)]
    assert names[:2] == ["message_start", "ping"] and names[-2:] == ["message_delta", "message_stop"]
    for name, data in sse_events(response):
        assert data["type"] == name


def test_expired_access_token_is_refreshed_once_and_the_call_retried(anthropic_client, fake_q):
    fake_q.expire_access_tokens()
    fake_q.enqueue(text_reply("after refresh"))
    message = anthropic_client.messages.stream(
        model="claude-sonnet-4-5", max_tokens=10,
        messages=[{"role": "user", "content": "hi"}]).__enter__().get_final_message()
    assert message.content[0].text == "after refresh"
    assert len(fake_q.token_requests) == 1


def test_upstream_validation_error_is_an_ordinary_http_error(anthropic_client, fake_q):
    fake_q.enqueue(http_error(400, "ValidationException", "Improperly formed request."))
    with pytest.raises(anthropic.BadRequestError) as info, anthropic_client.messages.stream(
            model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]) as stream:
        stream.get_final_message()
    assert info.value.status_code == 400
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert "Improperly formed request." in info.value.body["error"]["message"]


def test_context_too_long_says_prompt_is_too_long(amq_server, fake_q):
    fake_q.enqueue(http_error(400, "ValidationException", "Input is too long.",
                              reason="CONTENT_LENGTH_EXCEEDS_THRESHOLD"))
    response = post_stream(amq_server, {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("prompt is too long")


def test_real_q_size_limit_is_met_by_the_strict_fake(amq_server, fake_q):
    response = post_stream(amq_server, {"model": "m", "max_tokens": 5,
                                        "messages": [{"role": "user", "content": "x" * 600_001}]})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("prompt is too long")


@pytest.mark.parametrize("frame,error_type", [
    (encode_exception("error", "Encountered an unexpected error when processing the request"), "api_error"),
    (encode_exception("ThrottlingException", "slow down"), "rate_limit_error"),
], ids=["exception-frame", "throttling-frame"])
def test_error_frame_mid_stream_ends_with_error_event_not_message_stop(amq_server, fake_q, frame, error_type):
    fake_q.enqueue(raw_reply([encode_event("assistantResponseEvent", {"content": "partial"}), frame]))
    events = sse_events(post_stream(amq_server, {"model": "m", "max_tokens": 5,
                                                 "messages": [{"role": "user", "content": "hi"}]}))
    names = [name for name, _ in events]
    assert names[-1] == "error" and "message_stop" not in names
    assert events[-1][1]["error"]["type"] == error_type


def test_corrupt_frame_ends_with_error_event(amq_server, fake_q):
    frame = bytearray(encode_event("assistantResponseEvent", {"content": "garbled"}))
    frame[-6] ^= 0xFF  # payload byte: message CRC no longer matches
    fake_q.enqueue(raw_reply([encode_event("assistantResponseEvent", {"content": "ok "}), bytes(frame)]))
    events = sse_events(post_stream(amq_server, {"model": "m", "max_tokens": 5,
                                                 "messages": [{"role": "user", "content": "hi"}]}))
    assert events[-1][0] == "error" and "corrupt" in events[-1][1]["error"]["message"]
    assert "message_stop" not in [name for name, _ in events]


def test_cut_connection_ends_with_error_event(amq_server, fake_q):
    fake_q.enqueue(text_reply("this answer will be cut short", chunks=6, cut_after=200))
    events = sse_events(post_stream(amq_server, {"model": "m", "max_tokens": 5,
                                                 "messages": [{"role": "user", "content": "hi"}]}))
    assert events[-1][0] == "error" and "message_stop" not in [name for name, _ in events]


def test_sdk_raises_on_in_stream_error(anthropic_client, fake_q):
    fake_q.enqueue(raw_reply([encode_exception("error", "boom")]))
    with pytest.raises(anthropic.APIStatusError), anthropic_client.messages.stream(model="m", max_tokens=5,
                                          messages=[{"role": "user", "content": "hi"}]) as stream:
        stream.get_final_message()


def test_unknown_events_are_skipped_end_to_end(anthropic_client, fake_q):
    fake_q.enqueue(events_reply([("meteringEvent", {"usage": 0.01, "unit": "credit"}),
                                 ("assistantResponseEvent", {"content": "fine"}),
                                 ("contextUsageEvent", {"contextUsagePercentage": 12})]))
    with anthropic_client.messages.stream(model="m", max_tokens=5,
                                          messages=[{"role": "user", "content": "hi"}]) as stream:
        assert stream.get_final_message().content[0].text == "fine"


@pytest.mark.parametrize("body,fragment", [
    (b"{not json", "not valid JSON"),
    (b"[]", "JSON object"),
    (b'{"model": "m"}', "messages"),
    (b'{"model": "m", "messages": "hi"}', "messages"),
    (b'{"model": "m", "messages": [{"role": "bot", "content": "x"}]}', "messages.0.role"),
], ids=["invalid-json", "array", "no-messages", "messages-string", "unknown-role"])
def test_bad_requests_get_400_invalid_request_error(amq_server, fake_q, body, fragment):
    response = requests.post(amq_server.url + "/v1/messages", data=body,
                             headers={"content-type": "application/json"}, timeout=10)
    assert response.status_code == 400
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert fragment in error["error"]["message"]
    assert error["request_id"] == response.headers["request-id"]
    assert fake_q.requests == []


@pytest.mark.parametrize("method,path,status,error_type", [
    ("GET", "/nope", 404, "not_found_error"),
    ("GET", "/v1/messages", 405, "invalid_request_error"),
    ("POST", "/api/event_logging/batch", 404, "not_found_error"),
])
def test_unknown_paths_and_methods_get_anthropic_error_json(amq_server, method, path, status, error_type):
    response = requests.request(method, amq_server.url + path, timeout=10)
    assert response.status_code == status
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == error_type


def test_health_shows_token_state_without_secrets(amq_server, fake_q, anthropic_client):
    anthropic_client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    response = requests.get(amq_server.url + "/health", timeout=10)
    assert response.json() == {"status": "ok", "has_token": True, "token_expired": False}
    for secret in (fake_q.refresh_token, fake_q.client_secret, "aoa"):  # access tokens start "aoa"
        assert secret not in response.text


def test_secrets_never_reach_the_log(amq_server, fake_q, anthropic_client):
    fake_q.expire_access_tokens()  # forces a refresh, the most secret-laden moment
    anthropic_client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    log = amq_server.log()
    assert "POST /v1/messages 200" in log
    for secret in (fake_q.refresh_token, fake_q.client_secret, "sk-test"):
        assert secret not in log
