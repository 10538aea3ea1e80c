"""OpenTelemetry traces: a span per chat request and one per pipeline stage.

Spans carry metadata only — the request id, tiers, providers, models, statuses, error
codes, token and redaction counts — never a prompt, an answer, a user, a tenant, a key or
an exception's message (which could quote the request). Exceptions are not recorded; a
failed stage's status names the error's code.

Each gateway has its own ``TracerProvider``: nothing here touches OpenTelemetry's global
state, so two gateways in one process (the tests) trace independently. A caller's W3C
``traceparent`` is followed, so Veil's spans join the caller's trace. Nothing is ever
propagated upstream: a partner must not get an id that links requests together.

When tracing is off the pipeline holds no tracer, and each stage costs one ``None`` check.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Final

from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import veil
from veil.config import TracingConfig
from veil.errors import VeilError

_PROPAGATOR: Final = TraceContextTextMapPropagator()


class Tracing:
    """The gateway's tracer and the exporter behind it."""

    def __init__(self, config: TracingConfig) -> None:
        # The SDK and exporter load only when tracing is on.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        resource = Resource.create(
            {"service.name": config.service_name, "service.version": veil.__version__}
        )
        self.provider = TracerProvider(
            resource=resource, sampler=ParentBased(TraceIdRatioBased(config.sample_ratio))
        )
        exporter = OTLPSpanExporter(
            endpoint=config.endpoint,
            headers={k: v.get_secret_value() for k, v in config.headers.items()},
            timeout=config.export_timeout,
        )
        self.provider.add_span_processor(
            BatchSpanProcessor(
                exporter,
                schedule_delay_millis=int(config.export_interval * 1000),
                export_timeout_millis=int(config.export_timeout * 1000),
            )
        )
        self.tracer: Tracer = self.provider.get_tracer("veil", veil.__version__)

    def shutdown(self) -> None:
        """Export what is waiting, then stop (blocking: call it off the event loop)."""
        self.provider.shutdown()


def parent(traceparent: str | None, tracestate: str | None = None) -> Context | None:
    """The caller's trace context from its W3C headers (``None`` if absent or invalid)."""
    if not traceparent:
        return None
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    return _PROPAGATOR.extract(carrier)


def start_request(tracer: Tracer, request_id: str, context: Context | None) -> Span:
    return tracer.start_span(
        "veil.chat",
        context=context,
        kind=SpanKind.SERVER,
        attributes={"veil.request_id": request_id},
        record_exception=False,
        set_status_on_exception=False,
    )


def fail(span: Span, error: BaseException) -> None:
    """Mark a span failed by the error's code (or type), never its message."""
    code = error.code if isinstance(error, VeilError) else type(error).__name__
    span.set_attribute("veil.error", code or "error")
    span.set_status(Status(StatusCode.ERROR, code))


def outcome(span: Span, status: int, code: str | None) -> None:
    """Record how a request (or a stream) ended: its HTTP status, and its error code."""
    span.set_attribute("veil.status", status)
    if code is not None:
        span.set_attribute("veil.error", code)
    if status >= 400:
        span.set_status(Status(StatusCode.ERROR, code))


class Stage:
    """A child span of the request's span, as a context manager; a failure inside marks it
    failed by the error's code. ``span`` is there to add attributes while it runs."""

    __slots__ = ("span",)

    def __init__(self, tracer: Tracer, root: Span, name: str, attributes: dict[str, Any]) -> None:
        self.span = tracer.start_span(
            name,
            context=set_span_in_context(root),
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        )

    def __enter__(self) -> Span:
        return self.span

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if error is not None:
            fail(self.span, error)
        self.span.end()
