"""Failover: retries, per-deployment deadlines, circuit breakers — through the real server.

Each scenario has a fake provider of its own, so one scenario's breakers never change
another's. Deadlines are a second or less; the assertions bound them loosely ("at most one
timeout"), never to the millisecond.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.support.local import Blackhole
from tests.support.server import ADMIN_KEY, VeilServer, start_server, usage_row
from tests.support.upstream import Upstream
from veil.config import BreakerConfig, RetryConfig
from veil.providers.resilience import Breaker, backoff

HANG = 1.0  # the first-token deadline of the hanging deployments, seconds
HI = [{"role": "user", "content": "one two three four five"}]


def failover_config(upstream: Upstream, blackhole: Blackhole) -> str:
    fakes = ["mixed", "hanging", "dead", "cut", "total", "bad", "fallback", "alone", "spare"]
    delay = {"total": 0.2}  # slow-total: a first token within its 0.3 s, the last one not
    providers = "\n".join(
        f"  - {{name: {n}, type: fake, token_delay: {delay.get(n, 0.01)}}}" for n in fakes
    )
    return f"""
providers:
{providers}
  - {{name: up, type: openai_compatible, tier: private, base_url: {upstream.base_url}}}
  - name: unreachable
    type: openai_compatible
    base_url: http://127.0.0.1:{blackhole.port}/v1
    timeout: {{connect: 30}}
models:
  - name: resilient
    deployments:
      - {{provider: mixed, model: error-503}}
      - {{provider: mixed, model: hang, timeout: {{first_token: {HANG}}}}}
      - {{provider: mixed, model: flaky}}
      - {{provider: mixed, model: echo}}
  - name: hang-then-echo
    deployments:
      - {{provider: hanging, model: hang, timeout: {{first_token: {HANG}}}}}
      - {{provider: hanging, model: echo}}
  - name: dead-upstream
    deployments:
      - {{provider: up, model: error-503}}
      - {{provider: dead, model: echo}}
  - name: cut-stream
    deployments: [{{provider: cut, model: cut}}, {{provider: cut, model: echo}}]
  - name: slow-total
    deployments: [{{provider: total, model: slow, timeout: {{total: 0.3}}}}]
  - name: bad-request
    deployments: [{{provider: bad, model: no-such-behaviour}}, {{provider: bad, model: echo}}]
  - name: primary-broken
    deployments: [{{provider: fallback, model: error-500}}]
    fallbacks: [the-fallback]
  - name: the-fallback
    deployments: [{{provider: fallback, model: echo}}]
  - name: slow-connect
    deployments:
      - {{provider: unreachable, model: any, timeout: {{connect: {HANG}}}}}
      - {{provider: spare, model: echo}}
  - name: only-dead
    deployments: [{{provider: alone, model: error-503}}]
