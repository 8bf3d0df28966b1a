"""Q events -> Anthropic stream events, and the non-streaming fold of the same events."""
import json

from amq.errors import RateLimited
from amq.message import collect_message
from amq.sse import error_event
from amq.translate import StreamTranslator, new_id, translate


def run(events, **kwargs):
    """The flat event list for upstream events arriving one per read."""
    options = dict(model="claude-sonnet-4-5", input_tokens=42)
    options.update(kwargs)
    batches = translate(StreamTranslator(**options), ([event] for event in events))
    return [event for batch in batches for event in batch]


def kinds(out):
    return [e["type"] for e in out]


TEXT = [("messageMetadataEvent", {"conversationId": "c"}),
        ("assistantResponseEvent", {"content": "Hel"}),
        ("assistantResponseEvent", {"content": "lo"})]
TOOL = [("toolUseEvent", {"toolUseId": "tooluse_1", "name": "Bash"}),
        ("toolUseEvent", {"toolUseId": "tooluse_1", "name": "Bash", "input": "{\"comm"}),
        ("toolUseEvent", {"toolUseId": "tooluse_1", "name": "Bash", "input": "and\": \"ls\"}", "stop": True})]


def test_message_start_comes_first_with_empty_content_and_full_usage():
    translator = StreamTranslator(model="m", input_tokens=42)
    start, ping = translator.start()
    message = start["message"]
    assert start["type"] == "message_start" and ping == {"type": "ping"}
    assert message["content"] == [] and message["role"] == "assistant" and message["model"] == "m"
    assert message["usage"] == {"input_tokens": 42, "output_tokens": 1,
                                "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    assert message["id"].startswith("msg_")


def test_message_start_is_yielded_before_the_first_upstream_event_is_read():
    def upstream():
        raise AssertionError("read too early")
        yield  # pragma: no cover

    batches = translate(StreamTranslator(model="m", input_tokens=1), upstream())
    assert [event["type"] for event in next(batches)] == ["message_start", "ping"]


def test_text_turn():
    out = run(TEXT)
    assert kinds(out) == ["message_start", "ping", "content_block_start", "content_block_delta",
                          "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert out[2] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert [e["delta"]["text"] for e in out[3:5]] == ["Hel", "lo"]
    assert out[6]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert out[6]["usage"]["output_tokens"] >= 1


def test_tool_turn_streams_arguments_as_input_json_delta():
    out = run([("assistantResponseEvent", {"content": "Let me look."})] + TOOL)
    starts = [e for e in out if e["type"] == "content_block_start"]
    assert [s["index"] for s in starts] == [0, 1]
    assert starts[1]["content_block"] == {"type": "tool_use", "id": "tooluse_1", "name": "Bash", "input": {}}
    fragments = [e["delta"]["partial_json"] for e in out if e["type"] == "content_block_delta"
                 and e["delta"]["type"] == "input_json_delta"]
    assert json.loads("".join(fragments)) == {"command": "ls"}
    stops = [e["index"] for e in out if e["type"] == "content_block_stop"]
    assert stops == [0, 1]
    assert out[-2]["delta"]["stop_reason"] == "tool_use"
    assert out[-1] == {"type": "message_stop"}


def test_two_tool_calls_get_sequential_indices():
    second = [("toolUseEvent", {"toolUseId": "tooluse_2", "name": "Read"}),
              ("toolUseEvent", {"toolUseId": "tooluse_2", "name": "Read", "input": "{}", "stop": True})]
    out = run(TOOL + second)
    starts = [(e["index"], e["content_block"]["id"]) for e in out if e["type"] == "content_block_start"]
    assert starts == [(0, "tooluse_1"), (1, "tooluse_2")]


def test_tool_names_are_mapped_back_to_the_clients_names():
    out = run([("toolUseEvent", {"toolUseId": "t1", "name": "mcp__x_abc", "stop": True})],
              tool_names={"mcp__x_abc": "mcp__x.long.name"})
    (start,) = [e for e in out if e["type"] == "content_block_start"]
    assert start["content_block"]["name"] == "mcp__x.long.name"


def test_tool_input_sent_as_object_is_serialised():
    out = run([("toolUseEvent", {"toolUseId": "t1", "name": "Bash", "input": {"command": "ls"}, "stop": True})])
    (delta,) = [e for e in out if e["type"] == "content_block_delta"]
    assert json.loads(delta["delta"]["partial_json"]) == {"command": "ls"}


def test_repeated_stop_event_for_a_closed_tool_is_ignored():
    out = run(TOOL + [("toolUseEvent", {"toolUseId": "tooluse_1", "name": "Bash", "stop": True})])
    assert kinds(out).count("content_block_start") == 1


def test_unknown_events_are_skipped():
    out = run([("futureEvent", {"x": 1}), ("meteringEvent", {"usage": 0.01})] + TEXT)
    assert kinds(out).count("content_block_start") == 1


def test_every_started_block_is_stopped_before_the_next_starts():
    out = run(TEXT + TOOL + [("assistantResponseEvent", {"content": "done"})])
    open_index = None
    for event in out:
        if event["type"] == "content_block_start":
            assert open_index is None
            open_index = event["index"]
        elif event["type"] == "content_block_delta":
            assert event["index"] == open_index
        elif event["type"] == "content_block_stop":
            assert event["index"] == open_index
            open_index = None
    assert open_index is None


def test_reasoning_becomes_thinking_only_when_asked():
    reasoning = [("reasoningContentEvent", {"text": "Let me think"}),
                 ("reasoningContentEvent", {"signature": "sig123"})] + TEXT
    assert "thinking" not in json.dumps(run(reasoning))
    out = run(reasoning, thinking=True)
    assert out[2]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    deltas = [e["delta"] for e in out if e["type"] == "content_block_delta" and e["index"] == 0]
    assert deltas == [{"type": "thinking_delta", "thinking": "Let me think"},
                      {"type": "signature_delta", "signature": "sig123"}]


def test_q_token_usage_is_preferred_when_reported():
    out = run(TEXT + [("metadataEvent", {"tokenUsage": {"uncachedInputTokens": 100, "outputTokens": 7,
                                                        "cacheReadInputTokens": 20, "totalTokens": 127}})])
    assert out[-2]["usage"] == {"output_tokens": 7, "input_tokens": 120}


def test_error_event_shape():
    assert error_event(RateLimited("slow down"), "req_1") == (
        b'event: error\ndata: {"type":"error","error":{"type":"rate_limit_error","message":"slow down"},'
        b'"request_id":"req_1"}\n\n')


def test_collect_message_folds_the_same_events():
    message = collect_message(run([("assistantResponseEvent", {"content": "Let me look."})] + TOOL))
    assert message["content"] == [{"type": "text", "text": "Let me look."},
                                  {"type": "tool_use", "id": "tooluse_1", "name": "Bash",
                                   "input": {"command": "ls"}}]
    assert message["stop_reason"] == "tool_use" and message["type"] == "message"
    assert message["usage"]["input_tokens"] == 42 and message["usage"]["output_tokens"] >= 1


def test_ids_have_the_checked_shape():
    import re
    assert re.fullmatch(r"msg_[A-Za-z0-9_]{1,64}", new_id("msg_"))


def test_events_that_arrived_together_stay_together():
    batches = list(translate(StreamTranslator(model="m", input_tokens=1), [TEXT, None, TOOL]))
    kinds_per_batch = [[event["type"] for event in batch] for batch in batches]
    assert kinds_per_batch[0] == ["message_start", "ping"]
    assert kinds_per_batch[1] == ["content_block_start", "content_block_delta", "content_block_delta"]
    assert kinds_per_batch[2] == ["ping"]  # a silence upstream
    assert kinds_per_batch[3][0] == "content_block_stop" and kinds_per_batch[3][-1] == "content_block_stop"
    assert kinds_per_batch[4] == ["message_delta", "message_stop"]
