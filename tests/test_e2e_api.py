"""The whole Messages API through amq with the anthropic SDK: both response modes agree,
count_tokens, models, stop sequences, max_tokens, thinking, errors."""
import time

import anthropic
import pytest
import requests

from tests.eventstream_encode import encode_event, encode_exception
from tests.fakeq import events_reply, http_error, raw_reply, text_reply, tool_reply

BASH = {"name": "Bash", "description": "Run a shell command",
        "input_schema": {"type": "object", "properties": {"command": {"type": "string"}},
                         "required": ["command"]}}
HI = [{"role": "user", "content": "hi"}]
THINKING = [("reasoningContentEvent", {"text": "Let me think."}),
            ("reasoningContentEvent", {"signature": "sig-abc"}),
            ("assistantResponseEvent", {"content": "Done thinking."})]


def both_modes(client, fake_q, reply, **params):
    """The same scripted answer through create() and through stream()."""
    fake_q.enqueue(reply, reply)
    created = client.messages.create(**params)
    with client.messages.stream(**params) as stream:
        streamed = stream.get_final_message()
    return created, streamed


def comparable(message):
    data = message.model_dump()
    data.pop("id")
    return data


@pytest.mark.parametrize("reply,params", [
    (text_reply("Plain text answer.", chunks=4), {}),
    (tool_reply("Bash", {"command": "ls"}, text="Looking."), {"tools": [BASH]}),
    (events_reply(THINKING), {"thinking": {"type": "enabled", "budget_tokens": 2048}}),
    (text_reply("one two STOP three", chunks=5), {"stop_sequences": ["STOP"]}),
], ids=["text", "tool", "thinking", "stop-sequence"])
def test_create_and_stream_agree(anthropic_client, fake_q, reply, params):
    created, streamed = both_modes(anthropic_client, fake_q, reply, model="claude-sonnet-4-5",
                                   max_tokens=1000, messages=HI, **params)
    assert comparable(created) == comparable(streamed)
    assert created.id.startswith("msg_") and created.content


def test_full_tool_loop(anthropic_client, fake_q):
    fake_q.enqueue(tool_reply("Bash", {"command": "echo loop"}), text_reply("It printed loop."))
    messages = [{"role": "user", "content": "Run echo loop"}]
    first = anthropic_client.messages.create(model="claude-haiku-4-5", max_tokens=500, tools=[BASH],
                                             messages=messages)
    assert first.stop_reason == "tool_use"
    tool_use = first.content[-1]
    messages += [{"role": "assistant", "content": [block.model_dump() for block in first.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id,
                                               "content": "loop\n"}]}]
    second = anthropic_client.messages.create(model="claude-haiku-4-5", max_tokens=500, tools=[BASH],
                                              messages=messages)
    assert second.content[0].text == "It printed loop." and second.stop_reason == "end_turn"
    current = fake_q.requests[-1]["body"]["conversationState"]["currentMessage"]["userInputMessage"]
    (result,) = current["userInputMessageContext"]["toolResults"]
    assert result["toolUseId"] == tool_use.id and result["content"] == [{"text": "loop\n"}]
    assert fake_q.rejections == []


def test_thinking_blocks_only_when_asked(anthropic_client, fake_q):
    fake_q.enqueue(events_reply(THINKING), events_reply(THINKING))
    plain = anthropic_client.messages.create(model="m", max_tokens=100, messages=HI)
    thinking = anthropic_client.messages.create(model="m", max_tokens=4000, messages=HI,
                                                thinking={"type": "enabled", "budget_tokens": 2048})
    assert [b.type for b in plain.content] == ["text"]
    assert [b.type for b in thinking.content] == ["thinking", "text"]
    assert thinking.content[0].thinking == "Let me think." and thinking.content[0].signature == "sig-abc"


def test_stop_sequence_stops_forwarding_and_closes_upstream(anthropic_client, fake_q):
    fake_q.enqueue(text_reply("alpha beta END gamma " + "delta " * 40, chunks=30, delay=0.05))
    closed_before = fake_q.closed_early
    with anthropic_client.messages.stream(model="m", max_tokens=100, messages=HI,
                                          stop_sequences=["nope", "END"]) as stream:
        message = stream.get_final_message()
    assert message.content[0].text == "alpha beta "
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "END"
    deadline = time.monotonic() + 5
    while fake_q.closed_early == closed_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake_q.closed_early > closed_before  # amq hung up instead of reading the rest


def test_stop_sequence_split_across_events(anthropic_client, fake_q):
    fake_q.enqueue(events_reply([("assistantResponseEvent", {"content": "abc ST"}),
                                 ("assistantResponseEvent", {"content": "OP def"})]))
    message = anthropic_client.messages.create(model="m", max_tokens=100, messages=HI, stop_sequences=["STOP"])
    assert message.content[0].text == "abc " and message.stop_sequence == "STOP"


