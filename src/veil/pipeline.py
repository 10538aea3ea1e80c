"""The request path, stage by stage, the same for every front (HTTP API, CLI, Python API).

    authenticate → parse → route → check policy → consent → protect → dispatch → restore
    → meter → respond

Fronts call ``authenticate`` and ``chat`` and only translate what comes back. Moderation
slots in around dispatch when it lands.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from veil.auth import DEV_PRINCIPAL, KeyStore, Principal, pseudonym
from veil.chat import ChatRequest, Usage
from veil.errors import VeilError
from veil.gate import Clearance, Gate, Outbound
from veil.ledger.usage import UsageRecord, UsageRecorder
from veil.metrics import Metrics
from veil.policy import PolicyEngine
from veil.providers import StreamState
from veil.routing import Route, Router

#: Status recorded when the caller went away before the answer was complete (nginx's 499).
CLIENT_CLOSED = 499
#: Failures after which the next allowed deployment is tried (before any chunk was sent).
_FAILOVER_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(slots=True)
class RequestContext:
    request_id: str
    principal: Principal
    #: Partners the caller consented to for this request (``x-veil-consent``).
    consent: frozenset[str] = frozenset()
    started: float = field(default_factory=time.perf_counter)


def route_headers(route: Route, outbound: Outbound | None = None) -> dict[str, str]:
    """What every answer says about where it was served and what left."""
    deployment = route.deployment
    headers = {
        "x-veil-tier": deployment.provider.tier,
        "x-veil-provider": deployment.provider.name,
        "x-veil-model": deployment.model,
        "x-veil-route-reason": route.reason,
    }
    if outbound is not None and outbound.pseudonymizer is not None:
        headers["x-veil-redactions"] = str(sum(outbound.redactions.values()))
    return headers


@dataclass(slots=True)
class ChatResult:
    route: Route
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass(slots=True)
class ChatStream:
    """A started stream: the first chunk has arrived (so errors before it were raised)."""

    route: Route
    chunks: AsyncIterator[dict[str, Any]]
    headers: dict[str, str]


class Pipeline:
    def __init__(
        self,
        keys: KeyStore,
        router: Router,
        policy: PolicyEngine,
        gate: Gate,
        recorder: UsageRecorder,
        metrics: Metrics,
        salt: str,
        auth_required: bool = True,
    ) -> None:
        self.keys = keys
        self.router = router
        self.policy = policy
        self._gate = gate
        self._recorder = recorder
        self._metrics = metrics
        self._salt = salt
        self._auth_required = auth_required

    # ------------------------------------------------------------ authenticate

    async def authenticate(self, authorization: str | None) -> Principal:
        if not self._auth_required and not authorization:
            return DEV_PRINCIPAL
        return await self.keys.authenticate(authorization)

    # ------------------------------------------------------------ route → … → meter

    async def chat(self, ctx: RequestContext, request: ChatRequest) -> ChatResult | ChatStream:
        policy = None
        try:
            route = self.router.route(request.model)
            decision = self.policy.check(ctx.principal.tenant, route.model)
            policy = decision.summary()
            clearance = await self._gate.clear(
                ctx.principal, request, decision.allowed, ctx.consent
            )
        except VeilError as exc:
            self.reject(ctx, exc, request, policy=policy or _denied(exc))
            raise
        reason = f"{route.reason}; {policy}"
        if clearance.unconsented:
            names = ", ".join(d.provider.name for d in clearance.unconsented)
            reason += f"; skipped {names} (no consent)"
        last = len(clearance.deployments) - 1
        for attempt, deployment in enumerate(clearance.deployments):
            served = Route(route.requested, route.model, deployment, reason)
            if attempt:
                served = Route(route.requested, route.model, deployment, f"{reason}; failed over")
            try:
                return await self._dispatch(
                    ctx, request, served, clearance, policy, attempt == last
                )
            except VeilError as exc:
                if attempt == last or exc.status not in _FAILOVER_STATUSES:
                    raise
        raise AssertionError("unreachable: a clearance always holds a deployment")

    async def _dispatch(
        self,
        ctx: RequestContext,
        request: ChatRequest,
        route: Route,
        clearance: Clearance,
        policy: str,
        final: bool,
    ) -> ChatResult | ChatStream:
        try:
            outbound = await self._gate.outbound(
                ctx.principal, request, route.deployment, clearance
            )
        except VeilError as exc:  # e.g. personal data in block mode
            self._meter(ctx, request, route, None, Usage(), exc.status, exc.code, policy)
            raise
        headers = route_headers(route, outbound)
        if request.stream:
            chunks = self._stream(ctx, request, route, outbound, policy, final)
            try:
                first = await chunks.__anext__()
            except StopAsyncIteration:
                return ChatStream(route, _empty(), headers)
            return ChatStream(route, _prepend(first, chunks), headers)
        deployment = route.deployment
        try:
            completion = await deployment.provider.complete(outbound.request, deployment.model)
        except VeilError as exc:
            if final or exc.status not in _FAILOVER_STATUSES:
                self._meter(ctx, request, route, outbound, Usage(), exc.status, exc.code, policy)
                exc.route_headers = headers
            raise
        except Exception:
            self._meter(ctx, request, route, outbound, Usage(), 500, "internal_error", policy)
            raise
        body = {
            "id": "chatcmpl-" + ctx.request_id,
            "object": "chat.completion",
            "created": completion.body.get("created") or int(time.time()),
            **completion.body,
        }
        body["id"] = "chatcmpl-" + ctx.request_id
        body["model"] = route.model.name
        self._gate.restore_body(body, outbound)
        self._meter(ctx, request, route, outbound, completion.usage, 200, None, policy)
        return ChatResult(route, body, headers)

    async def _stream(
        self,
        ctx: RequestContext,
        request: ChatRequest,
        route: Route,
        outbound: Outbound,
        policy: str,
        final: bool,
    ) -> AsyncIterator[dict[str, Any]]:
        deployment = route.deployment
        state = StreamState()
        status: int = CLIENT_CLOSED
        code: str | None = "client_closed"
        started = False
        ident = {"id": "chatcmpl-" + ctx.request_id, "model": route.model.name}
        upstream = deployment.provider.stream(outbound.request, deployment.model, state)
        if outbound.pseudonymizer is not None:  # one generator layer less when nothing to restore
            upstream = self._gate.restore_stream(upstream, outbound)
        try:
            async for chunk in upstream:
                started = True
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
            exc.route_headers = route_headers(route, outbound)
            raise
        except Exception:
            status, code = 500, "internal_error"
            raise
        finally:
            # Billed for what was produced, also when the caller left or the upstream broke;
            # a failure before the first chunk that will be failed over is not this request's end.
            if started or final or status not in _FAILOVER_STATUSES:
                self._meter(ctx, request, route, outbound, state.usage, status, code, policy)

    def reject(
        self,
        ctx: RequestContext,
        error: VeilError,
        request: ChatRequest | None = None,
        policy: str | None = None,
    ) -> None:
        """Meter a request that failed before it was dispatched (bad body, unknown model,
        policy, consent)."""
        self._record(
            ctx, request, None, None, Usage(method="none"), error.status, error.code, policy
        )

    def _meter(
        self,
        ctx: RequestContext,
        request: ChatRequest,
        route: Route,
        outbound: Outbound | None,
        usage: Usage,
        status: int,
        code: str | None,
        policy: str | None,
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
        if outbound is not None:
            for kind, count in outbound.redactions.items():
                self._metrics.redactions.labels(kind, provider.name).inc(count)
        self._record(ctx, request, route, outbound, usage, status, code, policy, seconds)

    def _record(
        self,
        ctx: RequestContext,
        request: ChatRequest | None,
        route: Route | None,
        outbound: Outbound | None,
        usage: Usage,
        status: int,
        code: str | None,
        policy: str | None,
        seconds: float | None = None,
    ) -> None:
        if seconds is None:
            seconds = time.perf_counter() - ctx.started
        user = ctx.principal.user or (request.user if request is not None else None)
        provider = route.deployment.provider if route is not None else None
        redactions = outbound.redactions if outbound is not None else {}
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
                partner=provider.partner if provider and provider.tier == "partner" else None,
                cloud=provider.cloud if provider and provider.tier == "partner" else None,
                policy=policy[:512] if policy else None,
                consent=outbound.consent if outbound is not None else None,
                redactions=orjson.dumps(redactions).decode() if redactions else None,
            )
        )


def _denied(error: VeilError) -> str | None:
    # A policy refusal's message names the rules; keep that decision with the usage row.
    return f"policy denied: {error.message}" if error.code == "policy_denied" else None


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
