"""The dashboard's JSON and the privacy report, through a real gateway with a real private
node and partner: counts by tier, what left the device, denials, moderation, latency, money;
each key sees its own tenant only; no content anywhere."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.dashboard import EMAIL, PHONE, Stack, start_stack
from tests.support.server import usage_row
from tests.support.upstream import Upstream
from veil.dashboard.queries import moderation_events, policy_denials, window


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("dashboard"), upstream)
    yield s
    s.stop()


def _overview(stack: Stack, key: str | None = None, **params: str) -> dict[str, Any]:
    with stack.http(key) if key else stack.http() as c:
        r = c.get("/dashboard/api/overview", params={"window": "1h", **params})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _until(check: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def test_overview_counts_what_was_served_where_and_what_left(stack: Stack) -> None:
    acme, alice = stack.keys["acme"], stack.keys["alice"]
    before = _overview(stack, tenant="acme")["totals"]
    tag = uuid.uuid4().hex[:8]
    assert stack.chat(alice, "small", f"device {tag}").status_code == 200
    assert stack.chat(alice, "small", f"device again {tag}").status_code == 200
    assert stack.chat(alice, "big", f"node {tag}").status_code == 200
    sent = stack.chat(alice, "gpt-4o", f"mail {EMAIL} or {PHONE} {tag}", consent="openai")
    assert sent.status_code == 200, sent.text
    assert stack.chat(acme, "gpt-4o-direct", f"x {tag}", consent="openai").status_code == 403
    flagged = stack.chat(acme, "small", "how do I build a pipe bomb to kill my neighbour")
    assert flagged.status_code == 200
    assert flagged.headers["x-veil-moderation"].startswith("input:flag:")

    def grown() -> dict[str, Any] | None:
        body = _overview(stack, tenant="acme")
        return body if body["totals"]["requests"] - before["requests"] >= 6 else None

    body = _until(grown)
    assert body is not None, "the usage rows never arrived"
    totals = body["totals"]
    delta = {k: totals[k] - before[k] for k in totals}
    assert delta["requests"] == 6
    assert (delta["on_device"], delta["private"], delta["partner"], delta["refused"]) == (
        3,
        1,
        1,
        1,
    )
    assert delta["left_device"] == 2
    assert delta["errors"] == 1
    assert delta["redactions"] == 2
    assert delta["bytes_out"] > len(f"mail  or  {tag}")
    assert sum(sum(body["series"][t]) for t in body["series"]) == totals["requests"]

    openai_row = next(p for p in body["partners"] if p["partner"] == "openai")
    assert openai_row["redactions"]["EMAIL_ADDRESS"] >= 1
    assert openai_row["redactions"]["PHONE_NUMBER"] >= 1
    assert {c["cloud"] for c in body["clouds"]} == {"azure"}  # the contract held
    rule = next(d for d in body["policy_denials"] if d["rule"] == "openai-on-azure-only")
    assert rule["denied"] >= 1  # gpt-4o-direct refused
    assert rule["skipped"] >= 1  # gpt-4o passed over openai-direct for openai-azure
    assert any(m["stage"] == "input" and m["action"] == "flag" for m in body["moderation"])
    assert {row["tier"] for row in body["latency"]} >= {"device", "private", "partner"}
    for row in body["latency"]:
        assert 0 <= row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
    assert {s["name"] for s in body["money"]["spend"]} >= {"small", "big", "gpt-4o"}
    assert body["money"]["spend_by"] == "model"
    assert body["money"]["parties"] == []  # the revenue share is the operator's to see


def test_bytes_out_is_what_was_sent_and_zero_on_the_device(
    stack: Stack, upstream: Upstream
) -> None:
    alice = stack.keys["alice"]
    local = stack.chat(alice, "small", "stays here")
    received, away = upstream.capture(
        lambda: stack.chat(alice, "gpt-4o", "goes to the partner " * 20, consent="openai")
    )
    assert away.status_code == 200
    wire = len(json.dumps(received.body))
    assert usage_row(stack.server, local.headers["x-request-id"])["bytes_out"] == 0
    sent = usage_row(stack.server, away.headers["x-request-id"])["bytes_out"]
    assert 0.5 * wire < sent < 1.5 * wire  # the request as JSON, not the provider's framing


def test_admin_sees_every_tenant_and_the_revenue_share(stack: Stack) -> None:
    stack.chat(stack.keys["globex"], "small", "hello from globex")
    stack.chat(stack.keys["alice"], "gpt-4o", "hello", consent="openai")
    body = _until(lambda: "globex" in (b := _overview(stack))["tenants"] and b)
    assert {"acme", "globex"} <= set(body["tenants"])
    assert {s["name"] for s in body["money"]["spend"]} >= {"acme", "globex"}
    parties = {p["party"]: p["earned"] for p in body["money"]["parties"]}
    assert float(parties["azure"]) > 0  # 20% of openai's revenue, by contract
    assert {(b["provider"], b["state"]) for b in body["breakers"]} >= {("phone", "closed")}
    globex = _overview(stack, tenant="globex")
    assert globex["tenant"] == "globex"
    assert globex["totals"]["requests"] < body["totals"]["requests"]


def test_a_tenant_key_sees_its_own_tenant_only(stack: Stack) -> None:
    acme, globex = stack.keys["acme"], stack.keys["globex"]
    before = _overview(stack, globex)["totals"]["requests"]
    stack.chat(acme, "small", "acme only")
    own = _until(lambda: (b := _overview(stack, acme))["totals"]["requests"] > 0 and b)
    assert own["tenant"] == "acme"
    assert "tenants" not in own
    assert "breakers" not in own
    time.sleep(1.5)  # the usage writer's flush: globex's count must not have moved
    assert _overview(stack, globex)["totals"]["requests"] == before
    with stack.http(acme) as c:
        r = c.get("/dashboard/api/overview", params={"tenant": "globex"})
        assert r.status_code == 403
        assert r.json()["error"]["param"] == "tenant"
        report = c.get("/v1/privacy/report", params={"user": "alice", "tenant": "globex"})
        assert report.status_code == 403


def test_every_api_route_needs_a_key_and_the_page_needs_none(stack: Stack) -> None:
    for path in (
        "/dashboard/api/session",
        "/dashboard/api/overview",
        "/dashboard/api/nodes",
        "/v1/privacy/report",
    ):
        r = httpx.get(stack.url + path)
        assert r.status_code == 401, path
        bad = httpx.get(stack.url + path, headers={"authorization": "Bearer veil-nope"})
        assert bad.status_code == 401, path
    page = httpx.get(stack.url + "/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    for name in ("..%2Froutes.py", "queries.py", "missing.js"):
        assert httpx.get(stack.url + "/dashboard/assets/" + name).status_code == 404


def test_session_says_who_the_key_is(stack: Stack) -> None:
    with stack.http() as c:
        admin = c.get("/dashboard/api/session").json()
    with stack.http(stack.keys["alice"]) as c:
        alice = c.get("/dashboard/api/session").json()
    assert (admin["admin"], admin["tenant"]) == (True, None)
    assert (alice["admin"], alice["tenant"], alice["user"]) == (False, "acme", "alice")
    assert admin["windows"] == ["1h", "24h", "7d", "30d"]


def test_an_unknown_window_is_a_clear_400(stack: Stack) -> None:
    with stack.http() as c:
        r = c.get("/dashboard/api/overview", params={"window": "1y"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_window"
    assert "1h, 24h, 7d, 30d" in r.json()["error"]["message"]


def test_nodes_show_attestation_and_the_log_head_to_every_key(stack: Stack) -> None:
    with stack.http(stack.keys["globex"]) as c:
        body = _until(
            lambda: (
                c.get("/dashboard/api/nodes").json()["data"][0]["log_head"]
                and c.get("/dashboard/api/nodes").json()
            )
        )
    pool = body["data"][0]
    assert pool["provider"] == "pcc"
    assert pool["log_head"]["tree_size"] == 1
    node = pool["nodes"][0]
    assert (node["state"], node["measurement"]) == ("attested", stack.measurement)
    assert node["release"]["version"] == "1.0"


def test_privacy_report_lists_what_left_and_never_the_content(stack: Stack, tmp_path: Path) -> None:
    alice = stack.keys["alice"]
    secret = f"my-private-thought-{uuid.uuid4().hex[:10]}"
    ids = {
        "device": stack.chat(alice, "small", f"{secret} a").headers["x-request-id"],
        "private": stack.chat(alice, "big", f"{secret} b").headers["x-request-id"],
        "partner": stack.chat(
            alice, "gpt-4o", f"{secret} {EMAIL} {PHONE}", consent="openai"
        ).headers["x-request-id"],
    }

    def report() -> dict[str, Any] | None:
        with stack.http(alice) as c:
            r = c.get("/v1/privacy/report")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body if {ids["private"], ids["partner"]} <= {d["id"] for d in body["data"]} else None

    body = _until(report)
    assert body is not None
    assert (body["object"], body["tenant"], body["user"]) == ("privacy_report", "acme", "alice")
    rows = {d["id"]: d for d in body["data"]}
    assert ids["device"] not in rows  # it never left
    assert all(d["tier"] in ("private", "partner") for d in body["data"])
    partner = rows[ids["partner"]]
    assert (partner["partner"], partner["model"], partner["cloud"]) == ("openai", "gpt-4o", "azure")
    assert partner["consent"] == "request"
    assert partner["values_replaced"] == 2
    assert partner["redactions"] == {"EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1}
    assert rows[ids["private"]]["node_measurement"] == stack.measurement
    assert body["summary"]["on_device"] >= 1
    for text in (secret, EMAIL, PHONE):
        assert text not in str(body)

    with stack.http(alice) as c:
        download = c.get("/v1/privacy/report", params={"download": "true"})
        assert "attachment" in download.headers["content-disposition"]
        assert c.get("/v1/privacy/report", params={"user": "bob"}).status_code == 403
    with stack.http(stack.keys["acme"]) as c:  # the tenant's app key names the user
        same = c.get("/v1/privacy/report", params={"user": "alice"}).json()
        assert {d["id"] for d in same["data"]} == {d["id"] for d in body["data"]}
        missing = c.get("/v1/privacy/report")
        assert missing.status_code == 400
    with stack.http(stack.keys["globex"]) as c:  # the same user id in another tenant
        other = c.get("/v1/privacy/report", params={"user": "alice"}).json()
        assert other["data"] == []
        assert other["summary"]["requests"] == 0
    with stack.http() as c:
        assert c.get("/v1/privacy/report", params={"user": "alice"}).status_code == 400
        admin = c.get("/v1/privacy/report", params={"user": "alice", "tenant": "acme"}).json()
        assert ids["partner"] in {d["id"] for d in admin["data"]}


def test_policy_and_moderation_summaries_are_counted_by_rule_and_category() -> None:
    denials = policy_denials(
        [
            ("policy skipped openai-direct by openai-on-azure-only", 1),
            (
                "policy skipped a by residency-eu, b by partners:acme; policy skipped c by residency-eu",
                1,
            ),
            (
                "policy denied: the model 'm' cannot serve tenant 't': openai-on-azure-only "
                "(openai may only be served from azure, not openai); residency-eu (no region)",
                1,
            ),
        ]
    )
    assert denials == [  # requests per rule, most first
        {"rule": "openai-on-azure-only", "denied": 1, "skipped": 1},
        {"rule": "residency-eu", "denied": 1, "skipped": 1},
        {"rule": "partners:acme", "denied": 0, "skipped": 1},
    ]
    events = moderation_events(
        [("input:flag:violence,illicit", 1), ("input:flag:violence;output:block:sexual", 1)]
    )
    assert events[0] == {"category": "violence", "stage": "input", "action": "flag", "count": 2}
    assert {"category": "sexual", "stage": "output", "action": "block", "count": 1} in events


def test_windows_end_on_a_bucket_edge_after_now() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 11, 22, 12, 34, 56, tzinfo=UTC)
    w = window("24h", now)
    assert w.end == datetime(2026, 11, 22, 13, 0, tzinfo=UTC)
    assert w.buckets == 48
    assert w.start < now < w.end


def test_metrics_count_by_tier_and_type_and_hold_no_content(stack: Stack) -> None:
    secret = f"metrics-canary-{uuid.uuid4().hex[:8]}"
    alice = stack.keys["alice"]
    assert stack.chat(alice, "gpt-4o", f"{secret} {EMAIL}", consent="openai").status_code == 200
    assert stack.chat(alice, "big", secret).status_code == 200
    text = httpx.get(stack.url + "/metrics").text
    assert 'veil_redactions_total{provider="openai-azure",type="EMAIL_ADDRESS"}' in text
    for tier, provider, model in (("partner", "openai-azure", "gpt-4o"), ("private", "pcc", "big")):
        labels = f'model="{model}",provider="{provider}",status="200",tier="{tier}"'
        assert f"veil_requests_total{{{labels}}}" in text
        assert (
            f'veil_tokens_total{{direction="prompt",model="{model}",provider="{provider}",tier="{tier}"}}'
            in text
        )
    assert 'veil_breaker_state{model="echo",provider="pcc"} 0.0' in text
    assert "veil_request_duration_seconds_bucket" in text
    for leaked in (secret, EMAIL, "alice", "acme"):
        assert leaked not in text
