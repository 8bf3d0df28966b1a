"""Request conversion: literal Anthropic requests in, Q bodies out, checked against the strict
validator the fake Q uses."""
import base64

import pytest

from amq.convert import (
    CONTEXT_ACK,
    CONTINUE_PREFILL,
    EMPTY_USER,
    MAX_DESCRIPTION,
    MISSING_TOOL_RESULT,
    STUB_TOOL_DESCRIPTION,
    convert_request,
    q_tool_name,
    q_tool_use_id,
)
from amq.errors import InvalidRequest
from tests.fakeq import DEFAULT_MODELS, validate_request

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()


def convert(request, profile_arn: str = "", origin: str = "CLI"):
    """Convert and insist the result is something Q accepts."""
    result = convert_request(request, origin=origin)
    result.for_model("claude-sonnet-4.5", profile_arn)
    problem = validate_request(result.body, DEFAULT_MODELS)
    assert problem is None, problem
    return result


def state(result):
    return result.body["conversationState"]


def current(result):
    return state(result)["currentMessage"]["userInputMessage"]


def history(result):
    return state(result).get("history", [])


def tool_turn(tool_id="toolu_01A", name="Bash", text="Running it."):
    return {"role": "assistant", "content": [
        {"type": "text", "text": text},
        {"type": "tool_use", "id": tool_id, "name": name, "input": {"command": "echo hi"}}]}


BASH = {"name": "Bash", "description": "Run a command",
        "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}}


def test_single_user_message_becomes_current_message():
    result = convert({"model": "x", "messages": [{"role": "user", "content": "Hello"}]})
    assert current(result)["content"] == "Hello"
    assert current(result)["modelId"] == "claude-sonnet-4.5"
    assert current(result)["origin"] == "CLI"
    assert "history" not in state(result)
    assert state(result)["chatTriggerType"] == "MANUAL"


def test_each_request_gets_a_fresh_conversation_id():
    request = {"messages": [{"role": "user", "content": "Hi"}]}
    assert state(convert(request))["conversationId"] != state(convert(request))["conversationId"]


@pytest.mark.parametrize("system", ["Be brief.", [{"type": "text", "text": "Be"},
                                                   {"type": "text", "text": "brief.",
                                                    "cache_control": {"type": "ephemeral"}}]],
                         ids=["string", "blocks"])
def test_system_prompt_travels_as_a_leading_context_pair(system):
    result = convert({"system": system, "messages": [{"role": "user", "content": "Hi"}]})
    first, second = history(result)
    assert "Be" in first["userInputMessage"]["content"]
    assert "brief." in first["userInputMessage"]["content"]
    assert second["assistantResponseMessage"]["content"] == CONTEXT_ACK


def test_system_role_messages_are_kept_at_their_position():
    result = convert({"messages": [
        {"role": "user", "content": "Question"},
        {"role": "system", "content": [{"type": "text", "text": "cwd is /tmp"}]}]})
    assert current(result)["content"].startswith("Question")
    assert "cwd is /tmp" in current(result)["content"]


def test_consecutive_same_role_turns_merge_and_keep_every_block():
    result = convert({"messages": [
        {"role": "user", "content": "one"},
        {"role": "user", "content": [{"type": "text", "text": "two"}]},
        {"role": "assistant", "content": "three"},
        {"role": "assistant", "content": "four"},
        {"role": "user", "content": "five"}]})
    (user, assistant) = history(result)
    assert user["userInputMessage"]["content"] == "one\n\ntwo"
    assert assistant["assistantResponseMessage"]["content"] == "three\n\nfour"
    assert current(result)["content"] == "five"


def test_merged_user_turns_keep_all_tool_results():
    result = convert({"tools": [BASH], "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "a"}},
            {"type": "tool_use", "id": "toolu_2", "name": "Bash", "input": {"command": "b"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "A"}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_2", "content": "B"}]}]})
    results = current(result)["userInputMessageContext"]["toolResults"]
    assert [(r["toolUseId"], r["content"][0]["text"]) for r in results] == [("toolu_1", "A"), ("toolu_2", "B")]


def test_tool_round_trip_maps_uses_and_results():
    result = convert({"tools": [BASH], "messages": [
        {"role": "user", "content": "list files"},
        tool_turn(),
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01A", "is_error": True,
             "content": [{"type": "text", "text": "boom"}], "cache_control": {"type": "ephemeral"}}]}]})
    assistant = history(result)[1]["assistantResponseMessage"]
    assert assistant["content"] == "Running it."
    assert assistant["toolUses"] == [{"toolUseId": "toolu_01A", "name": "Bash",
                                      "input": {"command": "echo hi"}}]
    context = current(result)["userInputMessageContext"]
    assert context["toolResults"] == [{"toolUseId": "toolu_01A", "status": "error",
                                       "content": [{"text": "boom"}]}]
    spec = context["tools"][0]["toolSpecification"]
    assert spec["name"] == "Bash"
    assert spec["inputSchema"]["json"]["properties"]["command"] == {"type": "string"}
    assert current(result)["content"] == ""  # Q CLI sends empty content on result-only turns


def test_missing_tool_result_is_answered_with_an_error_result():
    result = convert({"tools": [BASH], "messages": [
        {"role": "user", "content": "go"}, tool_turn(), {"role": "user", "content": "never mind"}]})
    (missing,) = current(result)["userInputMessageContext"]["toolResults"]
    assert missing["toolUseId"] == "toolu_01A" and missing["status"] == "error"
    assert missing["content"][0]["text"] == MISSING_TOOL_RESULT
    assert current(result)["content"] == "never mind"


def test_orphan_tool_result_is_kept_as_text():
    result = convert({"messages": [
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_zz", "content": "stale output"},
            {"type": "text", "text": "continue"}]}]})
    assert "stale output" in current(result)["content"]
    assert "continue" in current(result)["content"]
    assert "userInputMessageContext" not in current(result)


