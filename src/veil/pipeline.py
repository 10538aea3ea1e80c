"""The request path, stage by stage, the same for every front (HTTP API, CLI, Python API).

    authenticate → parse → route → dispatch → meter → respond

Moderation, policy, privacy and restore slot in between route and meter as their issues
land. Fronts call ``authenticate`` and ``chat`` and only translate what comes back.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from veil.auth import DEV_PRINCIPAL, KeyStore, Principal, pseudonym
from veil.chat import ChatRequest, Usage
from veil.errors import VeilError
from veil.ledger.usage import UsageRecord, UsageRecorder
from veil.metrics import Metrics
from veil.providers import StreamState
from veil.routing import Route, Router

#: Status recorded when the caller went away before the answer was complete (nginx's 499).
CLIENT_CLOSED = 499


@dataclass(slots=True)
class RequestContext:
    request_id: str
    principal: Principal
    started: float = field(default_factory=time.perf_counter)


def route_headers(route: Route) -> dict[str, str]:
    """What every answer says about where it was served."""
    deployment = route.deployment
    return {
        "x-veil-tier": deployment.provider.tier,
        "x-veil-provider": deployment.provider.name,
        "x-veil-model": deployment.model,
        "x-veil-route-reason": route.reason,
    }


@dataclass(slots=True)
class ChatResult:
    route: Route
    body: dict[str, Any]


@dataclass(slots=True)
class ChatStream:
    """A started stream: the first chunk has arrived (so errors before it were raised)."""

    route: Route
    chunks: AsyncIterator[dict[str, Any]]


class Pipeline:
    def __init__(
        self,
        keys: KeyStore,
        router: Router,
        recorder: UsageRecorder,
        metrics: Metrics,
        salt: str,
        auth_required: bool = True,
    ) -> None:
        self.keys = keys
        self.router = router
        self._recorder = recorder
        self._metrics = metrics
        self._salt = salt
        self._auth_required = auth_required

    # ------------------------------------------------------------ authenticate

    async def authenticate(self, authorization: str | None) -> Principal:
        if not self._auth_required and not authorization:
            return DEV_PRINCIPAL
        return await self.keys.authenticate(authorization)

    # ------------------------------------------------------------ route → dispatch → meter

    async def chat(self, ctx: RequestContext, request: ChatRequest) -> ChatResult | ChatStream:
        try:
            route = self.router.route(request.model)
        except VeilError as exc:
            self.reject(ctx, exc, request)
            raise
        if request.stream:
            chunks = self._stream(ctx, request, route)
            try:
                first = await chunks.__anext__()
            except StopAsyncIteration:
                return ChatStream(route, _empty())
            return ChatStream(route, _prepend(first, chunks))
        deployment = route.deployment
        try:
            completion = await deployment.provider.complete(request, deployment.model)
        except VeilError as exc:
            self._meter(ctx, request, route, Usage(), exc.status, exc.code)
            exc.route_headers = route_headers(route)
            raise
        except Exception:
            self._meter(ctx, request, route, Usage(), 500, "internal_error")
            raise
        body = {
            "id": "chatcmpl-" + ctx.request_id,
            "object": "chat.completion",
            "created": completion.body.get("created") or int(time.time()),
            **completion.body,
        }
        body["id"] = "chatcmpl-" + ctx.request_id
        body["model"] = route.model.name
        self._meter(ctx, request, route, completion.usage, 200, None)
        return ChatResult(route, body)

    async def _stream(
        self, ctx: RequestContext, request: ChatRequest, route: Route
    ) -> AsyncIterator[dict[str, Any]]:
        deployment = route.deployment
        state = StreamState()
        status: int = CLIENT_CLOSED
        code: str | None = "client_closed"
        ident = {"id": "chatcmpl-" + ctx.request_id, "model": route.model.name}
        try:
            async for chunk in deployment.provider.stream(request, deployment.model, state):
                yield {**ident, **chunk, "id": ident["id"], "model": ident["model"]}
            status, code = 200, None
            if request.include_usage:
                yield {
                    **ident,
                    "object": "chat.completion.chunk",
                    "created": int(time.time()),
                    "choices": [],
                    "usage": state.usage.to_dict(),
                }
        except VeilError as exc:
            status, code = exc.status, exc.code
            exc.route_headers = route_headers(route)
            raise
        except Exception:
            status, code = 500, "internal_error"
            raise
        finally:
            # Billed for what was produced, also when the caller left or the upstream broke.
            self._meter(ctx, request, route, state.usage, status, code)

    def reject(
        self, ctx: RequestContext, error: VeilError, request: ChatRequest | None = None
    ) -> None:
        """Meter a request that failed before it was routed (bad body, unknown model)."""
        self._record(ctx, request, None, Usage(method="none"), error.status, error.code)

    def _meter(
        self,
        ctx: RequestContext,
        request: ChatRequest,
        route: Route,
        usage: Usage,
        status: int,
        code: str | None,
    ) -> None:
        seconds = time.perf_counter() - ctx.started
        provider = route.deployment.provider
        self._metrics.observe(
            provider.tier,
            provider.name,
            route.model.name,
            status,
            seconds,
            usage.prompt_tokens,
            usage.completion_tokens,
        )
        self._record(ctx, request, route, usage, status, code, seconds)

    def _record(
        self,
        ctx: RequestContext,
        request: ChatRequest | None,
        route: Route | None,
        usage: Usage,
        status: int,
        code: str | None,
        seconds: float | None = None,
    ) -> None:
        if seconds is None:
            seconds = time.perf_counter() - ctx.started
        user = ctx.principal.user or (request.user if request is not None else None)
        provider = route.deployment.provider if route is not None else None
        self._recorder.record(
            UsageRecord(
                id=ctx.request_id,
                created_at=datetime.now(UTC),
                tenant=ctx.principal.tenant,
                user_hash=pseudonym(self._salt, user),
                key_id=ctx.principal.key_id,
                tier=provider.tier if provider else None,
                provider=provider.name if provider else None,
                model=route.model.name if route else None,
                stream=bool(request and request.stream),
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                token_method=usage.method if route else None,
                latency_ms=round(seconds * 1000, 3),
                status=status,
                error_code=code,
            )
        )


async def _empty() -> AsyncIterator[dict[str, Any]]:
    return
    yield


async def _prepend(
    first: dict[str, Any], rest: AsyncIterator[dict[str, Any]]
) -> AsyncIterator[dict[str, Any]]:
    try:
        yield first
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()  # type: ignore[attr-defined]
