"""Real local servers speaking OpenAI's and Azure OpenAI's Chat Completions, for tests.

``OpenAIServer`` answers both ``POST /v1/chat/completions`` (OpenAI: behaviour picked by
the body's ``model``) and ``POST /openai/deployments/{deployment}/chat/completions``
(Azure: behaviour picked by the deployment, ``api-version`` required). It records every
request (path, query, headers, body) and holds each side to its documented rules:

- OpenAI refuses ``metadata`` unless ``store`` is true, and requires ``model``;
- Azure refuses request fields its GA API version (2024-10-21) does not know, as Azure
  does ("Unrecognized request argument supplied"), and streams the way Azure does: a first
  chunk with empty ``choices`` and ``prompt_filter_results``, ``content_filter_results``
  on every choice, ``usage: null`` until the usage chunk.

Behaviours: ``ok``, ``echo``, ``tools`` (two tool calls; streamed in argument pieces),
``tools-echo`` (one tool call whose arguments quote the prompt, streamed a word at a time),
``length``, ``content-filter`` (Azure's 400), ``error-<status>``, ``cut`` (the stream
stops without ``[DONE]``). Error messages quote the prompt, so tests can prove Veil never
passes an upstream's message on.
"""

from __future__ import annotations

import json
import time
from typing import Any, TypeVar

from aiohttp import web
from openai.types.chat import ChatCompletionMessage, ChatCompletionMessageFunctionToolCall

from tests.support.local import LocalServer, Received

T = TypeVar("T")
USAGE = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
TOOL_CALLS = [
    ("call_w", "get_weather", '{"unit": "celsius", "days": 2}'),
    ("call_t", "get_time", '{"zone": "utc"}'),
]
# The fields of Azure's GA 2024-10-21 createChatCompletionRequest (stream_options
# included: Azure accepts it on that version).
AZURE_FIELDS = {
    "messages",
    "data_sources",
    "temperature",
    "top_p",
    "stream",
    "stream_options",
    "stop",
    "max_tokens",
    "max_completion_tokens",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "user",
    "logprobs",
    "top_logprobs",
    "n",
    "parallel_tool_calls",
    "response_format",
    "seed",
    "tools",
    "tool_choice",
    "function_call",
    "functions",
}
FILTER_RESULTS = {
    "hate": {"filtered": False, "severity": "safe"},
    "self_harm": {"filtered": False, "severity": "safe"},
    "sexual": {"filtered": False, "severity": "safe"},
    "violence": {"filtered": False, "severity": "safe"},
}


def function_calls(message: ChatCompletionMessage) -> list[ChatCompletionMessageFunctionToolCall]:
    """The message's tool calls, each checked to be a function call."""
    calls = message.tool_calls or []
    assert all(isinstance(c, ChatCompletionMessageFunctionToolCall) for c in calls)
    return [c for c in calls if isinstance(c, ChatCompletionMessageFunctionToolCall)]


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):
                return "".join(p.get("text", "") for p in content)
            return str(content or "")
    return ""


def sse(data: Any) -> bytes:
    return b"data: " + (data if isinstance(data, bytes) else json.dumps(data).encode()) + b"\n\n"


