"""A real OpenAI-compatible HTTP server for integration tests, run on a thread of its own.

It speaks Chat Completions as OpenAI documents it (JSON and SSE) and remembers every
request it received, so tests can assert what Veil sent. Behaviour is picked by the
``model`` in the request: ``ok``, ``echo``, ``no-usage``, ``error-400``, ``error-401``,
``error-429``, ``error-500``, ``error-503``, ``slow`` (sleeps ``SLOW_SECONDS``),
``invalid-json``, ``cut`` (the stream ends without ``[DONE]``).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

from tests.support.local import LocalServer, free_port

__all__ = ["SLOW_SECONDS", "Upstream", "free_port"]

SLOW_SECONDS = 3.0


class Upstream(LocalServer):
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._chat)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = (await self.record(request)).body
        model = body.get("model", "ok")
        last_user = next(
            (m.get("content") for m in reversed(body["messages"]) if m["role"] == "user"), ""
        )
        text = f"echo: {last_user}" if model == "echo" else "Hello from upstream."
        if model.startswith("error-"):
            status = int(model.split("-")[1])
            headers = {"retry-after": "7"} if status == 429 else {}
            err = {
                "error": {
                    "message": f"upstream says no; it saw: {last_user}",
                    "type": "invalid_request_error",
                    "code": f"test_{status}",
                    "param": "messages",
                }
            }
            return web.json_response(err, status=status, headers=headers)
        if model == "slow":
            await asyncio.sleep(SLOW_SECONDS)
        if model == "invalid-json":
            return web.Response(text="{not json", content_type="application/json")
        usage = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
        if not body.get("stream"):
            answer: dict[str, Any] = {
                "id": "chatcmpl-upstream",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
            }
            if model != "no-usage":
                answer["usage"] = usage
            return web.json_response(answer)
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        words = text.split(" ")
        for i, word in enumerate(words):
            chunk = {
                "id": "chatcmpl-upstream",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"content": word if i == 0 else " " + word},
                        "finish_reason": None,
                    }
                ],
            }
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            if model == "cut" and i == 1:
                return resp
        final = {
            "id": "chatcmpl-upstream",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
        await resp.write(b"data: " + json.dumps(final).encode() + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage") and model != "no-usage":
            tail = {
                "id": "chatcmpl-upstream",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            await resp.write(b"data: " + json.dumps(tail).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp
