"""The provider interface: a normalized chat request in, an answer or a chunk stream out.

An adapter only translates between Veil's OpenAI-shaped request/answer and its upstream's
wire protocol; the HTTP mechanics (pools, timeouts, error mapping) live in
``veil.providers.http``. Provider-specific behaviour stays in the provider's own module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from veil.chat import ChatRequest, Usage
from veil.config import ProviderIdentity, Timeouts

#: The connect timeout of the deployment being called, when it overrides its provider's;
#: set by the pipeline around the call, read by the HTTP layer.
CONNECT_TIMEOUT: ContextVar[float | None] = ContextVar("veil_connect_timeout", default=None)


@dataclass(slots=True)
class Completion:
    """A whole answer: an OpenAI ``chat.completion`` dict and the usage it cost."""

    body: dict[str, Any]
    usage: Usage
    #: What served it, when the provider can prove it: a private node's measurement.
    served_by: str | None = None


@dataclass(slots=True)
class StreamState:
    """Filled in by a provider while it streams: the usage, once known."""

    usage: Usage = field(default_factory=Usage)
    #: What serves it, when the provider can prove it: a private node's measurement.
    served_by: str | None = None


class Provider:
    """Base class of every provider; subclasses implement ``complete`` and ``stream``."""

    def __init__(self, config: ProviderIdentity) -> None:
        self.name = config.name
        self.tier = config.tier
        self.partner = config.partner
        self.cloud = config.cloud
        self.region = config.region
        timeout = getattr(config, "timeout", None)
        #: Veil's own deadline for the first token (``timeout.first_token``), if any.
        self.first_token_timeout = timeout.first_token if isinstance(timeout, Timeouts) else None

    def prepare(self) -> None:
        """Do slow, loop-independent set-up (load a model) before the server starts."""

    async def start(self) -> None:
        """Acquire resources (load a model if not prepared, open a connection pool)."""

    async def close(self) -> None:
        """Release them."""

    def ready(self) -> bool:
        return True

    #: Send partners a per-partner pseudonym of the user (else no user at all).
    send_user_pseudonym: bool = False
    #: For providers with a local queue: how many requests are admitted now.
    queue_depth: Callable[[], int] | None = None

    #: Tokens a model here reads and writes at most, when the provider knows (device).
    context_window: int | None = None

    def supports(self, request: ChatRequest) -> bool:
        """Can this provider honour every field of the request? (The router asks before
        choosing it for ``auto``; the provider itself refuses what it cannot do.)"""
        return True

    def offered_models(self) -> dict[str, str]:
        """Models this provider serves without being listed in config: public → upstream."""
        return {}

    async def complete(self, request: ChatRequest, model: str) -> Completion:
        raise NotImplementedError

    def stream(
        self, request: ChatRequest, model: str, state: StreamState
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield OpenAI ``chat.completion.chunk`` dicts; set ``state.usage`` by the end.

        Usage-only chunks (``choices: []``) are not yielded: the pipeline emits its own
        when the caller asked for ``stream_options.include_usage``.
        """
        raise NotImplementedError