def test_max_tokens_limits_text(anthropic_client, fake_q):
    fake_q.enqueue(text_reply("word " * 200, chunks=20))
    message = anthropic_client.messages.create(model="m", max_tokens=5, messages=HI)
    assert message.stop_reason == "max_tokens"
    assert 0 < len(message.content[0].text) <= 5 * 4


def test_usage_prefers_q_figures(anthropic_client, fake_q):
    fake_q.enqueue(events_reply([("assistantResponseEvent", {"content": "hi"}),
                                 ("metadataEvent", {"tokenUsage": {"uncachedInputTokens": 1234,
                                                                   "outputTokens": 56, "totalTokens": 1290}})]))
    message = anthropic_client.messages.create(model="m", max_tokens=100, messages=HI)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (1234, 56)


def test_context_usage_percentage_gives_input_tokens(anthropic_client, fake_q):
    fake_q.enqueue(events_reply([("assistantResponseEvent", {"content": "hi"}),
                                 ("contextUsageEvent", {"contextUsagePercentage": 10})]))
    message = anthropic_client.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=HI)
    assert message.usage.input_tokens == 20_000  # 10% of the fake's 200k window


def test_count_tokens(anthropic_client):
    small = anthropic_client.messages.count_tokens(model="claude-sonnet-4-5", messages=HI)
    large = anthropic_client.messages.count_tokens(
        model="claude-sonnet-4-5", system="You are terse. " * 50, tools=[BASH],
        messages=[{"role": "user", "content": "hello " * 400}])
    assert 0 < small.input_tokens < large.input_tokens
    assert 400 < large.input_tokens < 2000


def test_count_tokens_rejects_bad_input(amq_server):
    response = requests.post(amq_server.url + "/v1/messages/count_tokens?beta=true",
                             json={"model": "m", "messages": [{"role": "robot", "content": "x"}]}, timeout=10)
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"


def test_models_list_and_retrieve(anthropic_client, fake_q):
    page = anthropic_client.models.list(limit=1000)
    ids = [model.id for model in page.data]
    assert "claude-sonnet-4-5-20250929" in ids and "claude-opus-4-7" in ids
    assert not any(i == "auto" for i in ids)
    assert page.has_more is False and page.first_id == ids[0] and page.last_id == ids[-1]
    created = [model.created_at for model in page.data]
    assert created == sorted(created, reverse=True)
    model = anthropic_client.models.retrieve("claude-opus-4-7")
    assert model.display_name == "Claude Opus 4.7" and model.type == "model"
    with pytest.raises(anthropic.NotFoundError):
        anthropic_client.models.retrieve("gpt-4o")


def test_models_pagination(amq_server):
    first = requests.get(amq_server.url + "/v1/models?limit=2", timeout=10).json()
    assert len(first["data"]) == 2 and first["has_more"] is True
    second = requests.get(amq_server.url + f"/v1/models?limit=2&after_id={first['last_id']}", timeout=10).json()
    assert second["data"][0]["id"] not in [m["id"] for m in first["data"]]


def test_api_hello_answers_head(amq_server):
    assert requests.head(amq_server.url + "/api/hello", timeout=10).status_code == 200


@pytest.mark.parametrize("headers", [
    {"x-api-key": "k", "anthropic-version": "2023-06-01"},
    {"authorization": "Bearer k", "anthropic-version": "2026-10-21", "anthropic-beta": "made-up-beta-2030-01-01"},
], ids=["x-api-key-2023", "bearer-2026"])
def test_both_auth_styles_and_api_versions(amq_server, fake_q, headers):
    response = requests.post(amq_server.url + "/v1/messages", headers=headers, timeout=10,
                             json={"model": "m", "max_tokens": 5, "messages": HI})
    assert response.status_code == 200 and response.json()["type"] == "message"


def test_non_streaming_upstream_error_keeps_its_status(anthropic_client, fake_q):
    fake_q.enqueue(http_error(429, "ThrottlingException", "Maximum requests reached for this month.",
                              reason="MONTHLY_REQUEST_COUNT"))
    with pytest.raises(anthropic.RateLimitError) as info:
        anthropic_client.messages.create(model="m", max_tokens=5, messages=HI)
    assert info.value.response.headers["x-should-retry"] == "false"


def test_non_streaming_mid_answer_fault_is_an_error_status(anthropic_client, fake_q):
    fake_q.enqueue(raw_reply([encode_event("assistantResponseEvent", {"content": "par"}),
                              encode_exception("error", "Encountered an unexpected error")]))
    with pytest.raises(anthropic.InternalServerError) as info:
        anthropic_client.messages.create(model="m", max_tokens=5, messages=HI)
    assert info.value.body["error"]["type"] == "api_error"