class OpenAIServer(LocalServer):
    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._azure)

    @property
    def openai_url(self) -> str:
        return self.origin + "/v1"

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        got = await self.record(request)
        if "model" not in got.body:
            return _error(400, "you must provide a model parameter", None, None)
        if "metadata" in got.body and got.body.get("store") is not True:
            return _error(
                400, "The 'metadata' parameter is only allowed when 'store' is enabled.", "metadata"
            )
        return await self._answer(request, got, got.body["model"], azure=False)

    async def _azure(self, request: web.Request) -> web.StreamResponse:
        got = await self.record(request)
        if "api-version" not in got.query:
            return web.json_response(
                {"error": {"code": "404", "message": "Resource not found"}}, status=404
            )
        unknown = sorted(set(got.body) - AZURE_FIELDS)
        if unknown:
            return _error(400, f"Unrecognized request argument supplied: {unknown[0]}", None)
        return await self._answer(request, got, request.match_info["deployment"], azure=True)

    async def _answer(
        self, request: web.Request, got: Received, behaviour: str, *, azure: bool
    ) -> web.StreamResponse:
        prompt = last_user_text(got.body["messages"])
        if behaviour.startswith("error-"):
            status = int(behaviour.split("-")[1])
            headers = {"retry-after": "7"} if status == 429 else {}
            return _error(status, f"upstream says no; it saw: {prompt}", "messages", headers)
        if behaviour == "content-filter":
            return web.json_response(
                {
                    "error": {
                        "message": f"The response was filtered: {prompt}",
                        "type": None,
                        "param": "prompt",
                        "code": "content_filter",
                        "status": 400,
                        "innererror": {
                            "code": "ResponsibleAIPolicyViolation",
                            "content_filter_result": FILTER_RESULTS
                            | {"violence": {"filtered": True, "severity": "high"}},
                        },
                    }
                },
                status=400,
            )
        text = f"echo: {prompt}" if behaviour == "echo" else "Hello from upstream."
        finish = {"length": "length", "tools": "tool_calls", "tools-echo": "tool_calls"}.get(
            behaviour, "stop"
        )
        calls = TOOL_CALLS
        if behaviour == "tools-echo":
            calls = [("call_s", "search", json.dumps({"query": prompt}))]
        if not got.body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if behaviour.startswith("tools"):
                message = {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                        for i, n, a in calls
                    ],
                }
            choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish}
            answer: dict[str, Any] = {
                "id": "chatcmpl-upstream",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": behaviour,
                "choices": [choice],
                "usage": USAGE,
            }
            if azure:
                choice["content_filter_results"] = FILTER_RESULTS
                answer["prompt_filter_results"] = [
                    {"prompt_index": 0, "content_filter_results": FILTER_RESULTS}
                ]
            return web.json_response(answer)
        return await self._stream(request, got, behaviour, text, finish, calls, azure=azure)

    async def _stream(
        self,
        request: web.Request,
        got: Received,
        behaviour: str,
        text: str,
        finish: str,
        calls: list[tuple[str, str, str]],
        *,
        azure: bool,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish_reason}
            out: dict[str, Any] = {
                "id": "chatcmpl-upstream",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": behaviour,
                "choices": [choice],
            }
            if azure:
                choice["content_filter_results"] = FILTER_RESULTS if delta else {}
                out["usage"] = None
            return out

        if azure:
            await resp.write(
                sse(
                    {
                        "id": "",
                        "object": "",
                        "created": 0,
                        "model": "",
                        "prompt_filter_results": [
                            {"prompt_index": 0, "content_filter_results": FILTER_RESULTS}
                        ],
                        "choices": [],
                        "usage": None,
                    }
                )
            )
        if behaviour.startswith("tools"):
            await resp.write(sse(chunk({"role": "assistant", "content": None})))
            for index, (call_id, name, args) in enumerate(calls):
                head = {"index": index, "id": call_id, "type": "function"}
                head["function"] = {"name": name, "arguments": ""}
                await resp.write(sse(chunk({"tool_calls": [head]})))
                pieces = [args[:7], args[7:]]
                if behaviour == "tools-echo":
                    pieces = [w + " " for w in args.split(" ")[:-1]] + args.split(" ")[-1:]
                for piece in pieces:
                    more = {"index": index, "function": {"arguments": piece}}
                    await resp.write(sse(chunk({"tool_calls": [more]})))
        else:
            words = text.split(" ")
            for i, word in enumerate(words):
                delta: dict[str, Any] = {"content": word if i == 0 else " " + word}
                if i == 0:
                    delta["role"] = "assistant"
                await resp.write(sse(chunk(delta)))
                if behaviour == "cut" and i == 1:
                    return resp
        await resp.write(sse(chunk({}, finish)))
        if (got.body.get("stream_options") or {}).get("include_usage"):
            tail = chunk({})
            tail["choices"] = []
            tail["usage"] = USAGE
            await resp.write(sse(tail))
        await resp.write(sse(b"[DONE]"))
        return resp


def _error(
    status: int,
    message: str,
    param: str | None,
    headers: dict[str, str] | None = None,
    code: str | None = "test_error",
) -> web.Response:
    err = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    if status != 400:
        err["code"] = f"test_{status}"
    return web.json_response({"error": err}, status=status, headers=headers or {})
