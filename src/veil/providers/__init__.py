"""Providers: one module per wire protocol behind the small interface in ``base``."""

from __future__ import annotations

from veil.config import (
    FakeProviderConfig,
    LlamaCppProviderConfig,
    OpenAICompatibleProviderConfig,
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
    if isinstance(config, FakeProviderConfig):
        from veil.providers.fake import FakeProvider

        return FakeProvider(config)
    raise TypeError(f"unknown provider config {type(config).__name__}")
