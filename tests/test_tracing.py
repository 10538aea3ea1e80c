"""OpenTelemetry traces through a real gateway into a real OTLP/HTTP collector: one span
per request and per stage, metadata only; a caller's trace is joined; nothing propagates
upstream; off by default."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.otlp import Collector, SpanData
from tests.support.server import VeilServer, key_for, start_server
from tests.support.upstream import Upstream

EMAIL = "rosa.vega@example.org"
PHONE = "+1 415 555 0199"
USER = "user-rosa-4471"


def _config(upstream: Upstream, collector: Collector, enabled: bool = True) -> str:
    partner = f'type: openai_compatible, tier: partner, base_url: "{upstream.base_url}"'
    return f"""
server: {{key_cache_seconds: 0}}
providers:
  - {{name: phone, type: fake, tier: device}}
  - {{name: cloud, type: openai_compatible, base_url: "{upstream.base_url}"}}
  - {{name: openai-azure, {partner}, partner: openai, cloud: azure}}
models:
  - {{name: small, deployments: [{{provider: phone, model: echo}}]}}
  - {{name: gpt-4o, deployments: [{{provider: openai-azure, model: echo}}]}}
  - {{name: broken, deployments: [{{provider: cloud, model: error-400}}]}}
tenants:
  - {{name: acme}}
safety:
  enabled: true
tracing:
  enabled: {str(enabled).lower()}
  endpoint: {collector.endpoint}
  service_name: veil-under-test
  export_interval: 0.2
"""


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    c = Collector()
    c.start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, upstream: Upstream, collector: Collector
) -> Iterator[VeilServer]:
    srv = start_server(tmp_path_factory.mktemp("tracing") / "home", _config(upstream, collector))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def key(server: VeilServer) -> str:
    return key_for(server, "acme", USER)


def _chat(
    server: VeilServer,
    key: str,
    model: str,
    content: str,
    headers: dict[str, str] | None = None,
    **extra: object,
) -> httpx.Response:
    return httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": content}], **extra},
        headers={"authorization": f"Bearer {key}", "x-veil-consent": "openai", **(headers or {})},
        timeout=30,
    )


def _names(root: SpanData) -> list[str]:
    return [c.name for c in root.children]


def test_a_partner_request_is_one_trace_with_a_span_per_stage(
    server: VeilServer, key: str, collector: Collector
) -> None:
    r = _chat(server, key, "gpt-4o", f"mail {EMAIL}")
    assert r.status_code == 200, r.text
    root = collector.trace(r.headers["x-request-id"])
    assert root.service == "veil-under-test"
    assert _names(root) == [  # in the order they ended: the pipeline's order
        "veil.moderate.input",
        "veil.route",
        "veil.policy",
        "veil.protect",
        "veil.upstream",
        "veil.restore",
        "veil.moderate.output",
        "veil.meter",
    ]
    assert {c.trace_id for c in root.children} == {root.trace_id}
    a = root.attributes
    assert (a["veil.tier"], a["veil.provider"], a["veil.model"]) == (
        "partner",
        "openai-azure",
        "gpt-4o",
    )
    assert a["veil.status"] == 200
    assert a["veil.redactions"] == 1
    assert a["veil.prompt_tokens"] > 0
    assert root.status != 2
    stage = {c.name: c for c in root.children}
    assert stage["veil.protect"].attributes["veil.redactions"] == 1
    assert stage["veil.upstream"].attributes["veil.attempt"] == 1
    assert stage["veil.policy"].attributes["veil.policy"] == "policy ok"


def test_a_stream_is_traced_until_its_end(
    server: VeilServer, key: str, collector: Collector
) -> None:
    r = _chat(server, key, "small", "stream me please", stream=True)
    assert r.status_code == 200
    assert "[DONE]" in r.text
    root = collector.trace(r.headers["x-request-id"])
    upstream = next(c for c in root.children if c.name == "veil.upstream")
    assert upstream.attributes["veil.status"] == 200
    assert upstream.attributes["veil.tier"] == "device"
    assert root.attributes["veil.stream"] is True
    assert root.attributes["veil.completion_tokens"] > 0


def test_failures_carry_the_code_never_the_message(
    server: VeilServer, key: str, collector: Collector
) -> None:
    secret = f"unknown-{uuid.uuid4().hex[:8]}"
    missing = _chat(server, key, secret, "hello")
    assert missing.status_code == 404
    root = collector.trace(missing.headers["x-request-id"])
    assert root.status == 2
    code = missing.json()["error"]["code"]
    assert root.attributes["veil.error"] == code
    assert root.message == code
    route = next(c for c in root.children if c.name == "veil.route")
    assert route.status == 2
    assert route.attributes["veil.error"] == code

    broken = _chat(server, key, "broken", "hello")
    assert broken.status_code == 400
    root = collector.trace(broken.headers["x-request-id"])
    upstream = next(c for c in root.children if c.name == "veil.upstream")
    assert upstream.status == 2
    assert upstream.attributes["veil.provider"] == "cloud"
    for raw in collector.raw:
        assert secret.encode() not in raw


def test_the_callers_trace_is_joined_and_nothing_goes_upstream(
    server: VeilServer, key: str, collector: Collector, upstream: Upstream
) -> None:
    trace_id = uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    received, r = upstream.capture(
        lambda: _chat(server, key, "gpt-4o", "hello", {"traceparent": traceparent})
    )
    assert r.status_code == 200
    assert collector.trace(r.headers["x-request-id"]).trace_id == trace_id
    assert "traceparent" not in received.headers
    assert "tracestate" not in received.headers
    assert trace_id not in json.dumps(received.body)


def test_no_content_user_key_or_tenant_in_any_span(
    server: VeilServer, key: str, collector: Collector
) -> None:
    secret = f"the-secret-sentence-{uuid.uuid4().hex[:8]}"
    asked = _chat(server, key, "gpt-4o", f"{secret} {EMAIL} {PHONE}", user=USER)
    streamed = _chat(server, key, "gpt-4o", f"{secret} again", stream=True)
    for r in (asked, streamed):
        assert r.status_code == 200
        collector.trace(r.headers["x-request-id"])
    answer = asked.json()["choices"][0]["message"]["content"]
    assert secret in answer  # the echo: the answer holds the secret too
    everything = b"".join(collector.raw)
    for text in (secret, EMAIL, PHONE, USER, key, "acme", answer[:40]):
        assert text.encode() not in everything, text


def test_tracing_is_off_unless_enabled(
    tmp_path: Path, upstream: Upstream, collector: Collector
) -> None:
    srv = start_server(tmp_path / "home", _config(upstream, collector, enabled=False))
    try:
        key = key_for(srv, "acme")
        r = _chat(srv, key, "small", "not traced")
        assert r.status_code == 200
        time.sleep(1.0)  # five export intervals
        ids = {s.attributes.get("veil.request_id") for s in collector.spans}
        assert r.headers["x-request-id"] not in ids
    finally:
        srv.stop()
