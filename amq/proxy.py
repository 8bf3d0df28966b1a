"""The request path in one place: call Q with a validated request, set up translation of its answer."""
from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import requests

from . import metrics
from .config import Settings
from .cooperative import WhileWaiting
from .credentials.manager import TokenManager
from .credentials.pool import Account, AccountPool
from .errors import ProxyError
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
    pool: AccountPool
    _logged_server_tools: set = field(default_factory=set)

    def open_message(self, request: MessageRequest, record: metrics.RequestRecord | None = None,
                     session: str | None = None) -> Iterator[list[dict]]:
        """Open the Q stream for a validated `request` on an account of the pool; return the
        Anthropic events (in batches that arrived together). `record` learns the Q model, the
        account and, once Q answers, where the usage can be read. `session` is the client's
        conversation id (Claude Code's X-Claude-Code-Session-Id), if it sent one.

        Everything that can fail before Q accepts the call raises here (an ordinary HTTP
        error, or a 429 naming the accounts' states); the returned iterator raises ProxyError
        only for faults mid-answer.
        """
        q_model = self.models.resolve(request.model)
        if record is not None:
            record.model = q_model
        self._log_server_tools(request.conversion.skipped_tools)
        conversation = conversation_key(request.payload, session) if self.settings.sticky_sessions else None
        # The estimate is first needed in message_start, once Q answers: it is made while Q is called.
        input_tokens = WhileWaiting(lambda: count_request_tokens(request.payload))
        try:
            account, response = self._open(request, q_model, conversation)
        except BaseException:
            input_tokens.cancel()
            raise
        try:
            estimate = input_tokens.get()
        except BaseException:  # the estimate failed, or the worker is stopping this greenlet
            input_tokens.cancel()
            self.pool.end(account)
            response.close()
            raise
        translator = StreamTranslator(model=request.model or q_model, input_tokens=estimate,
                                      tool_names=request.conversion.tool_names,
                                      thinking=request.thinking,
                                      stop_sequences=request.stop_sequences, max_tokens=request.max_tokens,
                                      context_window=self.models.context_window(q_model))
        if record is not None:
            record.account = account.name
            record.usage_source = translator.usage
        ping = self.settings.ping_interval if request.stream else None
        events = self.client.events(response, ping_interval=ping)
        answer = translate(translator, self._failures(account, q_model, metrics.count_stream_errors(events)))
        return Answer(answer, lambda: self._finish(account, translator.usage, response))

    def _open(self, request: MessageRequest, q_model: str,
              conversation: str | None) -> tuple[Account, requests.Response]:
        """Failover before the first byte: an account-level failure moves the request to the
        next eligible account, within UPSTREAM_RETRY_BUDGET; the request's own faults go back
        to the client at once. With one account, the client's retries happen inside the call."""
        pool = self.pool
        deadline = time.monotonic() + self.settings.retry_budget
        tried: set[str] = set()
        last: ProxyError | None = None
        single = pool.single  # before any failure of this request changes who can serve
        while True:
            account = pool.choose(q_model, conversation, exclude=tried)
            if account is None:
                if last is not None and (last.disposition == "transient" or
                                         last.disposition == "model" and pool.offered_nowhere(q_model)):
                    raise last  # no account refused on health: Q's own answer is the truth
                raise pool.unavailable(q_model)
            body = request.conversion.for_model(q_model, account.profile_arn)
            pool.begin(account)
            try:
                response = self.client.open(body, tokens=account.tokens, endpoint=account.endpoint,
                                            attempts=None if single else 1)
            except ProxyError as exc:
                pool.end(account)
                pool.report_failure(account, exc, q_model)
                if single or exc.disposition in ("request", "") or time.monotonic() >= deadline:
                    raise
                logger.info("account %s failed before the first byte (%s); trying another account",
                            account.name, exc.disposition)
                tried.add(account.name)
                last = exc
                continue
            except BaseException:
                pool.end(account)
                raise
            pool.report_success(account, conversation)
            return account, response

    def _failures(self, account: Account, q_model: str, events: Iterator) -> Iterator:
        """The answer's events; a fault mid-answer counts against the account's health."""
        try:
            yield from events
        except ProxyError as exc:
            self.pool.report_failure(account, exc, q_model)
            raise

    def _finish(self, account: Account, usage: Callable, response: requests.Response) -> None:
        """Once per answer, however it ended: the account's stream count, its usage, Q's connection."""
        try:
            self.pool.end(account)
            try:
                spent = usage()
                self.pool.add_usage(account, spent.input_tokens, spent.output_tokens, spent.credits)
            except Exception:  # noqa: BLE001 - counting must never break an answer
                logger.exception("could not count the usage of account %s", account.name)
        finally:
            response.close()

    def validate(self, payload: dict) -> MessageRequest:
        """The validation step of every Messages endpoint, with this proxy's `origin`."""
        return validate_request(payload, origin=self.settings.origin)

    def _log_server_tools(self, kinds: list[str]) -> None:
        """Q runs no server tools (web search...): say so once per kind, not per request."""
        for kind in kinds:
            if kind not in self._logged_server_tools:
                self._logged_server_tools.add(kind)
                logger.info("server tool %s is not available on Amazon Q; leaving it out", kind[:100])


class Answer(Iterator[list[dict]]):
    """The answer's event batches. Its close() always runs `finish` once, whether or not
    iteration started: a generator closed before its first step never runs its finally,
    so a client that drops at the first write would otherwise leave the account busy and
    Q's connection open."""

    def __init__(self, events: Iterator[list[dict]], finish: Callable[[], None]):
        self._events = events
        self._finish = finish
        self._closed = False

    def __next__(self) -> list[dict]:
        try:
            return next(self._events)
        except BaseException:  # the end, or a fault: either way the answer is over
            self.close()
            raise

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            close = getattr(self._events, "close", None)
            if close is not None:
                close()
        finally:
            self._finish()


def conversation_key(payload: dict, session: str | None) -> str:
    """What identifies a conversation across its turns: Claude Code's session id, else the
    request's metadata.user_id, else a hash of the system prompt and the first user message."""
    if session:
        return "s:" + hashlib.sha256(session.encode("utf-8", "replace")).hexdigest()
    metadata = payload.get("metadata")
    user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
    if isinstance(user_id, str) and user_id:
        return "u:" + hashlib.sha256(user_id.encode("utf-8", "replace")).hexdigest()
    messages = payload.get("messages") or []
    first = next((m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"), None)
    text = json.dumps([payload.get("system"), first], sort_keys=True, default=str)
    return "h:" + hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()
