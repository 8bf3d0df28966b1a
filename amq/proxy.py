"""The request path in one place: call Q with a validated request, set up translation of its answer."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

from . import metrics
from .config import Settings
from .credentials.manager import TokenManager
from .models import ModelCatalogue
from .tokencount import count_request_tokens
from .translate import StreamTranslator, translate
from .upstream import QClient
from .validate import MessageRequest, validate_request

logger = logging.getLogger(__name__)


@dataclass
class Proxy:
    """Long-lived parts of the app (kept in app.extensions["amq"])."""

    settings: Settings
    tokens: TokenManager
    client: QClient
    models: ModelCatalogue
    _logged_server_tools: set = field(default_factory=set)

    def open_message(self, request: MessageRequest,
                     record: metrics.RequestRecord | None = None) -> Iterator[list[dict]]:
        """Open the Q stream for a validated `request`; return the Anthropic events (in
        batches that arrived together). `record` learns the Q model and, once Q answers,
        where the usage can be read.

        Everything that can fail before Q accepts the call raises here (an ordinary HTTP
        error); the returned iterator raises ProxyError only for faults mid-answer.
        """
        q_model = self.models.resolve(request.model)
        if record is not None:
            record.model = q_model
        body = request.conversion.for_model(q_model, self.settings.profile_arn)
        self._log_server_tools(request.conversion.skipped_tools)
        translator = StreamTranslator(model=request.model or q_model,
                                      input_tokens=count_request_tokens(request.payload),
                                      tool_names=request.conversion.tool_names,
                                      thinking=request.thinking,
                                      stop_sequences=request.stop_sequences, max_tokens=request.max_tokens,
                                      context_window=self.models.context_window(q_model))
        response = self.client.open(body)
        if record is not None:
            record.usage_source = translator.usage
        ping = self.settings.ping_interval if request.stream else None
        events = self.client.events(response, ping_interval=ping)
        return translate(translator, metrics.count_stream_errors(events))

    def validate(self, payload: dict) -> MessageRequest:
        """The validation step of every Messages endpoint, with this proxy's `origin`."""
        return validate_request(payload, origin=self.settings.origin)

    def _log_server_tools(self, kinds: list[str]) -> None:
        """Q runs no server tools (web search...): say so once per kind, not per request."""
        for kind in kinds:
            if kind not in self._logged_server_tools:
                self._logged_server_tools.add(kind)
                logger.info("server tool %s is not available on Amazon Q; leaving it out", kind[:100])
