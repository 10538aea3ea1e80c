"""Azure OpenAI: Chat Completions behind per-deployment URLs.

``POST {base_url}/openai/deployments/{deployment}/chat/completions?api-version=…`` with
the key in an ``api-key`` header; the deployment (the model name Veil was given) is in
the URL, not the body. Streams are OpenAI's, except that Azure may open with a chunk
whose ``choices`` are empty and which carries only ``prompt_filter_results``: the shared
stream reader skips it like the usage chunk. A prompt stopped by Azure's content filter
is a 400 with code ``content_filter``, which the shared error mapping passes on.

``store`` and ``metadata`` are never sent. Azure stores nothing unless ``store`` is true,
and the GA API versions (``2024-10-21``, Veil's default) do not know the field at all —
Azure answers unknown fields with a 400 — so leaving both out is the one body that means
"do not keep this" on every API version.
"""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import quote

from veil.chat import ChatRequest
from veil.config import AzureOpenAIProviderConfig
from veil.providers.openai_compatible import OpenAICompatibleProvider


class AzureOpenAIProvider(OpenAICompatibleProvider):
    not_forwarded: ClassVar[set[str]] = OpenAICompatibleProvider.not_forwarded | {
        "store",
        "metadata",
    }

    def __init__(self, config: AzureOpenAIProviderConfig) -> None:
        super().__init__(config)
        self._deployments = config.base_url + "/openai/deployments/"
        self._query = "/chat/completions?api-version=" + quote(config.api_version, safe="")

    def _credential(self, api_key: str) -> tuple[str, str]:
        return "api-key", api_key

    def _url_for(self, model: str) -> str:
        return self._deployments + quote(model, safe="") + self._query

    def _body(self, request: ChatRequest, model: str) -> dict[str, Any]:
        body = super()._body(request, model)
        del body["model"]
        return body
