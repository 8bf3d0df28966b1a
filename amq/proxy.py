"""The request path in one place: convert, call Q, and set up translation of its answer."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterator

from .config import Settings
from .convert import convert_request
from .errors import InvalidRequest
from .models import ModelCatalogue
from .tokencount import count_request_tokens
from .credentials.manager import TokenManager
from .translate import StreamTranslator, translate
from .upstream import QClient

logger = logging.getLogger(__name__)


def thinking_requested(request: dict) -> bool:
    thinking = request.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


@dataclass
class Proxy:
    """Long-lived parts of the app (kept in app.extensions["amq"])."""

    settings: Settings
    tokens: TokenManager
    client: QClient
    models: ModelCatalogue
    _logged_server_tools: set = field(default_factory=set)

    def open_message(self, request: dict) -> Iterator[list[dict]]:
        """Validate and convert `request`, open the Q stream, return the Anthropic events
        (in batches that arrived together).

        Everything that can fail before Q accepts the call raises here (an ordinary HTTP
        error); the returned iterator raises ProxyError only for faults mid-answer.
        """
        model = request.get("model", "")
        if not isinstance(model, str):
            raise InvalidRequest("model: must be a string")
        max_tokens = request.get("max_tokens")
        if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                       or max_tokens < 1):
            raise InvalidRequest("max_tokens: must be a positive integer")
        if "stream" in request and not isinstance(request["stream"], bool):
            raise InvalidRequest("stream: must be a boolean")
        stop_sequences = request.get("stop_sequences") or []
        if not isinstance(stop_sequences, list) or not all(isinstance(s, str) for s in stop_sequences):
            raise InvalidRequest("stop_sequences: must be a list of strings")
        q_model = self.models.resolve(model)
        conversion = convert_request(request, model_id=q_model, origin=self.settings.origin,
                                     profile_arn=self.settings.profile_arn)
        self._log_server_tools(conversion.skipped_tools)
        translator = StreamTranslator(model=model or q_model,
                                      input_tokens=count_request_tokens(request),
                                      tool_names=conversion.tool_names,
                                      thinking=thinking_requested(request),
                                      stop_sequences=stop_sequences, max_tokens=max_tokens,
                                      context_window=self.models.context_window(q_model))
        response = self.client.open(conversion.body)
        ping = self.settings.ping_interval if request.get("stream") is True else None
        return translate(translator, self.client.events(response, ping_interval=ping))

    def _log_server_tools(self, kinds: list[str]) -> None:
        """Q runs no server tools (web search...): say so once per kind, not per request."""
        for kind in kinds:
            if kind not in self._logged_server_tools:
                self._logged_server_tools.add(kind)
                logger.info("server tool %s is not available on Amazon Q; leaving it out", kind[:100])
