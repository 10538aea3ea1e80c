"""Any server speaking OpenAI Chat Completions: Ollama, vLLM, llama.cpp's server, …

The caller's request is forwarded with the deployment's model name; Veil always asks for
usage when streaming (``stream_options.include_usage``) so every token is metered, and
strips the usage chunk again unless the caller asked for it. The caller's headers and
client address are never forwarded; ``user`` is forwarded only when the request still
carries one after the pipeline has decided what identity, if any, may leave.

``OpenAIProvider`` and ``AzureOpenAIProvider`` subclass this one: they change the URL,
the credential header and the body, and share the rest.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

import orjson

from veil.chat import ChatRequest, Usage
from veil.config import RemoteProviderConfig
from veil.errors import UpstreamError
from veil.providers.base import Completion, Provider, StreamState
from veil.providers.http import HttpClient


class OpenAICompatibleProvider(Provider):
    #: Fields of ChatRequest that are Veil's business, not the upstream's.
    not_forwarded: ClassVar[set[str]] = {"stream_options", "safety_identifier"}

    def __init__(self, config: RemoteProviderConfig) -> None:
        super().__init__(config)
        self.send_user_pseudonym = config.send_user_pseudonym
        self._url = config.base_url + "/chat/completions"
        # Lower-cased, so a configured "Authorization" and api_key cannot both be sent.
        self._headers = {k.lower(): v.get_secret_value() for k, v in config.headers.items()}
        self._headers["content-type"] = "application/json"
        if config.api_key is not None:
            name, value = self._credential(config.api_key.get_secret_value())
            self._headers[name] = value
        self._http = HttpClient(config.name, config.timeout, config.max_connections)

    def _credential(self, api_key: str) -> tuple[str, str]:
        """The header that carries the configured key."""
        return "authorization", "Bearer " + api_key

    def _url_for(self, model: str) -> str:
        return self._url

    async def start(self) -> None:
        await self._http.start()

    async def close(self) -> None:
        await self._http.close()

    def _body(self, request: ChatRequest, model: str) -> dict[str, Any]:
        body = request.model_dump(exclude_none=True, exclude=self.not_forwarded)
        body["model"] = model
        if request.stream:
            body["stream_options"] = {"include_usage": True}
        return body

    async def complete(self, request: ChatRequest, model: str) -> Completion:
        data = await self._http.post_json(
            self._url_for(model), self._body(request, model), self._headers
        )
        if not isinstance(data.get("choices"), list):
            raise UpstreamError(f"provider {self.name} answered without choices")
        # No usage from the upstream: recorded as such (``missing``), never guessed as zero.
        usage = Usage.from_openai(data.get("usage")) or Usage(method="missing")
        return Completion(data, usage)

    async def stream(
        self, request: ChatRequest, model: str, state: StreamState
    ) -> AsyncIterator[dict[str, Any]]:
        async with self._http.post_sse(
            self._url_for(model), self._body(request, model), self._headers
        ) as events:
            async for data in events:
                if data == b"[DONE]":
                    return
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError:
                    raise UpstreamError(
                        f"provider {self.name} sent an invalid stream event"
                    ) from None
                if not isinstance(chunk, dict):
                    raise UpstreamError(f"provider {self.name} sent an invalid stream event")
                if "error" in chunk:
                    raise UpstreamError(f"provider {self.name} reported an error mid-stream")
                usage = Usage.from_openai(chunk.get("usage"))
                if usage is not None:
                    state.usage = usage
                    chunk.pop("usage", None)
                # Chunks without choices (the usage chunk, Azure's prompt_filter_results
                # chunk) are not passed on.
                if chunk.get("choices"):
                    if state.usage.method != "reported":
                        # One content chunk is about one token; exact counting comes with
                        # metering. The method says it was estimated.
                        state.usage.method = "estimated"
                        state.usage.completion_tokens += 1
                    yield chunk
        raise UpstreamError(f"provider {self.name} closed the stream before it ended")