routing:
  retries: {{attempts: 1, backoff: 0.01, backoff_max: 0.05}}
  breaker: {{failures: 3, cooldown: 60}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[VeilServer]:
    """This module's gateway; conftest's ``client`` fixture talks to it here."""
    blackhole = Blackhole()
    config = failover_config(upstream, blackhole)
    srv = start_server(tmp_path_factory.mktemp("failover") / "home", config)
    yield srv
    srv.stop()
    blackhole.close()


def metric(server: VeilServer, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def test_every_request_succeeds_while_one_deployment_is_healthy(server: VeilServer) -> None:
    """100 concurrent requests, half streamed, against a chain whose first three
    deployments fail (503, a hang, every other call): every one is answered in full."""

    async def one(http: httpx.AsyncClient, i: int) -> tuple[int, str]:
        words = f"request number {i} says hello"
        body = {
            "model": "resilient",
            "messages": [{"role": "user", "content": words}],
            "stream": i % 2 == 0,
        }
        response = await http.post("/v1/chat/completions", json=body)
        if not body["stream"]:
            if response.status_code != 200:
                return response.status_code, response.text
            return 200, response.json()["choices"][0]["message"]["content"]
        text = ""
        for line in response.text.splitlines():
            if line.startswith("data: {"):
                chunk = httpx.Response(200, content=line[6:]).json()
                if "error" in chunk:
                    return 599, line
                for choice in chunk["choices"]:
                    text += choice["delta"].get("content") or ""
        return response.status_code, text

    async def run() -> list[tuple[int, str]]:
        async with httpx.AsyncClient(
            base_url=server.url,
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
            timeout=60,
            limits=httpx.Limits(max_connections=100),
        ) as http:
            return await asyncio.gather(*(one(http, i) for i in range(100)))

    results = asyncio.run(run())
    assert [status for status, _ in results] == [200] * 100
    assert [text for _, text in results] == [f"request number {i} says hello" for i in range(100)]
    # The broken deployments were tried, and their breakers opened.
    assert metric(server, "veil_breaker_state", provider="mixed", model="error-503") == 2
    assert metric(server, "veil_upstream_attempts_total", provider="mixed", model="hang") >= 1


def test_a_failover_costs_at_most_one_timeout_and_the_breaker_then_skips_it(
    server: VeilServer, client: openai.OpenAI
) -> None:
    for n in range(3):  # failures: 3 opens the breaker; a timeout is never retried
        started = time.monotonic()
        raw = client.chat.completions.with_raw_response.create(
            model="hang-then-echo", messages=HI, stream=n == 1
        )
        answer = raw.parse()
        elapsed = time.monotonic() - started
        assert HANG <= elapsed < 2 * HANG, f"request {n} took {elapsed:.2f} s"
        assert raw.headers["x-veil-provider"] == "hanging"
        assert raw.headers["x-veil-route-reason"].endswith("; failed over")
        if n == 1:  # the stream had sent its role chunk: still invisible to the caller
            text = "".join(c.choices[0].delta.content or "" for c in answer if c.choices)  # type: ignore[union-attr]
            assert text == "one two three four five"
        row = usage_row(server, raw.headers["x-request-id"])
        assert (row["status"], row["attempts"]) == (200, 2)
    assert metric(server, "veil_breaker_state", provider="hanging", model="hang") == 2
    started = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(model="hang-then-echo", messages=HI)
    assert time.monotonic() - started < HANG  # the open breaker is not waited on
    assert usage_row(server, raw.headers["x-request-id"])["attempts"] == 1
    assert (
        metric(server, "veil_upstream_attempts_total", provider="hanging", outcome="breaker_open")
        >= 1
    )


def test_a_deployment_connect_timeout_overrides_its_providers(
    server: VeilServer, client: openai.OpenAI
) -> None:
    """The provider would wait 30 s for a connection; this deployment waits HANG."""
    for stream in (False, True):
        started = time.monotonic()
        raw = client.chat.completions.with_raw_response.create(
            model="slow-connect", messages=HI, stream=stream
        )
        raw.parse()
        elapsed = time.monotonic() - started
        assert HANG <= elapsed < 2 * HANG + 1, f"took {elapsed:.2f} s"
        assert raw.headers["x-veil-provider"] == "spare"
        row = usage_row(server, raw.headers["x-request-id"])
        assert (row["status"], row["attempts"]) == (200, 2)  # a timeout is not retried


def test_an_open_breaker_stops_calls_to_a_dead_upstream(
    server: VeilServer, client: openai.OpenAI, upstream: Upstream
) -> None:
    before = len(upstream.received)
    for _ in range(20):
        answer = client.chat.completions.create(model="dead-upstream", messages=HI)
        assert answer.choices[0].message.content == "one two three four five"
    calls = [r for r in upstream.since(before) if r.body.get("model") == "error-503"]
    # Request 1: a call and its retry; request 2: the third failure opens the breaker.
    assert len(calls) == 3
    assert metric(server, "veil_breaker_state", provider="up", model="error-503") == 2
    assert metric(server, "veil_breaker_opened_total", provider="up", model="error-503") == 1


def test_all_breakers_open_is_a_503_with_retry_after(client: openai.OpenAI) -> None:
    for _ in range(2):  # 2 × (call + retry) ≥ 3 failures
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="only-dead", messages=HI)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="only-dead", messages=HI)
    assert info.value.status_code == 503
    assert "circuit breakers open" in info.value.message
    assert 1 <= int(info.value.response.headers["retry-after"]) <= 60


def test_a_stream_failing_after_its_first_token_ends_with_an_error_event(
    server: VeilServer, client: openai.OpenAI
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="cut-stream", messages=HI, stream=True
    )
    text = ""
    with pytest.raises(openai.APIError) as info:
        for chunk in raw.parse():
            text += "".join(c.delta.content or "" for c in chunk.choices)
    assert "closed the stream" in info.value.message
    assert text == "one two"  # what was delivered stays delivered; no second answer follows
    row = usage_row(server, raw.headers["x-request-id"])
    assert (row["status"], row["completion_tokens"], row["attempts"]) == (502, 2, 1)


