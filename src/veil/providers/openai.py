"""OpenAI's own Chat Completions API.

The wire protocol is the one ``OpenAICompatibleProvider`` speaks; what differs is policy.
Veil never lets a partner keep a conversation, so every request says ``"store": false``
whatever the caller asked. ``metadata`` is dropped with it: OpenAI uses it only to tag
stored completions and refuses it when ``store`` is off. The organization and project
headers come from config, never from the caller.
"""

from __future__ import annotations

from typing import Any, ClassVar

from veil.chat import ChatRequest
from veil.config import OpenAIProviderConfig
from veil.providers.openai_compatible import OpenAICompatibleProvider


class OpenAIProvider(OpenAICompatibleProvider):
    not_forwarded: ClassVar[set[str]] = OpenAICompatibleProvider.not_forwarded | {
        "store",
        "metadata",
    }

    def __init__(self, config: OpenAIProviderConfig) -> None:
        super().__init__(config)
        if config.organization:
            self._headers["openai-organization"] = config.organization
        if config.project:
            self._headers["openai-project"] = config.project

    def _body(self, request: ChatRequest, model: str) -> dict[str, Any]:
        body = super()._body(request, model)
        body["store"] = False
        return body
