"""Metering through the real server: exact bills, balanced ledger lines, limits with
Retry-After, and nothing lost when the gateway is killed — on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy
from sqlalchemy.pool import NullPool

from tests.support.server import ADMIN_KEY, VeilServer, key_for, start_server
from tests.support.upstream import Upstream

# Prices per million tokens; one token of ``echo`` costs 1_500_000 units in, 6_000_000 out.
IN, OUT = 1_500_000, 6_000_000
COST_IN, COST_OUT = 1_000_000, 4_000_000


def config(db_url: str | None, upstream: Upstream, extra: str = "", flush: float = 0.05) -> str:
    database = f"database: {{url: '{db_url}'}}\n" if db_url else ""
    return (
        database
        + f"""
providers:
  - {{name: fake, type: fake, token_delay: 0.2}}
  - {{name: partner-fake, type: fake, tier: partner, partner: openai, cloud: azure}}
  - {{name: upstream, type: openai_compatible, base_url: {upstream.base_url}}}
models:
  - name: echo
    price: {{input: 1.5, output: 6}}
    cost: {{input: 1, output: 4}}
    deployments: [{{provider: fake, model: echo}}]
  - name: gpt
    price: {{input: 1.5, output: 6}}
    cost: {{input: 1, output: 4}}
    deployments: [{{provider: partner-fake, model: echo}}]
  - name: failing-over
    price: {{input: 1.5, output: 6}}
    deployments: [{{provider: fake, model: error-503}}, {{provider: fake, model: echo}}]
  - name: slow
    price: {{input: 1.5, output: 6}}
    deployments: [{{provider: fake, model: slow}}]
  - name: no-usage
    price: {{input: 1.5, output: 6}}
    deployments: [{{provider: upstream, model: no-usage}}]
routing: {{retries: {{attempts: 1, backoff: 0}}}}
contracts:
  - name: azure-share
    match: {{partner: openai}}
    shares: [{{party: microsoft, percent: 20, of: cost, payer: azure}}]
tenants:
  - name: limited
    limits: {{tenant: {{requests_per_minute: 3}}}}
  - name: budgeted
    limits: {{key: {{budget: {{amount: 0.00002, period: month}}}}}}
