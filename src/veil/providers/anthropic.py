"""Anthropic's Messages API (``POST /v1/messages``), translated to and from OpenAI's shape.

Requests: system and developer messages become the top-level ``system``; tool results
become user messages of ``tool_result`` blocks; consecutive messages of one role are merged,
since Anthropic wants user and assistant to alternate. ``max_tokens`` is required there, so
the provider's ``default_max_tokens`` fills in when the caller gives none. A field Anthropic
cannot honour (``logprobs``, ``seed``, a JSON ``response_format``, an image by URL, …) is
refused with a 400 naming it, never silently dropped. Dropped are only hints
(``prompt_cache_key``, an image's ``detail``) and a message's ``name``, which Anthropic has
no field for and which would otherwise make every multi-party chat unusable.

Answers: text blocks are joined into ``content``, ``tool_use`` blocks become
``tool_calls``; streamed events become ``chat.completion.chunk`` dicts, tool calls numbered
among tool calls (as OpenAI does), not among content blocks. Cache reads and writes count as
prompt tokens: they are input the caller sent. Errors are read by their ``type`` only, never
their message, and HTTP 529 (Anthropic's "overloaded") is a 503, like an ``overloaded_error``
event mid-stream.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from veil.chat import ChatRequest, ContentPart, Message, Usage
from veil.config import AnthropicProviderConfig
from veil.errors import (
    InvalidRequest,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
    VeilError,
)
from veil.providers.base import Completion, Provider, StreamState
from veil.providers.http import HttpClient, identifier

# OpenAI request fields Anthropic has no equivalent for, with the values that mean "unused".
_NO_OP: dict[str, tuple[Any, ...]] = {
    "seed": (None,),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "logit_bias": (None, {}),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "metadata": (None, {}),
    "store": (None, False),
    "reasoning_effort": (None,),
    "service_tier": (None, "auto", "default"),
    "modalities": (None, ["text"]),
    "verbosity": (None,),
}

# Content part types that carry text (``input_text`` as ``Message.text`` reads it too).
_TEXT_PARTS = ("text", "input_text")

# Message fields beyond role/content/name that each role may carry.
_MESSAGE_EXTRAS = {"assistant": {"tool_calls", "refusal"}, "tool": {"tool_call_id"}}

_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

_DATA_URL = re.compile(r"data:(image/(?:jpeg|jpg|png|gif|webp));base64,([A-Za-z0-9+/=\s]+)")


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


# --------------------------------------------------------------------------- request


def messages_body(
    request: ChatRequest, model: str, default_max_tokens: int, *, stream: bool = False
) -> dict[str, Any]:
    """The Messages API body for ``request``; raises ``InvalidRequest`` for what it cannot
    express."""
    _refuse_unsupported(request)
    system, messages = _messages(request.messages)
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": request.token_limit or default_max_tokens,
        "messages": messages,
    }
    if system:
        body["system"] = system
    if request.temperature is not None:
        if request.temperature > 1:
            raise InvalidRequest(
                "temperature must be between 0 and 1 for Anthropic models", param="temperature"
            )
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop_list:
        body["stop_sequences"] = request.stop_list
    if request.user is not None:  # present only if the pipeline let it through
        body["metadata"] = {"user_id": request.user}
    body.update(_tools(request))
    if stream:
        body["stream"] = True
    return body


def _unsupported(what: str, param: str, code: str = "unsupported_parameter") -> InvalidRequest:
    return InvalidRequest(f"Anthropic models do not support {what}", param=param, code=code)


def _refuse_unsupported(request: ChatRequest) -> None:
    for field, unused in _NO_OP.items():
        if getattr(request, field) not in unused:
            raise _unsupported(f"'{field}'", field)
    fmt = request.response_format
    if fmt is not None and fmt.get("type") != "text":
        raise _unsupported("'response_format' other than text", "response_format")


def _messages(messages: list[Message]) -> tuple[str, list[dict[str, Any]]]:
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        for key, value in (m.model_extra or {}).items():
            if value is not None and key not in _MESSAGE_EXTRAS.get(m.role, ()):
                raise _unsupported(f"'{key}' in a {m.role} message", f"{where}.{key}")
        if m.role in ("system", "developer"):
            text = _system_text(m, where)
            if text:
                system.append(text)
            continue
        if m.role == "user":
            role, blocks = "user", _user_blocks(m, where)
        elif m.role == "assistant":
            role, blocks = "assistant", _assistant_blocks(m, where)
        elif m.role == "tool":
            role, blocks = "user", [_tool_result(m, where)]
        else:
            raise _unsupported(f"the '{m.role}' role; use tools", f"{where}.role")
        if not blocks:
            raise InvalidRequest(f"{where} has no content", param=f"{where}.content")
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    for msg in out:
        blocks = msg["content"]
        if len(blocks) == 1 and blocks[0]["type"] == "text":
            msg["content"] = blocks[0]["text"]
    return "\n\n".join(system), out


def _parts(m: Message, where: str) -> list[tuple[str, ContentPart]]:
    """The message's content as parts, each with the parameter path that names it."""
    if m.content is None:
        return []
    if isinstance(m.content, str):
        return [(f"{where}.content", ContentPart(type="text", text=m.content))]
    return [(f"{where}.content[{j}]", part) for j, part in enumerate(m.content)]


def _text(part: ContentPart, where: str) -> str:
    text = getattr(part, "text", None)
    if not isinstance(text, str):
        raise InvalidRequest(f"{where}.text must be a string", param=f"{where}.text")
    return text


