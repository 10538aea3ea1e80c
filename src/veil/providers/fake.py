"""A deterministic provider for tests, driven by the model name.

``echo`` answers with the last user message; ``slow`` does the same one word at a time
with ``token_delay`` between words; ``flaky`` fails every other call (the first one fails);
``error-500``, ``error-503`` and ``error-429`` fail like an upstream with that status;
``timeout`` fails like an upstream that reported a timeout; ``hang`` never answers (a
stream sends its role chunk, then nothing), for Veil's own deadlines to end; ``cut``
streams a few words and then loses the connection mid-stream; ``crash`` raises a plain exception whose message
quotes the prompt — a stand-in for a bug, to prove such messages never reach a log.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from veil.chat import ChatRequest, Usage
from veil.config import FakeProviderConfig
from veil.errors import (
    InvalidRequest,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from veil.providers.base import Completion, Provider, StreamState

BEHAVIOURS = (
    "echo",
    "slow",
    "flaky",
    "error-500",
    "error-503",
    "error-429",
    "timeout",
    "hang",
    "cut",
    "crash",
)


class FakeProvider(Provider):
    def __init__(self, config: FakeProviderConfig) -> None:
        super().__init__(config)
        self._delay = config.token_delay
        self._calls: dict[str, int] = {}

    def offered_models(self) -> dict[str, str]:
        return {f"{self.name}/{b}": b for b in BEHAVIOURS}

    def _words(self, request: ChatRequest, model: str) -> list[str]:
        behaviour = model.split("/")[-1]
        if behaviour not in BEHAVIOURS:
            raise InvalidRequest(f"the fake provider has no behaviour {behaviour!r}", param="model")
        if behaviour == "flaky":
            n = self._calls[behaviour] = self._calls.get(behaviour, 0) + 1
            if n % 2 == 1:
                raise UpstreamUnavailable(f"provider {self.name}: flaky upstream failed this call")
        if behaviour == "error-500":
            raise UpstreamError(f"provider {self.name} returned HTTP 500")
        if behaviour == "error-503":
            raise UpstreamUnavailable(f"provider {self.name} returned HTTP 503")
        if behaviour == "error-429":
            raise RateLimited(f"provider {self.name} is rate limiting", retry_after=2)
        if behaviour == "timeout":
            raise UpstreamTimeout(f"provider {self.name} did not answer in time")
        last = next((m for m in reversed(request.messages) if m.role == "user"), None)
        if behaviour == "crash" and not request.stream:
            raise RuntimeError(f"simulated bug while handling {last.text() if last else ''!r}")
        words = (last.text() if last else "").split()
        limit = request.token_limit
        return words[:limit] if limit else words

    def _usage(self, request: ChatRequest, words: list[str]) -> Usage:
        prompt = sum(len(m.text().split()) for m in request.messages)
        return Usage(prompt, len(words), "counted")

    async def complete(self, request: ChatRequest, model: str) -> Completion:
        words = self._words(request, model)
        if model.endswith("hang"):
            await asyncio.Event().wait()
        if model.endswith("slow"):
            await asyncio.sleep(self._delay * len(words))
        usage = self._usage(request, words)
        body: dict[str, Any] = {
            "object": "chat.completion",
            "created": int(time.time()),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": " ".join(words)},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage.to_dict(),
        }
        return Completion(body, usage)

    async def stream(
        self, request: ChatRequest, model: str, state: StreamState
    ) -> AsyncIterator[dict[str, Any]]:
        words = self._words(request, model)
        behaviour = model.split("/")[-1]
        yield _chunk({"role": "assistant", "content": ""})
        if behaviour == "hang":
            await asyncio.Event().wait()
        for i, word in enumerate(words):
            if behaviour == "cut" and i == 2:
                raise UpstreamError(f"provider {self.name} closed the stream before it ended")
            if behaviour == "crash" and i == 1:
                raise RuntimeError(f"simulated bug mid-stream at {word!r}")
            if behaviour == "slow":
                await asyncio.sleep(self._delay)
            state.usage = Usage(self._usage(request, []).prompt_tokens, i + 1, "counted")
            yield _chunk({"content": word if i == 0 else " " + word})
        state.usage = self._usage(request, words)
        yield _chunk({}, "stop")


def _chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