metering: {{flush_interval: {flush}}}
"""
        + extra
    )


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("pg_url"))


class Db:
    """Read what the gateway wrote (SQLite file or PostgreSQL), waiting for the writer."""

    def __init__(self, url: str) -> None:
        self.engine = sqlalchemy.create_engine(url, poolclass=NullPool)

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sqlalchemy.text(sql), params).mappings()]

    def usage(self, request_id: str, timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.rows("SELECT * FROM usage WHERE id = :id", id=request_id)
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no usage row for {request_id}")

    def ledger(self, request_id: str) -> list[dict[str, Any]]:
        return self.rows(
            "SELECT * FROM ledger_entries WHERE request_id = :id ORDER BY line", id=request_id
        )


@pytest.fixture
def gateway(
    tmp_path: Path, upstream: Upstream, db_url: str | None
) -> Iterator[tuple[VeilServer, Db]]:
    server = start_server(tmp_path / "home", config(db_url, upstream))
    db = Db(db_url or f"sqlite:///{tmp_path / 'home' / 'veil.db'}")
    yield server, db
    server.stop()
    db.engine.dispose()


def sdk(server: VeilServer, key: str = ADMIN_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


def chat(server: VeilServer, key: str, model: str, text: str, **extra: Any) -> httpx.Response:
    return httpx.post(
        server.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {key}", **extra.pop("headers", {})},
        json={"model": model, "messages": [{"role": "user", "content": text}], **extra},
        timeout=30,
    )


def test_a_request_is_billed_exactly_and_posts_balanced_lines(
    gateway: tuple[VeilServer, Db],
) -> None:
    server, db = gateway
    key = key_for(server, "acme")
    r = chat(server, key, "echo", "one two three four five")
    assert r.status_code == 200, r.text
    row = db.usage(r.headers["x-request-id"])
    assert (row["prompt_tokens"], row["completion_tokens"]) == (5, 5)
    assert row["billed"] == 5 * IN + 5 * OUT
    assert row["cost"] == 5 * COST_IN + 5 * COST_OUT
    lines = db.ledger(row["id"])
    assert [(x["account"], x["amount"], x["kind"]) for x in lines] == [
        ("tenant:acme", row["billed"], "charge"),
        ("platform", -row["billed"], "charge"),
    ]  # private tier: the cost is the platform's own, no partner to pay


def test_partner_traffic_pays_the_host_and_the_contract_shares(
    gateway: tuple[VeilServer, Db],
) -> None:
    server, db = gateway
    key = key_for(server, "acme", "u1")
    r = chat(server, key, "gpt", "alpha beta", headers={"x-veil-consent": "openai"})
    assert r.status_code == 200, r.text
    row = db.usage(r.headers["x-request-id"])
    cost = 2 * COST_IN + 2 * COST_OUT
    lines = {(x["account"], x["kind"]): x["amount"] for x in db.ledger(row["id"])}
    assert sum(lines.values()) == 0
    assert lines[("party:azure", "cost")] == -cost  # served from Azure: Azure charges
    assert lines[("party:microsoft", "share")] == -(cost // 5)
    assert lines[("party:azure", "share")] == cost // 5


def test_streams_are_billed_from_the_usage_the_caller_also_sees(
    gateway: tuple[VeilServer, Db],
) -> None:
    server, db = gateway
    with sdk(server).chat.completions.with_streaming_response.create(
        model="echo",
        messages=[{"role": "user", "content": "a b c"}],
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        chunks = list(response.parse())
        request_id = response.headers["x-request-id"]
    usage = chunks[-1].usage
    assert usage is not None
    row = db.usage(request_id)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        usage.prompt_tokens,
        usage.completion_tokens,
    )
    assert row["billed"] == usage.prompt_tokens * IN + usage.completion_tokens * OUT


def test_a_failed_over_request_is_billed_once(gateway: tuple[VeilServer, Db]) -> None:
    server, db = gateway
    r = chat(server, ADMIN_KEY, "failing-over", "x y")
    assert r.status_code == 200, r.text
    assert "failed over" in r.headers["x-veil-route-reason"]
    row = db.usage(r.headers["x-request-id"])
    assert row["attempts"] == 3  # two tries of the 503 deployment, then the echo one
    assert row["billed"] == 2 * IN + 2 * OUT  # only what the serving attempt consumed
    assert len(db.ledger(row["id"])) == 2
    assert len(db.rows("SELECT id FROM usage WHERE id = :id", id=row["id"])) == 1


def test_a_cancelled_stream_is_billed_for_what_was_delivered(
    gateway: tuple[VeilServer, Db],
) -> None:
    server, db = gateway
    words = " ".join(f"w{i}" for i in range(20))  # 0.2 s a token: about 4 s in all
    delivered = 0
    with httpx.stream(
        "POST",
        server.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        json={"model": "slow", "messages": [{"role": "user", "content": words}], "stream": True},
        timeout=30,
    ) as response:
        request_id = response.headers["x-request-id"]
        for line in response.iter_lines():
            if line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"][0]["delta"]
                delivered += bool(delta.get("content"))
            if delivered == 3:
                break  # hang up
    row = db.usage(request_id)
    assert row["status"] == 499
    # What the gateway produced by the time it noticed: at least what the caller read.
    assert 3 <= row["completion_tokens"] < 20
    assert row["billed"] == 20 * IN + row["completion_tokens"] * OUT


def test_tokens_are_counted_when_the_upstream_reports_none(
    gateway: tuple[VeilServer, Db],
) -> None:
    server, db = gateway
    r = chat(server, ADMIN_KEY, "no-usage", "count these tokens please")
    assert r.status_code == 200, r.text
    row = db.usage(r.headers["x-request-id"])
    assert row["token_method"] == "counted"
    assert row["prompt_tokens"] >= 5
    assert row["completion_tokens"] > 0
    assert row["billed"] == row["prompt_tokens"] * IN + row["completion_tokens"] * OUT


def test_requests_per_minute_is_a_429_naming_the_limit(gateway: tuple[VeilServer, Db]) -> None:
    server, db = gateway
    client = sdk(server, key_for(server, "limited"))
    for _ in range(3):
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}])
    response = err.value.response
    assert 1 <= int(response.headers["retry-after"]) <= 60
    body = response.json()["error"]
    assert body["code"] == "rate_limit_exceeded"
    assert "tenant limited may use 3 requests per minute" in body["message"]
    row = db.usage(response.headers["x-request-id"])
    assert (row["status"], row["billed"]) == (429, 0)


def test_a_spent_budget_is_a_429_until_the_period_renews(gateway: tuple[VeilServer, Db]) -> None:
    server, _ = gateway
    key = key_for(server, "budgeted")
    other = key_for(server, "budgeted")
    # 0.00002 is 20_000_000 units: one request of 2 + 2 tokens costs 15_000_000.
    assert chat(server, key, "echo", "one two").status_code == 200
    assert chat(server, key, "echo", "one two").status_code == 200  # 15M spent < 20M
    r = chat(server, key, "echo", "one two")
    assert r.status_code == 429
    error = r.json()["error"]
    assert error["code"] == "budget_exceeded"
    assert "may spend 0.00002 USD per month and has spent 0.00003" in error["message"]
    assert int(r.headers["retry-after"]) > 0
    # The budget is per key: another key of the tenant still has its own.
    assert chat(server, other, "echo", "one two").status_code == 200


def test_a_killed_gateway_loses_no_metered_request(
    tmp_path: Path, upstream: Upstream, db_url: str | None
) -> None:
    """Rows still waiting for their batch (a 60 s interval here) when the process is killed
    with SIGKILL are posted, once each, when it starts again; so is the request it was in
    the middle of answering."""
    home = tmp_path / "home"
    server = start_server(home, config(db_url, upstream, flush=60))
    db = Db(db_url or f"sqlite:///{home / 'veil.db'}")
    ids = []
    for i in range(12):
        r = chat(server, ADMIN_KEY, "echo", " ".join(["w"] * (i + 1)))
        assert r.status_code == 200
        ids.append(r.headers["x-request-id"])
    in_flight = httpx.stream(
        "POST",
        server.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        json={
            "model": "slow",
            "messages": [{"role": "user", "content": "a b c d e f g h"}],
            "stream": True,
        },
        timeout=30,
    )
    with in_flight as response:
        slow_id = response.headers["x-request-id"]
        lines = response.iter_lines()  # kept: a dropped iterator would close the response
        next(lines)
        assert db.rows("SELECT id FROM usage") == []  # nothing written yet
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)
    server.log_file.close()

    again = start_server(home, config(db_url, upstream))
    try:
        assert "recovered 12 metered and 1 interrupted requests" in again.log
        for i, request_id in enumerate(ids):
            row = db.usage(request_id)
            assert row["billed"] == (i + 1) * (IN + OUT)
            assert len(db.ledger(request_id)) == 2
        interrupted = db.usage(slow_id)
        assert (interrupted["status"], interrupted["error_code"]) == (500, "interrupted")
        assert interrupted["token_method"] == "estimated"
        assert interrupted["billed"] == interrupted["prompt_tokens"] * IN > 0
        total = db.rows("SELECT COUNT(*) AS n, SUM(amount) AS s FROM ledger_entries")[0]
        assert (total["n"], total["s"]) == (26, 0)
        assert list((home / "journal").iterdir()) != []  # the new process's own segment
    finally:
        again.stop()
        db.engine.dispose()
    # A clean stop leaves no journal behind, and a third start recovers nothing.
    assert list((home / "journal").iterdir()) == []


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(p) for p in text]
    return found


def test_a_dead_writer_process_is_restarted_and_loses_nothing(
    tmp_path: Path, upstream: Upstream
) -> None:
    home = tmp_path / "home"
    server = start_server(home, config(None, upstream))
    db = Db(f"sqlite:///{home / 'veil.db'}")
    try:
        [writer] = _children(server.process.pid)
        cmdline = Path(f"/proc/{writer}/cmdline").read_bytes()
        assert b"veil.ledger.writer" in cmdline
        os.kill(writer, signal.SIGKILL)
        ids = []
        for _ in range(5):
            r = chat(server, ADMIN_KEY, "echo", "one two")
            assert r.status_code == 200
            ids.append(r.headers["x-request-id"])
        for request_id in ids:
            assert db.usage(request_id)["billed"] == 2 * (IN + OUT)
        assert "restarting it" in server.log
        [again] = _children(server.process.pid)
        assert again != writer
    finally:
        server.stop()
        db.engine.dispose()
