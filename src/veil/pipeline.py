"""The request path, stage by stage, the same for every front (HTTP API, CLI, Python API).

    authenticate → parse → route → check policy → consent → protect → dispatch → restore
    → meter → respond

Fronts call ``authenticate`` and ``chat`` and only translate what comes back. Moderation
slots in before routing and after dispatch. With tracing on, each stage is a span of the
request's span (``veil.tracing``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from veil.auth import DEV_PRINCIPAL, KeyStore, Principal, pseudonym
from veil.chat import ChatRequest, Usage
from veil.config import BreakerConfig, RetryConfig
from veil.errors import UpstreamTimeout, UpstreamUnavailable, VeilError
from veil.gate import Clearance, Gate, Outbound
from veil.ledger.limits import Limiter, Scope
from veil.ledger.postings import Tariff
from veil.ledger.tokens import TokenCounter
from veil.ledger.usage import UsageRecord, UsageRecorder
from veil.metrics import Metrics
from veil.policy import PolicyEngine
from veil.providers import StreamState
from veil.providers.base import CONNECT_TIMEOUT, Completion
from veil.providers.resilience import Breakers, backoff, is_timeout, retryable
from veil.routing import Deployment, Route, Router
from veil.routing.preferences import PreferenceStore
from veil.routing.router import Candidate, Plan, prompt_tokens
from veil.safety.policy import Decision
from veil.safety.stage import Moderation, answer_pieces, filter_body
from veil.tracing import Stage, outcome, parent, start_request

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

#: Status recorded when the caller went away before the answer was complete (nginx's 499).
CLIENT_CLOSED = 499
#: Token methods that mean "nobody counted": the upstream reported no usage (``missing``)
#: or only an estimate of it (``estimated``). Veil counts those tokens itself.
UNCOUNTED = frozenset({"missing", "estimated"})


@dataclass(slots=True)
class RequestContext:
    request_id: str
    principal: Principal
    #: Partners the caller consented to for this request (``x-veil-consent``).
    consent: frozenset[str] = frozenset()
    started: float = field(default_factory=time.perf_counter)
    #: ``(category, difficulty)`` when the task classifier ran (``model: auto``).
    task: tuple[str, str] | None = None
    #: Upstream calls made so far (retries and failovers included).
    attempts: int = 0
    #: The policy decision, once made (for the usage row).
    policy: str | None = None
    #: The limits this request was admitted under (its tokens and cost count against them).
    scopes: list[Scope] = field(default_factory=list)
    #: The caller's user pseudonym, once worked out (``""``: not yet).
    user_hash: str | None = ""
    #: The usage record journaled at dispatch; metering fills it in.
    record: UsageRecord | None = None
    #: What served it, when the provider proves it: a private node's measurement.
    served_by: str | None = None
    #: What moderation decided, when not ``allow``: ``input:flag:violence`` and so on.
    moderation: str | None = None
    #: The caller's W3C ``traceparent`` header (followed when tracing is on).
    traceparent: str | None = None
    #: The request's span, while it runs (tracing on).
    span: Span | None = None

    def moderated(self, summary: str | None) -> None:
        if summary is not None:
            self.moderation = summary if self.moderation is None else f"{self.moderation};{summary}"


#: The measurement of the private node that served the answer (private nodes only).
SERVED_BY_HEADER = "x-veil-node-measurement"
#: What moderation decided when it was not ``allow`` (categories only, never text).
MODERATION_HEADER = "x-veil-moderation"


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


@dataclass(slots=True)
class _Step:
    """One deployment in the failover order, and why it is there."""

    route: Route
    outbound: Outbound | None = None


class _Committed:
    """Set once the first token is on its way to the caller: from then on the stream is
    this request's answer, and its own end (however it ends) is what gets metered."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = False


