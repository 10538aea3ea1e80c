"""Anthropic's Messages API (``POST /v1/messages``), translated to and from OpenAI's shape.

Requests are built in ``anthropic_request``.

Answers: text blocks are joined into ``content``, ``tool_use`` blocks become
``tool_calls``; streamed events become ``chat.completion.chunk`` dicts, tool calls numbered
among tool calls (as OpenAI does), not among content blocks. Cache reads and writes count as
prompt tokens: they are input the caller sent. Errors are read by their ``type`` only, never
their message, and HTTP 529 (Anthropic's "overloaded") is a 503, like an ``overloaded_error``
event mid-stream.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from veil.chat import ChatRequest, Usage
from veil.config import AnthropicProviderConfig
from veil.errors import (
    InvalidRequest,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    VeilError,
)
from veil.providers.anthropic_request import messages_body
from veil.providers.base import Completion, Provider, StreamState
from veil.providers.http import HttpClient, identifier

_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


class AnthropicProvider(Provider):
    def __init__(self, config: AnthropicProviderConfig) -> None:
        super().__init__(config)
        base = config.base_url
        self._url = base + ("/messages" if base.endswith("/v1") else "/v1/messages")
        self._default_max_tokens = config.default_max_tokens
        #: Read by the pipeline's gate: whether a pseudonym of the user may go upstream.
        self.send_user_pseudonym = config.send_user_pseudonym
        # Lower-cased, so a configured "X-Api-Key" cannot be sent beside the api_key.
        headers = {k.lower(): v.get_secret_value() for k, v in config.headers.items()}
        if config.api_key is not None:
            headers["x-api-key"] = config.api_key.get_secret_value()
        headers["anthropic-version"] = config.anthropic_version
        headers["content-type"] = "application/json"
        self._headers = headers
        self._http = HttpClient(
            config.name, config.timeout, config.max_connections, anthropic_error_code
        )

    async def start(self) -> None:
        await self._http.start()

    async def close(self) -> None:
        await self._http.close()

    async def complete(self, request: ChatRequest, model: str) -> Completion:
        body = messages_body(request, model, self._default_max_tokens)
        data = await self._http.post_json(self._url, body, self._headers)
        return completion_from_message(data, self.name)

    async def stream(
        self, request: ChatRequest, model: str, state: StreamState
    ) -> AsyncIterator[dict[str, Any]]:
        body = messages_body(request, model, self._default_max_tokens, stream=True)
        translator = StreamTranslator(self.name, state)
        async with self._http.post_sse(self._url, body, self._headers) as events:
            async for data in events:
                try:
                    event = orjson.loads(data)
                except orjson.JSONDecodeError:
                    event = None
                if not isinstance(event, dict):
                    raise UpstreamError(f"provider {self.name} sent an invalid stream event")
                chunk = translator.feed(event)
                if chunk is not None:
                    yield chunk
                if translator.done:
                    return
        raise UpstreamError(f"provider {self.name} closed the stream before it ended")


def anthropic_error_code(raw: bytes) -> tuple[str | None, str | None]:
    """The error ``type`` of ``{"type": "error", "error": {"type", "message"}}`` as the code.

    Anthropic names no parameter, and its message may quote the prompt: neither is used."""
    try:
        err = orjson.loads(raw).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return None, None
    return (identifier(err.get("type")) if isinstance(err, dict) else None), None


# --------------------------------------------------------------------------- answer


def completion_from_message(data: dict[str, Any], provider: str) -> Completion:
    """An Anthropic ``message`` as an OpenAI ``chat.completion`` (without id and model)."""
    content = data.get("content")
    if not isinstance(content, list):
        raise UpstreamError(f"provider {provider} answered without content")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            texts.append(str(block.get("text") or ""))
        elif block.get("type") == "tool_use":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": orjson.dumps(block.get("input") or {}).decode(),
                    },
                }
            )
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
    }
    if calls:
        message["tool_calls"] = calls
    body: dict[str, Any] = {
        "object": "chat.completion",
        "created": int(time.time()),
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _finish(data.get("stop_reason")),
            }
        ],
    }
    usage = _usage(data.get("usage"))
    if usage is None:  # recorded as such, never guessed as zero
        return Completion(body, Usage(method="missing"))
    body["usage"] = usage.to_dict()
    return Completion(body, usage)


def _finish(stop_reason: Any) -> str:
    return _FINISH.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _tokens(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def _prompt_tokens(usage: dict[str, Any]) -> int:
    return sum(
        _tokens(usage.get(key))
        for key in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    )


def _usage(usage: Any) -> Usage | None:
    if not isinstance(usage, dict) or "output_tokens" not in usage:
        return None
    return Usage(_prompt_tokens(usage), _tokens(usage["output_tokens"]), "reported")


class StreamTranslator:
    """Turns Anthropic stream events, one at a time, into OpenAI chunks; keeps the usage
    in ``state`` current (estimated from deltas until ``message_delta`` reports it)."""

    def __init__(self, provider: str, state: StreamState) -> None:
        self._provider = provider
        self._state = state
        self._created = int(time.time())
        #: Content block index → OpenAI tool call index (counted among tool calls only).
        self._tool_index: dict[Any, int] = {}
        self.done = False

    def feed(self, event: dict[str, Any]) -> dict[str, Any] | None:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            prompt = _prompt_tokens(usage) if isinstance(usage, dict) else 0
            self._state.usage = Usage(prompt, 0, "estimated")
            return self._chunk({"role": "assistant", "content": ""})
        if kind == "content_block_start":
            return self._block_start(event)
        if kind == "content_block_delta":
            return self._block_delta(event)
        if kind == "message_delta":
            usage = event.get("usage")
            if isinstance(usage, dict) and "output_tokens" in usage:
                self._state.usage.completion_tokens = _tokens(usage["output_tokens"])
                if "input_tokens" in usage:
                    self._state.usage.prompt_tokens = _prompt_tokens(usage)
                self._state.usage.method = "reported"
            delta = event.get("delta")
            stop_reason = delta.get("stop_reason") if isinstance(delta, dict) else None
            return self._chunk({}, _finish(stop_reason)) if stop_reason else None
        if kind == "message_stop":
            self.done = True
        elif kind == "error":
            raise stream_error(self._provider, event.get("error"))
        return None  # ping, content_block_stop, and event types added later

    def _block_start(self, event: dict[str, Any]) -> dict[str, Any] | None:
        block = event.get("content_block")
        if not isinstance(block, dict):
            return None
        if block.get("type") == "tool_use":
            index = self._tool_index[event.get("index")] = len(self._tool_index)
            call = {
                "index": index,
                "id": block.get("id"),
                "type": "function",
                "function": {"name": block.get("name"), "arguments": ""},
            }
            return self._chunk({"tool_calls": [call]})
        if block.get("type") == "text" and block.get("text"):
            return self._chunk({"content": block["text"]})
        return None

    def _block_delta(self, event: dict[str, Any]) -> dict[str, Any] | None:
        delta = event.get("delta")
        if not isinstance(delta, dict):
            return None
        if delta.get("type") == "text_delta":
            self._count()
            return self._chunk({"content": str(delta.get("text") or "")})
        if delta.get("type") == "input_json_delta":
            index = self._tool_index.get(event.get("index"))
            if index is None:
                raise UpstreamError(f"provider {self._provider} sent tool input for no tool")
            self._count()
            arguments = str(delta.get("partial_json") or "")
            return self._chunk(
                {"tool_calls": [{"index": index, "function": {"arguments": arguments}}]}
            )
        return None

    def _count(self) -> None:
        if self._state.usage.method != "reported":
            self._state.usage.completion_tokens += 1  # about one token per delta

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "object": "chat.completion.chunk",
            "created": self._created,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }


def stream_error(provider: str, error: Any) -> VeilError:
    """An ``error`` event in Anthropic's stream as a Veil error, by its ``type`` alone."""
    kind = identifier(error.get("type")) if isinstance(error, dict) else None
    message = f"provider {provider} reported {kind or 'an error'} in its stream"
    if kind == "overloaded_error":
        return UpstreamUnavailable(message)
    if kind == "rate_limit_error":
        return RateLimited(message, code=kind)
    if kind == "timeout_error":
        return UpstreamTimeout(message)
    if kind in ("invalid_request_error", "request_too_large"):
        return InvalidRequest(message, code=kind)
    if kind in ("authentication_error", "permission_error"):
        return UpstreamError(message, code="upstream_auth")
    return UpstreamError(message)