def _system_text(m: Message, where: str) -> str:
    texts = []
    for at, part in _parts(m, where):
        if part.type not in _TEXT_PARTS:
            raise _unsupported(f"'{part.type}' parts in system messages", at, "unsupported_content")
        texts.append(_text(part, at))
    return "".join(texts)


def _user_blocks(m: Message, where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for at, part in _parts(m, where):
        if part.type in _TEXT_PARTS:
            text = _text(part, at)
            if text:  # Anthropic rejects empty text blocks
                blocks.append({"type": "text", "text": text})
        elif part.type == "image_url":
            blocks.append(_image(getattr(part, "image_url", None), at))
        else:
            raise _unsupported(f"'{part.type}' content parts", at, "unsupported_content")
    return blocks


def _image(image_url: Any, where: str) -> dict[str, Any]:
    url = image_url.get("url") if isinstance(image_url, dict) else None
    param = f"{where}.image_url.url"
    if not isinstance(url, str):
        raise InvalidRequest(f"{param} must be a string", param=param)
    match = _DATA_URL.fullmatch(url)
    if match is None:
        # A URL would make Anthropic fetch the image itself; Veil sends images inline only.
        raise _unsupported(
            "images by URL here: send a base64 data: URL of a JPEG, PNG, GIF or WebP image",
            param,
            "unsupported_content",
        )
    media_type = "image/jpeg" if match[1] == "image/jpg" else match[1]
    data = "".join(match[2].split())
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _assistant_blocks(m: Message, where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for at, part in _parts(m, where):
        if part.type in _TEXT_PARTS:
            text = _text(part, at)
        elif part.type == "refusal":
            text = str(getattr(part, "refusal", "") or "")
        else:
            raise _unsupported(f"'{part.type}' parts in assistant messages", at)
        if text:
            blocks.append({"type": "text", "text": text})
    extra = m.model_extra or {}
    if isinstance(extra.get("refusal"), str) and extra["refusal"]:
        blocks.append({"type": "text", "text": extra["refusal"]})
    calls = extra.get("tool_calls") or []
    if not isinstance(calls, list):
        raise InvalidRequest(f"{where}.tool_calls must be a list", param=f"{where}.tool_calls")
    for k, call in enumerate(calls):
        blocks.append(_tool_use(call, f"{where}.tool_calls[{k}]"))
    return blocks


def _tool_use(call: Any, where: str) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(call, dict) or call.get("type", "function") != "function":
        raise _unsupported("tool calls other than functions", f"{where}.type")
    if not isinstance(call.get("id"), str) or not call["id"]:
        raise InvalidRequest(f"{where}.id must be a non-empty string", param=f"{where}.id")
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise InvalidRequest(f"{where}.function.name is required", param=f"{where}.function.name")
    raw = fn.get("arguments") or "{}"
    param = f"{where}.function.arguments"
    try:
        arguments = orjson.loads(raw) if isinstance(raw, str) else None
    except orjson.JSONDecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        raise InvalidRequest(f"{param} must be a JSON object in a string", param=param)
    return {"type": "tool_use", "id": call["id"], "name": fn["name"], "input": arguments}


def _tool_result(m: Message, where: str) -> dict[str, Any]:
    tool_call_id = (m.model_extra or {}).get("tool_call_id")
    if not isinstance(tool_call_id, str) or not tool_call_id:
        raise InvalidRequest(f"{where}.tool_call_id is required", param=f"{where}.tool_call_id")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_call_id}
    texts = []
    for at, part in _parts(m, where):
        if part.type not in _TEXT_PARTS:
            raise _unsupported(f"'{part.type}' parts in tool messages", at, "unsupported_content")
        if text := _text(part, at):
            texts.append({"type": "text", "text": text})
    if texts:  # a string stays a string; parts stay text blocks
        block["content"] = m.content if isinstance(m.content, str) else texts
    return block


def _tools(request: ChatRequest) -> dict[str, Any]:
    tools = [_tool(t, f"tools[{i}]") for i, t in enumerate(request.tools or [])]
    choice = _tool_choice(request.tool_choice)
    if request.parallel_tool_calls is False and (choice is None or choice["type"] != "none"):
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if not tools:
        if choice is not None and choice["type"] in ("any", "tool"):
            raise InvalidRequest("tool_choice needs tools to choose from", param="tool_choice")
        return {}  # "auto" or "none" among no tools changes nothing
    out: dict[str, Any] = {"tools": tools}
    if choice is not None:
        out["tool_choice"] = choice
    return out


def _tool(tool: dict[str, Any], where: str) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise _unsupported("tools other than functions", f"{where}.type")
    fn = tool.get("function")
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise InvalidRequest(f"{where}.function.name is required", param=f"{where}.function.name")
    if fn.get("strict"):
        raise _unsupported("strict function schemas", f"{where}.function.strict")
    schema = fn.get("parameters") or {"type": "object", "properties": {}}
    if not isinstance(schema, dict):
        raise InvalidRequest(
            f"{where}.function.parameters must be a JSON schema object",
            param=f"{where}.function.parameters",
        )
    out: dict[str, Any] = {"name": fn["name"], "input_schema": schema}
    if isinstance(fn.get("description"), str):
        out["description"] = fn["description"]
    return out


def _tool_choice(choice: str | dict[str, Any] | None) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice in ("auto", "none"):
        return {"type": choice}
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        fn = choice.get("function")
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            return {"type": "tool", "name": fn["name"]}
    raise InvalidRequest(
        "tool_choice must be auto, none, required or a function", param="tool_choice"
    )


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