class Pipeline:
    def __init__(
        self,
        keys: KeyStore,
        router: Router,
        policy: PolicyEngine,
        gate: Gate,
        recorder: UsageRecorder | None,
        metrics: Metrics,
        salt: str,
        auth_required: bool = True,
        preferences: PreferenceStore | None = None,
        retries: RetryConfig | None = None,
        breakers: Breakers | None = None,
        tariff: Tariff | None = None,
        limiter: Limiter | None = None,
        counter: TokenCounter | None = None,
        moderation: Moderation | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.keys = keys
        self.router = router
        self.policy = policy
        self._gate = gate
        self._recorder = recorder
        self._metrics = metrics
        self._salt = salt
        self._auth_required = auth_required
        self._preferences = preferences
        self._retries = retries or RetryConfig()
        self.breakers = breakers or Breakers(BreakerConfig(), metrics.breaker_changed)
        self._tariff = tariff
        self._limiter = limiter if limiter is not None and limiter.limits.active else None
        self._counter = counter
        self._moderation = moderation
        self._tracer = tracer

    # ------------------------------------------------------------ tracing

    def _begin(self, ctx: RequestContext) -> None:
        if self._tracer is not None and ctx.span is None:
            span = start_request(self._tracer, ctx.request_id, parent(ctx.traceparent))
            if span.is_recording():  # sampled out: its stages are not made at all
                ctx.span = span

    def _stage(
        self, ctx: RequestContext, name: str, **attributes: Any
    ) -> AbstractContextManager[Span | None]:
        """A span for one stage of this request (nothing when tracing is off)."""
        if ctx.span is None or self._tracer is None:
            return _NO_SPAN
        return Stage(self._tracer, ctx.span, name, attributes)

    # ------------------------------------------------------------ authenticate

    async def authenticate(self, authorization: str | None) -> Principal:
        if not self._auth_required and not authorization:
            return DEV_PRINCIPAL
        return await self.keys.authenticate(authorization)

    # ------------------------------------------------------------ route → … → meter

    async def chat(self, ctx: RequestContext, request: ChatRequest) -> ChatResult | ChatStream:
        self._begin(ctx)
        try:
            if self._limiter is not None:
                with self._stage(ctx, "veil.limits"):
                    await self._admit(ctx, request, self._limiter)
            if self._moderation is not None:
                with self._stage(ctx, "veil.moderate.input"):
                    await self._moderate(ctx, request, self._moderation)
            with self._stage(ctx, "veil.route") as span:
                plan = await self._plan(ctx, request)
                if span is not None and ctx.task is not None:
                    span.set_attributes(
                        {"veil.category": ctx.task[0], "veil.difficulty": ctx.task[1]}
                    )
            with self._stage(ctx, "veil.policy") as span:
                steps, clearance, policy, notes = await self._clear(ctx, request, plan)
                if span is not None:
                    span.set_attributes({"veil.policy": policy, "veil.deployments": len(steps)})
        except VeilError as exc:
            self.reject(ctx, exc, request, policy=ctx.policy or _denied(exc))
            raise
        return await self._dispatch_all(ctx, request, steps, clearance, policy, notes)

    async def _admit(self, ctx: RequestContext, request: ChatRequest, limiter: Limiter) -> None:
        """Rate limits and budgets of the tenant, the user and the key, before anything else."""
        principal = ctx.principal
        scopes = limiter.limits.scopes(
            principal.tenant, self._user_hash(ctx, request), principal.key_id
        )
        if scopes:
            await limiter.admit(scopes)
            ctx.scopes = scopes

    @staticmethod
    async def _moderate(ctx: RequestContext, request: ChatRequest, moderation: Moderation) -> None:
        decision = await moderation.check_input(ctx.principal.tenant, request)
        ctx.moderation = decision.summary("input")
        if decision.blocked:
            raise moderation.refusal(decision)

    def _user_hash(self, ctx: RequestContext, request: ChatRequest | None) -> str | None:
        if ctx.user_hash == "":
            user = ctx.principal.user or (request.user if request is not None else None)
            ctx.user_hash = pseudonym(self._salt, user)
        return ctx.user_hash

    async def _plan(self, ctx: RequestContext, request: ChatRequest) -> Plan:
        preferences: dict[str, str] = {}
        if request.model == "auto" and self._preferences is not None:
            user = ctx.principal.user or request.user
            preferences = await self._preferences.cached(ctx.principal.tenant, user)
        plan = self.router.plan(request, ctx.principal.tenant, preferences)
        if plan.classification is not None:
            ctx.task = (plan.classification.category, plan.classification.difficulty)
        return plan

    async def _clear(
        self, ctx: RequestContext, request: ChatRequest, plan: Plan
    ) -> tuple[list[_Step], Clearance, str, dict[str, str]]:
        """Policy, then consent, over the whole plan: the deployments that may be tried, in
        order; the policy summary; and extra headers (a privacy fallback is announced)."""
        tenant = ctx.principal.tenant
        allowed: list[tuple[Candidate, Deployment]] = []
        summaries: list[str] = []
        for candidate in plan.candidates:
            decision = self.policy.decide(tenant, candidate.model)
            allowed.extend((candidate, d) for d in decision.allowed)
            if decision.denials:
                summaries.append(decision.summary())
        if not allowed:  # nothing in the plan may serve this tenant: name the rules
            self.policy.check(tenant, plan.candidates[0].model)
        ctx.policy = policy = "; ".join(summaries) or "policy ok"
        clearance = await self._gate.clear(
            ctx.principal, request, [d for _, d in allowed], ctx.consent
        )
        kept = set(clearance.deployments)
        target = allowed[0][0]
        notes: dict[str, str] = {}
        if not any(d in kept for c, d in allowed if c is target):
            # The target itself needs a consent the user has not given.
            missing = [d for c, d in allowed if c is target]
            if self.router.on_no_consent(tenant) == "refuse":
                raise self._gate.consent_required(missing)
            fallback = [
                (c, d)
                for c in self.router.private_fallbacks(request)
                for d in self.policy.decide(tenant, c.model).allowed
                if d.provider.tier != "partner"  # staying private means no partner at all
            ]
            if not fallback:
                raise self._gate.consent_required(missing)
            partners = ", ".join(sorted({str(d.provider.partner) for d in missing}))
            notes["x-veil-consent-missing"] = partners
            allowed = [
                (Candidate(c.model, f"no consent for {partners}: stayed private; {c.rule}"), d)
                for c, d in fallback
            ]
            kept = {d for _, d in allowed}
        reason_tail = f"; {policy}"
        if clearance.unconsented:
            names = ", ".join(sorted({d.provider.name for d in clearance.unconsented}))
            reason_tail += f"; skipped {names} (no consent)"
        steps = [
            _Step(Route(plan.requested, c.model, d, plan.reason(c) + reason_tail))
            for c, d in allowed
            if d in kept
        ]
        return steps, clearance, policy, notes

    async def _dispatch_all(
        self,
        ctx: RequestContext,
        request: ChatRequest,
        steps: list[_Step],
        clearance: Clearance,
        policy: str,
        notes: dict[str, str],
    ) -> ChatResult | ChatStream:
        """Each deployment in turn, each retried on retryable failures, skipping those whose
        breaker is open; a timeout moves on at once (a failover costs at most one timeout)."""
        last_error: VeilError | None = None
        last: _Step | None = None
        failed_over = False
        retry_after: float | None = None
        wait: float | None
        for step in steps:
            deployment = step.route.deployment
            provider = deployment.provider
            breaker = self.breakers.get(provider.name, deployment.model)
            if not breaker.allow():
                self._metrics.attempt(provider.name, deployment.model, "breaker_open")
                wait = breaker.retry_after()
                retry_after = wait if retry_after is None else min(retry_after, wait)
                continue
            if failed_over:
                step.route = replace(step.route, reason=step.route.reason + "; failed over")
            for attempt in range(1 + self._retries.attempts):
                ctx.attempts += 1
                last = step
                try:
                    result = await self._dispatch(ctx, request, step, clearance, policy)
                except VeilError as exc:
                    last_error = exc
                    self._metrics.attempt(provider.name, deployment.model, exc.code or "error")
                    if not retryable(exc):
                        breaker.release()
                        self._fail(ctx, request, step, exc, policy)
                        raise
                    breaker.failure()
                    if is_timeout(exc) or attempt == self._retries.attempts:
                        break
                    wait = backoff(self._retries, attempt + 1, exc.retry_after)
                    if wait is None or not breaker.allow():
                        break
                    try:
                        await asyncio.sleep(wait)
                    except asyncio.CancelledError as cancelled:  # the caller left meanwhile
                        breaker.release()
                        self._fail(ctx, request, step, cancelled, policy)
                        raise
                    continue
                except BaseException as exc:
                    breaker.release()
                    self._fail(ctx, request, step, exc, policy)
                    raise
                breaker.success()
                self._metrics.attempt(provider.name, deployment.model, "ok")
                result.headers.update(notes)
                return result
            failed_over = True
        if last_error is None or last is None:
            error: VeilError = UpstreamUnavailable(
                "every deployment that may serve this request is failing (circuit breakers "
                "open); retry later",
                retry_after=retry_after,
            )
            self.reject(ctx, error, request, policy=policy)
            raise error
        self._fail(ctx, request, last, last_error, policy)
        raise last_error

    def _fail(
        self,
        ctx: RequestContext,
        request: ChatRequest,
        step: _Step,
        exc: BaseException,
        policy: str,
    ) -> None:
        """Meter the request's end when it failed before its answer started."""
        if isinstance(exc, VeilError):
            status, code = exc.status, exc.code
            exc.route_headers = route_headers(step.route, step.outbound)
        elif isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
            status, code = CLIENT_CLOSED, "client_closed"
        else:
            status, code = 500, "internal_error"
        self._meter(ctx, request, step.route, step.outbound, Usage(), status, code, policy)

    async def _dispatch(
        self,
        ctx: RequestContext,
        request: ChatRequest,
        step: _Step,
        clearance: Clearance,
        policy: str,
    ) -> ChatResult | ChatStream:
        route = step.route
        deployment = route.deployment
        with self._stage(ctx, "veil.protect", **{"veil.tier": deployment.provider.tier}) as span:
            step.outbound = outbound = await self._gate.outbound(
                ctx.principal, request, deployment, clearance
            )
            if span is not None:
                span.set_attribute("veil.redactions", sum(outbound.redactions.values()))
        if self._recorder is not None:
            # Should the gateway die before this is metered, the journal bills the prompt.
            estimate = Usage(prompt_tokens(outbound.request), 0, "estimated")
            ctx.record = self._usage_record(
                ctx, request, route, outbound, estimate, 500, "interrupted", policy, 0.0
            )
            self._recorder.dispatched(ctx.record)
        headers = route_headers(route, outbound)
        first = _deadline(deployment.first_token, deployment.total)
        # The connection is opened before the first token: the deployment's connect timeout
        # (if it has its own) covers that part.
        connect = CONNECT_TIMEOUT.set(deployment.connect) if deployment.connect else None
        try:
            if request.stream:
                return await self._start_stream(
                    ctx, request, route, outbound, policy, first, headers
                )
            with self._stage(ctx, "veil.upstream", **_upstream_attributes(ctx, route)):
                completion = await self._complete(deployment, outbound, first)
            if completion.served_by is not None:
                ctx.served_by = completion.served_by
                headers[SERVED_BY_HEADER] = completion.served_by
        finally:
            if connect is not None:
                CONNECT_TIMEOUT.reset(connect)
        body = {
            "id": "chatcmpl-" + ctx.request_id,
            "object": "chat.completion",
            "created": completion.body.get("created") or int(time.time()),
            **completion.body,
        }
        body["id"] = "chatcmpl-" + ctx.request_id
        body["model"] = route.model.name
        usage = completion.usage
        if usage.method in UNCOUNTED and self._counter is not None:
            usage = self._counter.count(outbound.request, _answer_text(body), usage)
        if outbound.pseudonymizer is not None:
            with self._stage(ctx, "veil.restore"):
                self._gate.restore_body(body, outbound)
        if self._moderation is not None:
            with self._stage(ctx, "veil.moderate.output"):
                text = _answer_text(body)
                decision = await self._moderation.check_answer(ctx.principal.tenant, text)
            ctx.moderated(decision.summary("output"))
            if decision.blocked:
                filter_body(body)
        if ctx.moderation is not None:
            headers[MODERATION_HEADER] = ctx.moderation
        self._meter(ctx, request, route, outbound, usage, 200, None, policy)
        return ChatResult(route, body, headers)

    async def _start_stream(
        self,
        ctx: RequestContext,
        request: ChatRequest,
        route: Route,
        outbound: Outbound,
        policy: str,
        first: float | None,
        headers: dict[str, str],
    ) -> ChatStream:
        """Start the stream and hold its chunks back until the first token: a failure before
        it fails over, invisibly to the caller."""
        committed = _Committed()
        state = StreamState()
        chunks = self._stream(ctx, request, route, outbound, policy, committed, state)
        held: list[dict[str, Any]] = []
        try:
            async with asyncio.timeout(first):
                async for chunk in chunks:
                    held.append(chunk)
                    if _has_token(chunk):
                        break
        except TimeoutError:
            await chunks.aclose()  # type: ignore[attr-defined]
            raise _timed_out(route.deployment, first) from None
        except BaseException:
            await chunks.aclose()  # type: ignore[attr-defined]
            raise
        committed.value = True
        if state.served_by is not None:
            headers[SERVED_BY_HEADER] = state.served_by
        if ctx.moderation is not None:  # what the input check said; the answer's comes later
            headers[MODERATION_HEADER] = ctx.moderation
        return ChatStream(route, _prepend(held, chunks), headers)

    @staticmethod
    async def _complete(
        deployment: Deployment, outbound: Outbound, first: float | None
    ) -> Completion:
        if first is None:
            return await deployment.provider.complete(outbound.request, deployment.model)
        try:
            async with asyncio.timeout(first):
                return await deployment.provider.complete(outbound.request, deployment.model)
        except TimeoutError:
            raise _timed_out(deployment, first) from None

    async def _stream(
        self,
        ctx: RequestContext,
        request: ChatRequest,
        route: Route,
        outbound: Outbound,
        policy: str,
        committed: _Committed,
        state: StreamState,
    ) -> AsyncIterator[dict[str, Any]]:
        deployment = route.deployment
        status: int = CLIENT_CLOSED
        code: str | None = "client_closed"
        ident = {"id": "chatcmpl-" + ctx.request_id, "model": route.model.name}
        upstream = deployment.provider.stream(outbound.request, deployment.model, state)
        if outbound.pseudonymizer is not None:  # one generator layer less when nothing to restore
            upstream = self._gate.restore_stream(upstream, outbound)
        moderated: list[Decision] = []
        if self._moderation is not None and self._moderation.output:
            upstream = self._moderation.guard_stream(ctx.principal.tenant, upstream, moderated)
        total = deployment.total
        ends = None if total is None else time.monotonic() + total
        # What was delivered, kept (in memory, for this request only) in case the upstream
        # never reports usage and the tokens have to be counted.
        delivered: list[str] | None = [] if self._counter is not None else None
        stage = self._stage(ctx, "veil.upstream", **_upstream_attributes(ctx, route))
        span = stage.__enter__()
        try:
            while True:
                try:
                    if ends is None:
                        chunk = await upstream.__anext__()
                    else:
                        async with asyncio.timeout_at(_loop_time(ends)):
                            chunk = await upstream.__anext__()
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise UpstreamTimeout(
                        f"provider {deployment.provider.name} did not finish within {total:g} s"
                    ) from None
                if delivered is not None:
                    delivered.extend(answer_pieces(chunk))
                yield {**ident, **chunk, "id": ident["id"], "model": ident["model"]}
            status, code = 200, None
            if delivered is not None and state.usage.method in UNCOUNTED:
                state.usage = self._counter_for(outbound, delivered, state.usage)
                delivered = None
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
            await upstream.aclose()  # type: ignore[attr-defined]
            if span is not None:
                outcome(span, status, code)
            stage.__exit__(None, None, None)
            # Once the answer has started it is billed for what was produced, also when the
            # caller left or the upstream broke; before that, the dispatcher meters the end.
            if committed.value:
                ctx.served_by = state.served_by
                for decision in moderated:
                    ctx.moderated(decision.summary("output"))
                usage = state.usage
                if delivered is not None and usage.method in UNCOUNTED:
                    usage = self._counter_for(outbound, delivered, usage)
                self._meter(ctx, request, route, outbound, usage, status, code, policy)

    def _counter_for(self, outbound: Outbound, delivered: list[str], usage: Usage) -> Usage:
        assert self._counter is not None
        return self._counter.count(outbound.request, "".join(delivered), usage)

    def reject(
        self,
        ctx: RequestContext,
        error: VeilError,
        request: ChatRequest | None = None,
        policy: str | None = None,
    ) -> None:
        """Meter a request that failed before it was dispatched (bad body, unknown model,
        policy, consent)."""
        self._begin(ctx)
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
        """The request's end: its usage record; with tracing on, its last stage and the end
        of its span."""
        if self._recorder is not None:
            with self._stage(ctx, "veil.meter"):
                if seconds is None:
                    seconds = time.perf_counter() - ctx.started
                record = ctx.record
                if (
                    record is not None
                    and route is not None
                    and record.provider == route.deployment.provider.name
                    and record.model == route.model.name
                ):
                    # The record journaled at dispatch (already written out): fill in how it ended.
                    record.prompt_tokens = usage.prompt_tokens
                    record.completion_tokens = usage.completion_tokens
                    record.token_method = usage.method
                    record.latency_ms = round(seconds * 1000, 3)
                    record.status = status
                    record.error_code = code
                    record.attempts = ctx.attempts
                    record.served_by = ctx.served_by
                    record.moderation = ctx.moderation[:256] if ctx.moderation else None
                    if self._tariff is not None:
                        record.billed, record.cost = self._tariff.charge(
                            record.tenant,
                            record.model,
                            usage.prompt_tokens,
                            usage.completion_tokens,
                        )
                else:
                    record = self._usage_record(
                        ctx, request, route, outbound, usage, status, code, policy, seconds
                    )
                self._recorder.record(record)
                if ctx.scopes and self._limiter is not None:
                    tokens = usage.prompt_tokens + usage.completion_tokens
                    self._limiter.used(ctx.scopes, tokens, record.billed)
        if ctx.span is not None:
            self._end_span(ctx, request, route, outbound, usage, status, code)

    @staticmethod
    def _end_span(
        ctx: RequestContext,
        request: ChatRequest | None,
        route: Route | None,
        outbound: Outbound | None,
        usage: Usage,
        status: int,
        code: str | None,
    ) -> None:
        span = ctx.span
        assert span is not None
        ctx.span = None
        outcome(span, status, code)
        attributes: dict[str, Any] = {
            "veil.stream": bool(request and request.stream),
            "veil.attempts": ctx.attempts,
            "veil.prompt_tokens": usage.prompt_tokens,
            "veil.completion_tokens": usage.completion_tokens,
        }
        if route is not None:
            attributes.update(_upstream_attributes(ctx, route))
            del attributes["veil.attempt"]
        if outbound is not None and outbound.redactions:
            attributes["veil.redactions"] = sum(outbound.redactions.values())
        span.set_attributes(attributes)
        span.end()

    def _usage_record(
        self,
        ctx: RequestContext,
        request: ChatRequest | None,
        route: Route | None,
        outbound: Outbound | None,
        usage: Usage,
        status: int,
        code: str | None,
        policy: str | None,
        seconds: float,
    ) -> UsageRecord:
        provider = route.deployment.provider if route is not None else None
        redactions = outbound.redactions if outbound is not None else {}
        tenant = ctx.principal.tenant
        model = route.model.name if route else None
        billed = cost = 0
        if self._tariff is not None and model is not None:
            billed, cost = self._tariff.charge(
                tenant, model, usage.prompt_tokens, usage.completion_tokens
            )
        partner = provider is not None and provider.tier == "partner"
        return UsageRecord(
            id=ctx.request_id,
            created_at=datetime.now(UTC),
            tenant=tenant,
            user_hash=self._user_hash(ctx, request),
            key_id=ctx.principal.key_id,
            tier=provider.tier if provider else None,
            provider=provider.name if provider else None,
            model=model,
            stream=bool(request and request.stream),
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            token_method=usage.method if route else None,
            latency_ms=round(seconds * 1000, 3),
            status=status,
            error_code=code,
            partner=provider.partner if partner and provider else None,
            cloud=provider.cloud if partner and provider else None,
            policy=policy[:512] if policy else None,
            consent=outbound.consent if outbound is not None else None,
            redactions=orjson.dumps(redactions).decode() if redactions else None,
            category=ctx.task[0] if ctx.task else None,
            difficulty=ctx.task[1] if ctx.task else None,
            attempts=ctx.attempts,
            served_by=ctx.served_by,
            moderation=ctx.moderation[:256] if ctx.moderation else None,
            billed=billed,
            cost=cost,
            bytes_out=outbound.bytes_out if outbound is not None else 0,
        )


_NO_SPAN: AbstractContextManager[None] = nullcontext()


def _upstream_attributes(ctx: RequestContext, route: Route) -> dict[str, Any]:
    provider = route.deployment.provider
    return {
        "veil.tier": provider.tier,
        "veil.provider": provider.name,
        "veil.model": route.model.name,
        "veil.deployment_model": route.deployment.model,
        "veil.attempt": ctx.attempts,
    }


def _denied(error: VeilError) -> str | None:
    # A policy refusal's message names the rules; keep that decision with the usage row.
    return f"policy denied: {error.message}" if error.code == "policy_denied" else None


def _answer_text(body: dict[str, Any]) -> str:
    parts: list[str] = []
    for choice in body.get("choices") or ():
        message = choice.get("message") or {}
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        for call in message.get("tool_calls") or ():
            arguments = (call.get("function") or {}).get("arguments")
            if isinstance(arguments, str):
                parts.append(arguments)
    return "".join(parts)


def _has_token(chunk: dict[str, Any]) -> bool:
    """Does the chunk carry part of the answer (text, a tool call, or its end)?"""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls") or choice.get("finish_reason"):
            return True
    return False


def _deadline(first_token: float | None, total: float | None) -> float | None:
    if first_token is None:
        return total
    return first_token if total is None else min(first_token, total)


def _loop_time(monotonic_deadline: float) -> float:
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic_deadline - time.monotonic())


def _timed_out(deployment: Deployment, seconds: float | None) -> UpstreamTimeout:
    return UpstreamTimeout(
        f"provider {deployment.provider.name} gave no first token within {seconds:g} s"
    )


async def _prepend(
    held: list[dict[str, Any]], rest: AsyncIterator[dict[str, Any]]
) -> AsyncIterator[dict[str, Any]]:
    try:
        for chunk in held:
            yield chunk
        async for chunk in rest:
            yield chunk
    finally:
        await rest.aclose()  # type: ignore[attr-defined]
