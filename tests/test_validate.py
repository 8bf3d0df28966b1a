"""The one validation step of /v1/messages and count_tokens, tested with literal inputs."""
import pytest

from amq.errors import InvalidRequest
from amq.validate import validate_request

HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("extra, field", [
    ({"model": 5}, "model"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"stream": "yes"}, "stream"),
    ({"stop_sequences": ["a", 1]}, "stop_sequences"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "bogus"}]}]}, "messages.0.content.0.type"),
])
def test_each_offending_field_is_named(extra, field):
    with pytest.raises(InvalidRequest, match=f"^{field}"):
        validate_request({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": HI, **extra}, origin="CLI")


def test_a_valid_request_carries_what_the_proxy_acts_on():
    request = validate_request({"model": "m", "max_tokens": 5, "stream": True, "stop_sequences": ["x"],
                                "thinking": {"type": "enabled", "budget_tokens": 1024}, "messages": HI},
                               origin="KIRO_CLI")
    assert (request.model, request.max_tokens, request.stream, request.thinking,
            request.stop_sequences) == ("m", 5, True, True, ["x"])
    current = request.conversion.body["conversationState"]["currentMessage"]["userInputMessage"]
    assert current["origin"] == "KIRO_CLI" and "modelId" not in current  # no model chosen yet
    body = request.conversion.for_model("claude-sonnet-4.5", "arn:aws:codewhisperer:us-east-1:1:profile/x")
    assert current["modelId"] == "claude-sonnet-4.5" and body["profileArn"].startswith("arn:")
