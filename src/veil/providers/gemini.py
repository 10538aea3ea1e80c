"""Google Gemini: ``models/{model}:generateContent`` and ``:streamGenerateContent?alt=sse``.

Requests are translated from OpenAI's shape: system and developer messages become
``systemInstruction``; user and assistant turns become ``user`` and ``model`` contents
(consecutive turns of one role merged, as Gemini wants turns to alternate); assistant
tool calls become ``functionCall`` parts and tool results ``functionResponse`` parts of a
``user`` turn, named after the call they answer. Function parameters are JSON Schema, so
they go in ``parametersJsonSchema`` (``parameters`` takes an OpenAPI subset that refuses
``additionalProperties`` and other keywords OpenAI tools carry).

Gemini 3 wants the ``thoughtSignature`` of a function call back with the next request.
Veil keeps no state, so the signature travels with the tool call the caller receives, in
``extra_content.google.thought_signature`` (where Google's own OpenAI-compatible endpoint
puts it); a call without one is sent with the documented placeholder that skips the check.

What Gemini cannot do (log probabilities, logit bias, …) is refused with a 400 naming the
field rather than silently ignored. ``user``, ``metadata``, ``store`` and
``prompt_cache_key`` are not sent: Gemini has no such fields, and none changes the answer.
Errors are read for Gemini's ``status`` (``INVALID_ARGUMENT``, …), never its message.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson

from veil.chat import ChatRequest, Message, Usage
from veil.config import GeminiProviderConfig
from veil.errors import InvalidRequest, UpstreamError
from veil.providers.base import Completion, Provider, StreamState
from veil.providers.http import HttpClient, identifier

FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}

#: Google's documented value for a function call whose signature was not kept.
SKIP_SIGNATURE = "skip_thought_signature_validator"


@dataclass(slots=True)
class _Prepared:
    body: dict[str, Any]
    #: Tool calls already in the conversation: new ids continue after them, so they stay
    #: unique within the conversation.
    first_call: int


class GeminiProvider(Provider):
    def __init__(self, config: GeminiProviderConfig) -> None:
        super().__init__(config)
        self._base = config.base_url + "/"
        self._headers = {k.lower(): v.get_secret_value() for k, v in config.headers.items()}
        self._headers["content-type"] = "application/json"
        if config.api_key is not None:
            self._headers["x-goog-api-key"] = config.api_key.get_secret_value()
        self._http = HttpClient(
            config.name, config.timeout, config.max_connections, error_code=gemini_error_code
        )

    async def start(self) -> None:
        await self._http.start()

    async def close(self) -> None:
        await self._http.close()

    def _url(self, model: str, method: str) -> str:
        path = model if "/" in model else "models/" + model  # also tunedModels/…
        return f"{self._base}{quote(path, safe='/')}:{method}"

    # ------------------------------------------------------------------ answers

    async def complete(self, request: ChatRequest, model: str) -> Completion:
        prepared = self._prepare(request)
        data = await self._http.post_json(
            self._url(model, "generateContent"), prepared.body, self._headers
        )
        candidate = self._candidate(data)
        if candidate is None:
            raise UpstreamError(f"provider {self.name} answered without candidates")
        text, calls = _output(candidate)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text if text or not calls else None,
        }
        if calls:
            message["tool_calls"] = [
                self._tool_call(part, prepared.first_call + i) for i, part in enumerate(calls)
            ]
        usage = _usage(data.get("usageMetadata")) or Usage(method="missing")
        body: dict[str, Any] = {
            "object": "chat.completion",
            "created": int(time.time()),
            "choices": [
                {"index": 0, "message": message, "finish_reason": _finish(candidate, calls)}
            ],
        }
        if usage.method == "reported":
            body["usage"] = usage.to_dict()
        return Completion(body, usage)

    async def stream(
        self, request: ChatRequest, model: str, state: StreamState
    ) -> AsyncIterator[dict[str, Any]]:
        prepared = self._prepare(request)
        url = self._url(model, "streamGenerateContent") + "?alt=sse"
        started = finished = False
        n_calls = 0
        state.usage = Usage(method="missing")
        async with self._http.post_sse(url, prepared.body, self._headers) as events:
            async for data in events:
                try:
                    event = orjson.loads(data)
                except orjson.JSONDecodeError:
                    raise UpstreamError(
                        f"provider {self.name} sent an invalid stream event"
                    ) from None
                if not isinstance(event, dict):
                    raise UpstreamError(f"provider {self.name} sent an invalid stream event")
                if "error" in event:
                    raise UpstreamError(f"provider {self.name} reported an error mid-stream")
                usage = _usage(event.get("usageMetadata"))
                if usage is not None:
                    state.usage = usage  # running totals; the last event has the final ones
                candidate = self._candidate(event)
                if candidate is None or finished:
                    continue
                text, calls = _output(candidate)
                delta: dict[str, Any] = {} if started else {"role": "assistant"}
                if text:
                    delta["content"] = text
                if calls:
                    delta["tool_calls"] = [
                        {"index": n_calls + i}
                        | self._tool_call(part, prepared.first_call + n_calls + i)
                        for i, part in enumerate(calls)
                    ]
                    n_calls += len(calls)
                if text or calls:
                    started = True
                    yield _chunk(delta)
                    delta = {}
                if candidate.get("finishReason"):
                    finished = True
                    reason = "tool_calls" if n_calls else _finish(candidate, calls)
                    yield _chunk(delta, reason)
        if not finished:
            raise UpstreamError(f"provider {self.name} closed the stream before it ended")

    def _candidate(self, data: dict[str, Any]) -> dict[str, Any] | None:
        """The first candidate; a blocked prompt (no candidates) is a ``content_filter`` 400."""
        candidates = data.get("candidates")
        if isinstance(candidates, list) and candidates and isinstance(candidates[0], dict):
            return candidates[0]
        feedback = data.get("promptFeedback")
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            reason = identifier(feedback["blockReason"])
            raise InvalidRequest(
                f"provider {self.name} blocked the prompt"
                + (f" (reason {reason})" if reason else ""),
                code="content_filter",
            )
        return None

    def _tool_call(self, part: dict[str, Any], n: int) -> dict[str, Any]:
        call = part["functionCall"]
        name = call.get("name")
        if not isinstance(name, str) or not name:
            raise UpstreamError(f"provider {self.name} sent a function call without a name")
        args = call.get("args")
        tool_call: dict[str, Any] = {
            "id": f"call_{n}",
            "type": "function",
            "function": {"name": name, "arguments": orjson.dumps(args or {}).decode()},
        }
        signature = part.get("thoughtSignature")
        if isinstance(signature, str) and signature:
            tool_call["extra_content"] = {"google": {"thought_signature": signature}}
        return tool_call

    # ------------------------------------------------------------------ requests

    def _prepare(self, request: ChatRequest) -> _Prepared:
        self._check_supported(request)
        system: list[dict[str, Any]] = []
        contents: list[dict[str, Any]] = []
        call_names: dict[str, str] = {}  # tool_call_id → function name
        n_calls = 0
        for i, message in enumerate(request.messages):
            where = f"messages[{i}]"
            if message.role in ("system", "developer"):
                system.extend(self._parts(message, where, images=False))
                continue
            if message.role == "user":
                role, parts = "user", self._parts(message, where)
            elif message.role == "assistant":
                role, parts = "model", self._parts(message, where, images=False)
                calls = self._function_calls(message, where, call_names)
                n_calls += len(calls)
                parts.extend(calls)
            else:  # tool, or the deprecated function role
                role, parts = "user", [self._function_response(message, where, call_names)]
            if not parts:
                continue
            if contents and contents[-1]["role"] == role:
                contents[-1]["parts"].extend(parts)
            else:
                contents.append({"role": role, "parts": parts})
        body: dict[str, Any] = {"contents": contents}
        if system:
            body["systemInstruction"] = {"parts": system}
        config = self._generation_config(request)
        if config:
            body["generationConfig"] = config
        if request.tools:
            body["tools"] = [{"functionDeclarations": self._declarations(request.tools)}]
        if request.tool_choice is not None:
            body["toolConfig"] = {"functionCallingConfig": self._calling_config(request)}
        return _Prepared(body, n_calls)

    def _check_supported(self, request: ChatRequest) -> None:
        unsupported = {
            "logprobs": bool(request.logprobs),
            "top_logprobs": request.top_logprobs is not None,
            "logit_bias": bool(request.logit_bias),
            "reasoning_effort": request.reasoning_effort is not None,
            "verbosity": request.verbosity is not None,
            "service_tier": request.service_tier not in (None, "auto", "default"),
            "modalities": request.modalities not in (None, ["text"]),
            # Gemini may answer with several calls at once; it cannot be told not to.
            "parallel_tool_calls": request.parallel_tool_calls is False,
        }
        for field, asked in unsupported.items():
            if asked:
                raise self._unsupported(field)

    def _unsupported(self, param: str, what: str | None = None) -> InvalidRequest:
        return InvalidRequest(
            f"provider {self.name} (Gemini) does not support {what or repr(param)}",
            param=param,
            code="unsupported_parameter",
        )

    def _parts(self, message: Message, where: str, images: bool = True) -> list[dict[str, Any]]:
        content = message.content
        if content is None or content == "":
            return []
        if isinstance(content, str):
            return [{"text": content}]
        parts: list[dict[str, Any]] = []
        for j, part in enumerate(content):
            extra = part.model_extra or {}
            param = f"{where}.content[{j}]"
            if part.type == "text" and isinstance(extra.get("text"), str):
                if extra["text"]:
                    parts.append({"text": extra["text"]})
            elif part.type == "image_url" and images:
                parts.append(self._inline_image(extra.get("image_url"), param))
            else:
                raise self._unsupported(param, f"content parts of type {part.type!r} here")
        return parts

    def _inline_image(self, image: Any, param: str) -> dict[str, Any]:
        url = image.get("url") if isinstance(image, dict) else None
        if not isinstance(url, str) or not url.startswith("data:"):
            # Fetching a remote image on the caller's behalf would make Veil a proxy for
            # arbitrary URLs; the caller inlines it instead.
            raise self._unsupported(param, "image URLs; send the image as a base64 data: URL")
        header, comma, data = url[5:].partition(",")
        mime, *params = header.split(";")
        if not comma or not mime or not params or params[-1] != "base64":
            raise InvalidRequest(
                f"invalid value for {param}: an image must be a base64 data: URL", param=param
            )
        return {"inlineData": {"mimeType": mime, "data": data}}

    def _function_calls(
        self, message: Message, where: str, call_names: dict[str, str]
    ) -> list[dict[str, Any]]:
        tool_calls = (message.model_extra or {}).get("tool_calls")
        if not tool_calls:
            return []
        if not isinstance(tool_calls, list):
            raise InvalidRequest(
                f"invalid value for {where}.tool_calls", param=f"{where}.tool_calls"
            )
        parts: list[dict[str, Any]] = []
        for j, call in enumerate(tool_calls):
            param = f"{where}.tool_calls[{j}]"
            function = call.get("function") if isinstance(call, dict) else None
            name = function.get("name") if isinstance(function, dict) else None
            if not isinstance(function, dict) or not isinstance(name, str) or not name:
                raise InvalidRequest(f"invalid value for {param}: a function call", param=param)
            args = _json_object(function.get("arguments"))
            if args is None:
                raise InvalidRequest(
                    f"invalid value for {param}.function.arguments: a JSON object",
                    param=f"{param}.function.arguments",
                )
            part: dict[str, Any] = {"functionCall": {"name": name, "args": args}}
            signature = _signature(call)
            if signature:
                part["thoughtSignature"] = signature
            parts.append(part)
            if isinstance(call.get("id"), str):
                call_names[call["id"]] = name
        if not any("thoughtSignature" in p for p in parts):
            parts[0]["thoughtSignature"] = SKIP_SIGNATURE
        return parts

    def _function_response(
        self, message: Message, where: str, call_names: dict[str, str]
    ) -> dict[str, Any]:
        extra = message.model_extra or {}
        if message.role == "tool":
            call_id = extra.get("tool_call_id")
            name = call_names.get(call_id) if isinstance(call_id, str) else None
            if name is None:
                raise InvalidRequest(
                    f"invalid value for {where}.tool_call_id: it must name a tool call of an "
                    "earlier assistant message",
                    param=f"{where}.tool_call_id",
                )
        elif message.name:
            name = message.name
        else:
            raise InvalidRequest(f"missing required parameter: {where}.name", param=f"{where}.name")
        text = message.text()
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            value = text
        response = value if isinstance(value, dict) else {"content": value}
        return {"functionResponse": {"name": name, "response": response}}

    def _generation_config(self, request: ChatRequest) -> dict[str, Any]:
        config: dict[str, Any] = {}
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if request.top_p is not None:
            config["topP"] = request.top_p
        if request.token_limit is not None:
            config["maxOutputTokens"] = request.token_limit
        if request.stop_list:
            config["stopSequences"] = request.stop_list
        if request.seed is not None:
            config["seed"] = request.seed
        if request.presence_penalty is not None:
            config["presencePenalty"] = request.presence_penalty
        if request.frequency_penalty is not None:
            config["frequencyPenalty"] = request.frequency_penalty
        fmt = request.response_format
        if fmt is not None:
            kind = fmt.get("type")
            schema = fmt.get("json_schema")
            if kind == "json_object":
                config["responseMimeType"] = "application/json"
            elif kind == "json_schema" and isinstance(schema, dict) and "schema" in schema:
                config["responseMimeType"] = "application/json"
                config["responseJsonSchema"] = schema["schema"]
            elif kind != "text":
                raise self._unsupported("response_format", "this response_format")
        return config

    def _declarations(self, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
        declarations = []
        for j, tool in enumerate(tools):
            function = tool.get("function")
            if tool.get("type") != "function" or not isinstance(function, dict):
                raise self._unsupported(f"tools[{j}]", "tools other than functions")
            name = function.get("name")
            if not isinstance(name, str) or not name:
                raise InvalidRequest(
                    f"missing required parameter: tools[{j}].function.name",
                    param=f"tools[{j}].function.name",
                )
            declaration: dict[str, Any] = {"name": name}
            if function.get("description"):
                declaration["description"] = function["description"]
            if function.get("parameters") is not None:
                declaration["parametersJsonSchema"] = function["parameters"]
            declarations.append(declaration)
        return declarations

    def _calling_config(self, request: ChatRequest) -> dict[str, Any]:
        choice = request.tool_choice
        modes = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
        if isinstance(choice, str) and choice in modes:
            return {"mode": modes[choice]}
        if isinstance(choice, dict) and choice.get("type") == "function":
            function = choice.get("function")
            name = function.get("name") if isinstance(function, dict) else None
            if isinstance(name, str) and name:
                return {"mode": "ANY", "allowedFunctionNames": [name]}
        raise self._unsupported("tool_choice", "this tool_choice")


def gemini_error_code(raw: bytes) -> tuple[str | None, str | None]:
    """Gemini's error ``status`` (``INVALID_ARGUMENT``, …) as the code; never its message."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, None
    if isinstance(data, list) and data:  # the streaming endpoint wraps errors in a list
        data = data[0]
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict):
        return None, None
    return identifier(err.get("status")), None