def test_a_deployment_total_deadline_ends_a_stream_with_an_error(
    server: VeilServer, client: openai.OpenAI
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="slow-total", messages=HI, stream=True
    )
    with pytest.raises(openai.APIError) as info:
        for _ in raw.parse():
            pass
    assert "did not finish within 0.3 s" in info.value.message
    assert usage_row(server, raw.headers["x-request-id"])["status"] == 504


def test_a_bad_request_is_neither_retried_nor_failed_over(
    server: VeilServer, client: openai.OpenAI
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.with_raw_response.create(model="bad-request", messages=HI)
    row = usage_row(server, info.value.response.headers["x-request-id"])
    assert (row["status"], row["attempts"]) == (400, 1)
    assert metric(server, "veil_breaker_state", provider="bad") == 0  # not the upstream's fault


def test_after_every_deployment_the_next_model_is_tried(
    server: VeilServer, client: openai.OpenAI
) -> None:
    raw = client.chat.completions.with_raw_response.create(model="primary-broken", messages=HI)
    assert raw.parse().choices[0].message.content == "one two three four five"
    assert raw.parse().model == "the-fallback"
    reason = raw.headers["x-veil-route-reason"]
    assert reason.startswith("primary-broken: fallback of primary-broken")
    assert reason.endswith("failed over")
    assert usage_row(server, raw.headers["x-request-id"])["attempts"] == 3


# --------------------------------------------------------------------------- units


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_failures_and_probes_once_half_open() -> None:
    clock = Clock()
    changes: list[str] = []
    breaker = Breaker(BreakerConfig(failures=2, cooldown=10), changes.append, clock)
    breaker.failure()
    breaker.success()  # a success resets the count
    breaker.failure()
    assert breaker.allow()
    assert breaker.state == "closed"
    breaker.failure()
    assert breaker.state == "open"
    assert not breaker.allow()
    assert breaker.retry_after() == 10
    clock.now = 10
    assert breaker.allow()  # the probe
    assert breaker.state == "half_open"
    assert not breaker.allow()  # one probe at a time
    breaker.failure()  # the probe failed: open for another cooldown
    assert breaker.state == "open"
    assert not breaker.allow()
    clock.now = 20
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed"
    assert breaker.allow()
    assert changes == ["open", "half_open", "open", "half_open", "closed"]


def test_a_probe_that_ends_without_a_verdict_frees_the_slot() -> None:
    clock = Clock()
    breaker = Breaker(BreakerConfig(failures=1, cooldown=1), None, clock)
    breaker.failure()
    clock.now = 1
    assert breaker.allow()
    breaker.release()  # e.g. the caller disconnected
    assert breaker.allow()


def test_backoff_is_jittered_capped_and_gives_way_to_long_retry_after() -> None:
    config = RetryConfig(attempts=3, backoff=0.1, backoff_max=0.3)
    waits = [backoff(config, 3) for _ in range(200)]
    assert all(w is not None and 0 <= w <= 0.3 for w in waits)
    assert len({round(w or 0, 6) for w in waits}) > 100  # jittered, not a fixed delay
    assert backoff(config, 1, retry_after=0.2) == pytest.approx(0.2, abs=0.1)
    assert backoff(config, 1, retry_after=5) is None  # not worth waiting here: go elsewhere


def test_a_caller_who_leaves_before_the_answer_cancels_the_upstream_call(
    server: VeilServer,
) -> None:
    """``alone/hang`` would never answer: the request ends (499) when the caller leaves, not when
    a deadline fires — this deployment has none."""
    for stream in (False, True):
        body = {"model": "alone/hang", "messages": HI, "stream": stream}
        headers = {"authorization": f"Bearer {ADMIN_KEY}"}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server.url + "/v1/chat/completions", json=body, headers=headers, timeout=0.5)
        deadline = time.monotonic() + 10
        row = None
        while row is None and time.monotonic() < deadline:
            time.sleep(0.1)
            with sqlite3.connect(server.home / "veil.db") as conn:
                found = conn.execute(
                    "SELECT status, error_code, latency_ms FROM usage WHERE model = 'alone/hang' "
                    "AND stream = ? ORDER BY created_at DESC LIMIT 1",
                    (stream,),
                ).fetchone()
            row = found
        assert row is not None, "the abandoned request was never metered: still waiting?"
        assert row[0] == 499
        assert row[1] == "client_closed"
        assert row[2] < 5000
