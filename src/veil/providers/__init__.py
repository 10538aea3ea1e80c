"""Providers: one module per wire protocol behind the small interface in ``base``."""

from __future__ import annotations

from veil.config import (
    AnthropicProviderConfig,
    AzureOpenAIProviderConfig,
    FakeProviderConfig,
    GeminiProviderConfig,
    LlamaCppProviderConfig,
    OpenAICompatibleProviderConfig,
    OpenAIProviderConfig,
    PrivateNodeProviderConfig,
    ProviderConfig,
)
from veil.providers.base import Completion, Provider, StreamState

__all__ = ["Completion", "Provider", "StreamState", "build_provider"]


def build_provider(config: ProviderConfig) -> Provider:
    """Turn one provider's config into its runtime object (not yet started)."""
    if isinstance(config, LlamaCppProviderConfig):
        from veil.providers.llama_cpp import LlamaCppProvider

        return LlamaCppProvider(config)
    if isinstance(config, OpenAICompatibleProviderConfig):
        from veil.providers.openai_compatible import OpenAICompatibleProvider

        return OpenAICompatibleProvider(config)
    if isinstance(config, OpenAIProviderConfig):
        from veil.providers.openai import OpenAIProvider

        return OpenAIProvider(config)
    if isinstance(config, AzureOpenAIProviderConfig):
        from veil.providers.azure_openai import AzureOpenAIProvider

        return AzureOpenAIProvider(config)
    if isinstance(config, AnthropicProviderConfig):
        from veil.providers.anthropic import AnthropicProvider

        return AnthropicProvider(config)
    if isinstance(config, GeminiProviderConfig):
        from veil.providers.gemini import GeminiProvider

        return GeminiProvider(config)
    if isinstance(config, PrivateNodeProviderConfig):
        from veil.providers.private_node import PrivateNodeProvider

        return PrivateNodeProvider(config)
    if isinstance(config, FakeProviderConfig):
        from veil.providers.fake import FakeProvider

        return FakeProvider(config)
    raise TypeError(f"unknown provider config {type(config).__name__}")
