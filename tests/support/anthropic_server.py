"""A real Anthropic Messages API server for integration tests, run on a thread of its own.

It speaks ``POST /v1/messages`` as Anthropic documents it: it checks the ``x-api-key`` and
``anthropic-version`` headers and the required body fields (``model``, ``max_tokens``,
``messages`` alternating user/assistant, no ``system`` role inside them, ``temperature``
in 0..1), answers with a ``message`` object or an SSE stream of ``message_start``,
``content_block_*``, ``ping``, ``message_delta`` and ``message_stop`` events, and fails
with Anthropic's error shape ``{"type": "error", "error": {"type", "message"}}``. Every
request is remembered, so tests can assert what Veil sent.

Behaviour is picked by ``model``:

``ok``            "Hello from Claude." (stop_reason ``end_turn``)
``echo``          "echo: " + the last user message's text
``tool``          a text block, then two ``tool_use`` blocks (stop_reason ``tool_use``);
                  streamed, tool inputs arrive as ``input_json_delta`` fragments
``length``        stop_reason ``max_tokens``
``stop-seq``      stop_reason ``stop_sequence``
``cache``         usage with cache creation and cache read input tokens
``no-usage``      an answer without ``usage``
``error-N``       HTTP N (400, 401, 429 with ``retry-after: 7``, 500, 529) with an error
                  body whose message quotes the prompt
``stream-error``  streams some text, then an ``overloaded_error`` event
``early-error``   a 200 stream whose first event is an ``overloaded_error``
``cut``           the stream stops after some text, without ``message_stop``
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from tests.support.local import LocalServer

USAGE = {"input_tokens": 21, "output_tokens": 7}
TOOL_CALLS = [
    ("toolu_01A", "get_weather", {"city": "Paris", "unit": "celsius"}),
    ("toolu_01B", "get_time", {"tz": "Europe/Paris"}),
]
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


class AnthropicServer(LocalServer):
    def __init__(self, api_key: str) -> None:
        super().__init__()
        self.api_key = api_key

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/messages", self._messages)

    # ------------------------------------------------------------------ the API

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("x-api-key") != self.api_key:
            return _error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return _error(400, "invalid_request_error", "anthropic-version: header is required")
        if not request.headers.get("content-type", "").startswith("application/json"):
            return _error(400, "invalid_request_error", "content-type must be application/json")
        try:
            body = (await self.record(request)).body
        except json.JSONDecodeError:
            return _error(400, "invalid_request_error", "the body is not valid JSON")
        problem = _validate(body)
        if problem:
            return _error(400, "invalid_request_error", problem)
        model = body["model"]
        said = _last_user_text(body["messages"])
        if model.startswith("error-"):
            status = int(model.split("-")[1])
            headers = {"retry-after": "7"} if status == 429 else {}
            kind = ERROR_TYPES.get(status, "api_error")
            return _error(status, kind, f"upstream says no; it saw: {said}", headers)
        blocks = _answer(model, said)
        stop_reason = {"tool": "tool_use", "length": "max_tokens", "stop-seq": "stop_sequence"}
        usage: dict[str, int] | None = dict(USAGE)
        if model == "cache":
            usage = {**USAGE, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 1000}
        elif model == "no-usage":
            usage = None
        message: dict[str, Any] = {
            "id": "msg_test01",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": blocks,
            "stop_reason": stop_reason.get(model, "end_turn"),
            "stop_sequence": "END" if model == "stop-seq" else None,
        }
        if usage is not None:
            message["usage"] = usage
        if not body.get("stream"):
            return web.json_response(message)
        return await self._stream(request, message)

    async def _stream(self, request: web.Request, message: dict[str, Any]) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        model = message["model"]

        async def send(event: dict[str, Any]) -> None:
            payload = json.dumps(event).encode()
            await resp.write(b"event: " + event["type"].encode() + b"\ndata: " + payload + b"\n\n")

        if model == "early-error":
            await send({"type": "error", "error": {"type": "overloaded_error", "message": "x"}})
            return resp
        start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
        start["usage"] = {"input_tokens": USAGE["input_tokens"], "output_tokens": 1}
        await send({"type": "message_start", "message": start})
        await send({"type": "ping"})
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                await send(
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {"type": "text", "text": ""},
                    }
                )
                words = block["text"].split(" ")
                for i, word in enumerate(words):
                    piece = word if i == 0 else " " + word
                    delta = {"type": "text_delta", "text": piece}
                    await send({"type": "content_block_delta", "index": index, "delta": delta})
                    if model == "cut" and i == 1:
                        return resp
                    if model == "stream-error" and i == 1:
                        error = {"type": "overloaded_error", "message": "Overloaded"}
                        await send({"type": "error", "error": error})
                        return resp
            else:
                start_block = {**block, "input": {}}
                await send(
                    {"type": "content_block_start", "index": index, "content_block": start_block}
                )
                text = json.dumps(block["input"])
                for n in range(0, len(text), 7):  # fragments, as Anthropic sends them
                    delta = {"type": "input_json_delta", "partial_json": text[n : n + 7]}
                    await send({"type": "content_block_delta", "index": index, "delta": delta})
            await send({"type": "content_block_stop", "index": index})
        final: dict[str, Any] = {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
        }
        if "usage" in message:
            final["usage"] = {"output_tokens": message["usage"]["output_tokens"]}
        await send(final)
        await send({"type": "message_stop"})
        return resp


def _validate(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "the body must be an object"
    if not isinstance(body.get("model"), str):
        return "model: field required"
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        return "max_tokens: field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: field required"
    for i, m in enumerate(messages):
        if m.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: must be user or assistant"
        if i and m["role"] == messages[i - 1]["role"]:
            return "messages: roles must alternate between user and assistant"
    temperature = body.get("temperature")
    if temperature is not None and not 0 <= temperature <= 1:
        return "temperature: must be between 0 and 1"
    return None


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m["role"] != "user":
            continue
        if isinstance(m["content"], str):
            return str(m["content"])
        return "".join(b.get("text", "") for b in m["content"] if b.get("type") == "text")
    return ""


def _answer(model: str, said: str) -> list[dict[str, Any]]:
    if model == "tool":
        return [{"type": "text", "text": "Let me check."}] + [
            {"type": "tool_use", "id": id_, "name": name, "input": args}
            for id_, name, args in TOOL_CALLS
        ]
    if model == "echo":
        return [{"type": "text", "text": f"echo: {said}"}]
    return [{"type": "text", "text": "Hello from Claude."}]


def _error(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_x"}
    return web.json_response(body, status=status, headers=headers)
