"""A real OTLP/HTTP trace collector for the tests: it takes what an OpenTelemetry exporter
posts to ``/v1/traces`` (protobuf), keeps the raw bytes and decodes the spans."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.support.local import LocalServer


@dataclass
class SpanData:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    status: int  # 0 unset, 1 ok, 2 error
    message: str
    service: str = ""
    children: list[SpanData] = field(default_factory=list)


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class Collector(LocalServer):
    def __init__(self) -> None:
        super().__init__()
        self.raw: list[bytes] = []
        self.spans: list[SpanData] = []

    @property
    def endpoint(self) -> str:
        return self.origin + "/v1/traces"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/traces", self._traces)

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.raw.append(body)
        export = ExportTraceServiceRequest.FromString(body)
        for resource in export.resource_spans:
            service = next(
                (_value(a.value) for a in resource.resource.attributes if a.key == "service.name"),
                "",
            )
            for scope in resource.scope_spans:
                for s in scope.spans:
                    self.spans.append(
                        SpanData(
                            s.name,
                            s.trace_id.hex(),
                            s.span_id.hex(),
                            s.parent_span_id.hex(),
                            {a.key: _value(a.value) for a in s.attributes},
                            s.status.code,
                            s.status.message,
                            service,
                        )
                    )
        reply = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=reply, content_type="application/x-protobuf")

    def trace(self, request_id: str, timeout: float = 15.0) -> SpanData:
        """The request's root span, its stages as ``children`` (waits for the export)."""
        deadline = time.monotonic() + timeout
        while True:
            roots = [
                s
                for s in self.spans
                if s.name == "veil.chat" and s.attributes.get("veil.request_id") == request_id
            ]
            if roots:
                root = roots[0]
                root.children = [s for s in self.spans if s.parent_id == root.span_id]
                if any(c.name == "veil.meter" for c in root.children):
                    return root
            if time.monotonic() > deadline:
                raise AssertionError(f"no complete trace for request {request_id}")
            time.sleep(0.1)