def test_tool_result_with_image_moves_the_image_to_the_message():
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    result = convert({"tools": [BASH], "messages": [
        {"role": "user", "content": "shot"}, tool_turn(),
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01A",
                                      "content": [{"type": "text", "text": "see"}, image]}]}]})
    assert current(result)["images"] == [{"format": "png", "source": {"bytes": PNG}}]
    assert "see" in current(result)["userInputMessageContext"]["toolResults"][0]["content"][0]["text"]


def test_empty_tool_result_gets_non_empty_content():
    result = convert({"tools": [BASH], "messages": [
        {"role": "user", "content": "go"}, tool_turn(),
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01A", "content": []}]}]})
    content = current(result)["userInputMessageContext"]["toolResults"][0]["content"]
    assert content and content[0]["text"]


def test_history_tool_names_absent_from_tools_get_a_stub_specification():
    result = convert({"messages": [
        {"role": "user", "content": "go"}, tool_turn(name="Read"),
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01A", "content": "x"}]}]})
    (spec,) = current(result)["userInputMessageContext"]["tools"]
    assert spec["toolSpecification"]["name"] == "Read"
    assert spec["toolSpecification"]["description"] == STUB_TOOL_DESCRIPTION


def test_long_tool_names_are_shortened_reversibly():
    name = "mcp__some.server__" + "x" * 80
    result = convert({"tools": [dict(BASH, name=name)], "messages": [{"role": "user", "content": "hi"}]})
    q_name = current(result)["userInputMessageContext"]["tools"][0]["toolSpecification"]["name"]
    assert q_name == q_tool_name(name) and len(q_name) <= 64 and "." not in q_name
    assert result.tool_names[q_name] == name
    assert q_tool_name(name) == q_tool_name(name)  # stable across turns
    assert q_tool_name(name + "y") != q_name


def test_long_description_is_shortened_with_full_text_in_context():
    description = "word " * 3000
    result = convert({"tools": [dict(BASH, description=description)],
                      "messages": [{"role": "user", "content": "hi"}]})
    spec = current(result)["userInputMessageContext"]["tools"][0]["toolSpecification"]
    assert len(spec["description"]) <= MAX_DESCRIPTION
    assert description in history(result)[0]["userInputMessage"]["content"]


def test_missing_description_is_filled_in():
    result = convert({"tools": [{"name": "Ping", "input_schema": {"type": "object"}}],
                      "messages": [{"role": "user", "content": "hi"}]})
    assert current(result)["userInputMessageContext"]["tools"][0]["toolSpecification"]["description"]


def test_server_tools_are_left_out():
    result = convert({"tools": [BASH, {"type": "web_search_20250305", "name": "web_search", "max_uses": 8}],
                      "messages": [{"role": "user", "content": "hi"}]})
    names = [t["toolSpecification"]["name"] for t in current(result)["userInputMessageContext"]["tools"]]
    assert names == ["Bash"]


def test_invalid_tool_use_ids_are_mapped_consistently():
    result = convert({"tools": [BASH], "messages": [
        {"role": "user", "content": "go"}, tool_turn(tool_id="call:1/2"),
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call:1/2", "content": "ok"}]}]})
    use_id = history(result)[1]["assistantResponseMessage"]["toolUses"][0]["toolUseId"]
    assert use_id == q_tool_use_id("call:1/2") != "call:1/2"
    assert current(result)["userInputMessageContext"]["toolResults"][0]["toolUseId"] == use_id


@pytest.mark.parametrize("media_type,fmt", [("image/png", "png"), ("image/jpeg", "jpeg"),
                                            ("image/gif", "gif"), ("image/webp", "webp")])
def test_base64_images_map_to_q_formats(media_type, fmt):
    result = convert({"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": PNG}},
        {"type": "text", "text": "what is this"}]}]})
    assert current(result)["images"] == [{"format": fmt, "source": {"bytes": PNG}}]


def test_more_than_ten_images_keeps_the_last_ten_and_says_so():
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    result = convert({"messages": [{"role": "user", "content": [image] * 12 + [{"type": "text", "text": "hi"}]}]})
    assert len(current(result)["images"]) == 10
    assert "2 earlier image(s) omitted" in current(result)["content"]


def test_image_only_message_is_accepted():
    result = convert({"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}]}]})
    assert current(result)["content"] == EMPTY_USER and current(result)["images"]


def test_trailing_assistant_prefill_becomes_history_and_a_continue_request():
    result = convert({"messages": [{"role": "user", "content": "Write a haiku"},
                                   {"role": "assistant", "content": "Autumn"}]})
    assert history(result)[-1]["assistantResponseMessage"]["content"] == "Autumn"
    assert current(result)["content"] == CONTINUE_PREFILL


def test_leading_assistant_turn_gets_a_user_turn_before_it():
    result = convert({"messages": [{"role": "assistant", "content": "Hi, how can I help?"},
                                   {"role": "user", "content": "Tell me a joke"}]})
    assert "userInputMessage" in history(result)[0]
    assert history(result)[1]["assistantResponseMessage"]["content"] == "Hi, how can I help?"


def test_thinking_blocks_in_history_are_not_sent():
    result = convert({"messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "sig"},
                                          {"type": "text", "text": "Hello"}]},
        {"role": "user", "content": "again"}]})
    assert history(result)[1]["assistantResponseMessage"] == {"content": "Hello"}


def test_text_documents_are_inlined():
    result = convert({"messages": [{"role": "user", "content": [
        {"type": "document", "title": "notes", "source": {"type": "text", "media_type": "text/plain",
                                                          "data": "alpha beta"}},
        {"type": "text", "text": "summarise"}]}]})
    assert "alpha beta" in current(result)["content"] and "notes" in current(result)["content"]


def test_tool_choice_is_carried_in_the_prompt():
    result = convert({"tools": [BASH], "tool_choice": {"type": "tool", "name": "Bash"},
                      "messages": [{"role": "user", "content": "hi"}]})
    assert "must call the tool `Bash`" in history(result)[0]["userInputMessage"]["content"]


def test_unknown_request_fields_are_ignored():
    result = convert({"model": "claude-opus-5-5", "max_tokens": 128000, "stream": True,
                      "thinking": {"type": "adaptive", "display": "omitted"},
                      "output_config": {"effort": "high"}, "metadata": {"user_id": "u"},
                      "context_management": {"edits": []}, "cache_control": {"type": "ephemeral"},
                      "tools": [dict(BASH, defer_loading=True, cache_control={"type": "ephemeral"})],
                      "messages": [{"role": "user", "content": [
                          {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}]})
    assert current(result)["content"] == "hi"


def test_profile_arn_is_sent_when_configured():
    arn = "arn:aws:codewhisperer:us-east-1:123456789012:profile/ABCDEFGHIJKL"
    result = convert({"messages": [{"role": "user", "content": "hi"}]}, profile_arn=arn)
    assert result.body["profileArn"] == arn


@pytest.mark.parametrize("request_body,field", [
    ({}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": [{"type": "hologram"}]}]}, "messages.0.content.0.type"),
    ({"messages": [{"role": "user", "content": [{"text": "no type"}]}]}, "messages.0.content.0"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]}, "messages.0.content.0.text"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "b", "input": {}}]}]},
     "messages.0.content.0.type"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "media_type": "image/tiff", "data": PNG}}]}]}, "messages.0.content.0.source.media_type"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": "@@@"}}]}]}, "messages.0.content.0.source.data"),
    ({"messages": [{"role": "user", "content": "hi"}], "system": 5}, "system"),
    ({"messages": [{"role": "user", "content": "hi"}], "tools": [{"description": "x"}]}, "tools.0.name"),
    ({"messages": [{"role": "user", "content": "hi"}], "tools": [BASH, BASH]}, "tools.1.name"),
], ids=["no-messages", "empty", "string", "bad-role", "bad-content", "unknown-block", "untyped-block",
        "text-not-string", "tool-use-in-user", "tiff", "bad-base64", "system-number", "tool-no-name",
        "duplicate-tool"])