def _output(candidate: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The candidate's text (thoughts left out) and its function-call parts."""
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in parts if isinstance(parts, list) else ():
        if not isinstance(part, dict) or part.get("thought"):
            continue
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif isinstance(part.get("functionCall"), dict):
            calls.append(part)
    return "".join(texts), calls


def _finish(candidate: dict[str, Any], calls: list[dict[str, Any]]) -> str:
    if calls:
        return "tool_calls"
    return FINISH_REASONS.get(candidate.get("finishReason") or "STOP", "stop")


def _usage(meta: Any) -> Usage | None:
    """Gemini's token counts; thinking tokens are billed as output, so they count as such."""
    if not isinstance(meta, dict):
        return None
    try:
        prompt = int(meta.get("promptTokenCount") or 0) + int(
            meta.get("toolUsePromptTokenCount") or 0
        )
        completion = int(meta.get("candidatesTokenCount") or 0) + int(
            meta.get("thoughtsTokenCount") or 0
        )
    except (TypeError, ValueError):
        return None
    return Usage(prompt, completion, "reported")


def _chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def _json_object(arguments: Any) -> dict[str, Any] | None:
    if arguments is None or arguments == "":
        return {}
    if not isinstance(arguments, str):
        return None
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _signature(call: dict[str, Any]) -> str | None:
    extra = call.get("extra_content")
    google = extra.get("google") if isinstance(extra, dict) else None
    signature = google.get("thought_signature") if isinstance(google, dict) else None
    return signature if isinstance(signature, str) and signature else None
