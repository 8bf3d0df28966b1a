"""Translates Q events into Anthropic Messages stream events: one small state machine.

The same event list serves both response modes: streamed as SSE, or folded into one Message.
"""
from __future__ import annotations

import json
import secrets
import string
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .tokencount import CHARS_PER_TOKEN, estimate_tokens

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    """`msg_...`/`toolu_...` ids of the shape Claude Code checks (base62)."""
    # One random read per id (secrets.choice per character costs a syscall each).
    number = int.from_bytes(secrets.token_bytes(18), "big")
    chars = []
    for _ in range(24):
        number, digit = divmod(number, 62)
        chars.append(_ALPHABET[digit])
    return prefix + "".join(chars)


@dataclass
class Usage:
    """What an answer cost: tokens, and credits when Q reported them."""

    input_tokens: int
    output_tokens: int
    credits: float | None = None


class StreamTranslator:
    """Feed Q events in order; each call returns the Anthropic events to send now."""

    def __init__(self, *, model: str, input_tokens: int, tool_names: dict[str, str] | None = None,
                 thinking: bool = False, message_id: str | None = None,
                 stop_sequences: list[str] | None = None, max_tokens: int | None = None,
                 context_window: int = 200_000):
        self.model = model
        self.message_id = message_id or new_id("msg_")
        self.tool_names = tool_names or {}
        self.thinking = thinking
        self.input_tokens = input_tokens
        self._index = -1
        self._open: str | None = None  # "text" | "tool_use" | "thinking"
        self._tool_id: str | None = None
        self._closed_tools: set[str] = set()
        self._signature = ""
        self._saw_tool_use = False
        self._output_chars = 0
        self._usage_from_q: dict = {}
        self._credits: float | None = None
        self.context_window = context_window
        self._context_input: int | None = None
        # Q knows neither stop sequences nor max_tokens; the proxy applies both to text.
        self.stop_sequences = [s for s in stop_sequences or [] if s]
        self._hold = max(map(len, self.stop_sequences), default=1) - 1
        self._held = ""  # text not yet sent: it may be the start of a stop sequence
        self._char_budget = max_tokens * CHARS_PER_TOKEN if max_tokens else None
        self._stop_reason: str | None = None
        self._stop_sequence: str | None = None
        self.done = False  # no more upstream events are wanted

    def start(self) -> list[dict]:
        """message_start (empty content, full usage) and a ping, before Q's first event."""
        return [{"type": "message_start", "message": {
            "id": self.message_id, "type": "message", "role": "assistant", "model": self.model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 1,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}},
            {"type": "ping"}]

    def feed(self, event_type: str, payload: dict) -> list[dict]:
        handler = self._HANDLERS.get(event_type)
        return handler(self, payload) if handler else []  # unknown events are skipped

    def finish(self) -> list[dict]:
        """Close the open block and end the message with its stop reason and usage."""
        events = self._close()
        usage = {"output_tokens": self.output_tokens()}
        input_tokens = self._usage_from_q.get("input_tokens", self._context_input)
        if input_tokens is not None:
            usage["input_tokens"] = input_tokens
        stop_reason = self._stop_reason or ("tool_use" if self._saw_tool_use else "end_turn")
        events.append({"type": "message_delta",
                       "delta": {"stop_reason": stop_reason, "stop_sequence": self._stop_sequence},
                       "usage": usage})
        events.append({"type": "message_stop"})
        return events

    def usage(self) -> Usage:
        """The answer's tokens (Q's figures when it sent them) and credits, for the metrics."""
        input_tokens = self._usage_from_q.get("input_tokens", self._context_input)
        return Usage(input_tokens if input_tokens is not None else self.input_tokens,
                     self.output_tokens(), self._credits)

    def output_tokens(self) -> int:
        reported = self._usage_from_q.get("output_tokens")
        return reported if reported is not None else max(1, estimate_tokens(self._output_chars))

    # -- blocks ------------------------------------------------------------------------------

    def _close(self) -> list[dict]:
        if self._open is None:
            return []
        events = []
        if self._open == "text" and self._held:
            events += self._emit_text(self._held)
            self._held = ""
        if self._open == "thinking" and self._signature:
            events.append(self._delta({"type": "signature_delta", "signature": self._signature}))
            self._signature = ""
        if self._open == "tool_use":
            self._closed_tools.add(self._tool_id)
            self._tool_id = None
        events.append({"type": "content_block_stop", "index": self._index})
        self._open = None
        return events

    def _begin(self, kind: str, block: dict) -> list[dict]:
        events = self._close()
        self._index += 1
        self._open = kind
        events.append({"type": "content_block_start", "index": self._index, "content_block": block})
        return events

    def _delta(self, delta: dict) -> dict:
        return {"type": "content_block_delta", "index": self._index, "delta": delta}

    # -- Q events ----------------------------------------------------------------------------

    def _on_text(self, payload: dict) -> list[dict]:
        text = payload.get("content")
        if not isinstance(text, str) or not text or self.done:
            return []
        events = [] if self._open == "text" else self._begin("text", {"type": "text", "text": ""})
        if not self.stop_sequences:
            return events + self._emit_text(text)
        text = self._held + text
        found = [(text.find(s), s) for s in self.stop_sequences if s in text]
        if found:
            position, sequence = min(found)
            self._held = ""
            events += self._emit_text(text[:position])
            if not self.done:
                self._stop_reason, self._stop_sequence, self.done = "stop_sequence", sequence, True
            return events
        # Hold back a tail that could begin a stop sequence split across events.
        keep = min(self._hold, len(text))
        self._held = text[len(text) - keep:]
        return events + self._emit_text(text[:len(text) - keep])

    def _emit_text(self, text: str) -> list[dict]:
        """A text delta within the max_tokens budget; reaching it ends the message."""
        if self.done or not text:
            return []
        if self._char_budget is not None and self._output_chars + len(text) >= self._char_budget:
            text = text[:max(0, self._char_budget - self._output_chars)]
            self._stop_reason, self.done = "max_tokens", True
            self._held = ""
            if not text:
                return []
        self._output_chars += len(text)
        return [self._delta({"type": "text_delta", "text": text})]

    def _on_tool_use(self, payload: dict) -> list[dict]:
        tool_id = payload.get("toolUseId")
        if not isinstance(tool_id, str) or tool_id in self._closed_tools:
            return []
        events = []
        if not (self._open == "tool_use" and self._tool_id == tool_id):
            name = str(payload.get("name") or "")
            events = self._begin("tool_use", {"type": "tool_use", "id": tool_id,
                                               "name": self.tool_names.get(name, name), "input": {}})
            self._tool_id = tool_id
            self._saw_tool_use = True
        fragment = payload.get("input")
        if fragment is not None and not isinstance(fragment, str):
            fragment = json.dumps(fragment)  # some captures show the input as an object
        if fragment:
            self._output_chars += len(fragment)
            events.append(self._delta({"type": "input_json_delta", "partial_json": fragment}))
        if payload.get("stop"):
            events += self._close()
        return events

    def _on_reasoning(self, payload: dict) -> list[dict]:
        if not self.thinking:
            return []
        events = []
        if payload.get("redactedContent"):
            events += self._begin("redacted_thinking", {"type": "redacted_thinking",
                                                        "data": payload["redactedContent"]})
            return events + self._close()
        text = payload.get("text")
        if isinstance(text, str) and text:
            if self._open != "thinking":
                events += self._begin("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            self._output_chars += len(text)
            events.append(self._delta({"type": "thinking_delta", "thinking": text}))
        if payload.get("signature") and self._open == "thinking":
            self._signature = str(payload["signature"])
        return events

    def _on_metadata(self, payload: dict) -> list[dict]:
        usage = payload.get("tokenUsage")
        if isinstance(usage, dict):
            if isinstance(usage.get("outputTokens"), int):
                self._usage_from_q["output_tokens"] = usage["outputTokens"]
            inputs = [usage.get(k) for k in ("uncachedInputTokens", "cacheReadInputTokens",
                                             "cacheWriteInputTokens")]
            if any(isinstance(v, int) for v in inputs):
                self._usage_from_q["input_tokens"] = sum(v for v in inputs if isinstance(v, int))
        return []

    def _on_metering(self, payload: dict) -> list[dict]:
        """Credits Q charged; a request may carry several meteringEvents, summed."""
        amount = payload.get("usage")
        if isinstance(amount, (int, float)) and not isinstance(amount, bool) and \
                payload.get("unit", "credit") == "credit":
            self._credits = (self._credits or 0.0) + float(amount)
        return []

    def _on_context_usage(self, payload: dict) -> list[dict]:
        """Q's share of the context window in use: the best input figure short of tokenUsage."""
        percentage = payload.get("contextUsagePercentage")
        if isinstance(percentage, (int, float)) and "input_tokens" not in self._usage_from_q:
            self._context_input = round(percentage * self.context_window / 100)
        return []

    _HANDLERS = {
        "assistantResponseEvent": _on_text,
        "toolUseEvent": _on_tool_use,
        "reasoningContentEvent": _on_reasoning,
        "metadataEvent": _on_metadata,
        "contextUsageEvent": _on_context_usage,
        "meteringEvent": _on_metering,
    }


def translate(translator: StreamTranslator,
              batches: Iterable[list[tuple[str, dict]] | None]) -> Iterator[list[dict]]:
    """The Anthropic events for upstream event batches, in batches that belong together.

    message_start is yielded before the first upstream event is read; a None from upstream
    (a long silence) becomes a `ping`.
    """
    try:
        yield translator.start()
        for batch in batches:
            if batch is None:
                yield [{"type": "ping"}]
                continue
            out: list[dict] = []
            for event_type, payload in batch:
                out += translator.feed(event_type, payload)
                if translator.done:
                    break
            if out:
                yield out
            if translator.done:
                break  # a stop sequence or max_tokens: nothing more is wanted from Q
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # releases the upstream connection at once
    yield translator.finish()