def test_malformed_requests_name_the_field(request_body, field):
    with pytest.raises(InvalidRequest) as info:
        convert_request(request_body, origin="CLI")
    assert info.value.message.startswith(field), info.value.message


def test_blocks_claude_code_keeps_in_history_stay_text():
    """Once in history they come with every turn: refusing them would end the session."""
    result = convert({"tools": [BASH], "messages": [
        {"role": "user", "content": "find a tool"},
        {"role": "assistant", "content": [
            {"type": "mcp_tool_use", "id": "mcptoolu_1", "name": "search", "server_name": "s", "input": {"q": "x"}},
            {"type": "mcp_tool_result", "tool_use_id": "mcptoolu_1", "content": [{"type": "text", "text": "r"}]},
            {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                      "content": [{"type": "tool_reference", "tool_name": "Grep"}]}]}]})
    assistant = history(result)[1]["assistantResponseMessage"]["content"]
    assert "mcp_tool_use" in assistant and "mcp_tool_result" in assistant
    result_text = current(result)["userInputMessageContext"]["toolResults"][0]["content"][0]["text"]
    assert "Grep" in result_text


def test_non_string_tool_type_is_skipped_not_a_crash():
    result = convert({"tools": [BASH, {"type": ["odd"], "name": "x"}],
                      "messages": [{"role": "user", "content": "hi"}]})
    assert result.skipped_tools == ["['odd']"]


def test_huge_tool_names_are_not_kept_once_converted():
    """Q names are cached for the worker's life: a client's 1 MB names must not pile up there."""
    import tracemalloc

    from amq.convert import q_tool_name

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        q_names = {q_tool_name(f"{k}" * 1_000_000) for k in range(5)}
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(q_names) == 5 and all(len(q) <= 64 for q in q_names)
    assert q_tool_name("1" * 1_000_000) in q_names  # the same name maps the same way
    assert kept < 100_000, kept  # not the 5 MB of names
