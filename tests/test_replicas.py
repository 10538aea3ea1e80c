"""Several gateway replicas sharing PostgreSQL and Redis: limits are global and the ledger
is exact under concurrent load. Also the Redis limiter on its own."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.support.server import VeilServer, key_for, start_server, wait_ready
from tests.test_metering import IN, OUT, Db
from veil.config import parse_config
from veil.errors import RateLimited
from veil.ledger.limits import BudgetExceeded, Limits, RedisLimiter, Scope
from veil.ledger.money import UNIT

LIMITS = """
limits:
  tenant: {requests_per_minute: 25, tokens_per_minute: 1000000}
tenants:
  - name: rich
    limits: {tenant: {requests_per_minute: 100000, budget: {amount: 0.001, period: month}}}
"""


def _spent(amount: int):  # type: ignore[no-untyped-def]
    async def spent(scope: Scope, start: datetime, end: datetime) -> int:
        return amount

    return spent


def test_two_redis_limiters_share_one_limit(fresh_redis_url: str) -> None:
    """Two limiters (as in two replicas) admitting concurrently: exactly the limit passes."""
    limits = Limits(parse_config(LIMITS))

    async def go() -> tuple[int, list[RateLimited]]:
        a = RedisLimiter(limits, _spent(0), fresh_redis_url, "t1:")
        b = RedisLimiter(limits, _spent(0), fresh_redis_url, "t1:")
        await a.start()
        await b.start()
        scopes = limits.scopes("acme", None, None)

        async def one(limiter: RedisLimiter) -> RateLimited | None:
            try:
                await limiter.admit(scopes)
            except RateLimited as exc:
                return exc
            return None

        results = await asyncio.gather(*(one(a if i % 2 else b) for i in range(60)))
        await a.close()
        await b.close()
        refused = [r for r in results if r is not None]
        return 60 - len(refused), refused

    admitted, refused = asyncio.run(go())
    assert admitted == 25
    assert all("tenant acme may use 25 requests per minute" in r.message for r in refused)
    assert all(r.retry_after is not None and 1 <= r.retry_after <= 60 for r in refused)


def test_redis_budgets_seed_from_the_database_and_count_what_is_spent(
    fresh_redis_url: str,
) -> None:
    limits = Limits(parse_config(LIMITS))
    seeded: list[str] = []

    async def spent(scope: Scope, start: datetime, end: datetime) -> int:
        seeded.append(scope.ident)
        return UNIT // 1000 - 10**6  # a millionth under the 0.001 budget

    async def go() -> BudgetExceeded:
        a = RedisLimiter(limits, spent, fresh_redis_url, "t2:")
        b = RedisLimiter(limits, spent, fresh_redis_url, "t2:")
        await a.start()
        await b.start()
        scopes = limits.scopes("rich", None, None)
        await a.admit(scopes)
        await b.admit(scopes)  # b finds the counter a seeded: no second seed
        a.used(scopes, 10, 10**6)  # now exactly at the budget
        await a.close()  # flushes
        try:
            with pytest.raises(BudgetExceeded) as err:
                await b.admit(scopes)
        finally:
            await b.close()
        return err.value

    error = asyncio.run(go())
    assert seeded == ["rich"]
    assert "tenant rich may spend 0.001 USD per month and has spent 0.001" in error.message


# ------------------------------------------------------------------ real replicas

REPLICA_CONFIG = """
database: {{url: '{db}'}}
redis: {{url: '{redis}'}}
providers:
  - {{name: fake, type: fake}}
  - {{name: partner-fake, type: fake, tier: partner, partner: openai, cloud: azure}}
models:
  - name: echo
    price: {{input: 1.5, output: 6}}
    deployments: [{{provider: fake, model: echo}}]
  - name: gpt
    price: {{input: 1.5, output: 6}}
    cost: {{input: 1, output: 4}}
    deployments: [{{provider: partner-fake, model: echo}}]
contracts:
  - name: azure-share
    match: {{partner: openai}}
    shares: [{{party: microsoft, percent: 20, of: cost, payer: azure}}]
tenants:
  - name: limited
    limits: {{tenant: {{requests_per_minute: 20}}}}
metering: {{flush_interval: 0.05}}
"""


@pytest.fixture
def replicas(
    tmp_path: Path, pg_url: str, fresh_redis_url: str
) -> Iterator[tuple[list[VeilServer], Db]]:
    config = REPLICA_CONFIG.format(db=pg_url, redis=fresh_redis_url)
    servers: list[VeilServer] = []
    try:
        # Started together, so they race to migrate the empty database too.
        for i in range(3):
            servers.append(start_server(tmp_path / f"replica{i}", config, wait=False))
        for server in servers:
            wait_ready(server)
        db = Db(pg_url)
        yield servers, db
    finally:
        for server in servers:
            server.stop()


def test_replicas_enforce_one_global_limit_and_post_an_exact_ledger(
    replicas: tuple[list[VeilServer], Db],
) -> None:
    servers, db = replicas
    acme = key_for(servers[0], "acme", "u1")  # issued on one replica, used on all
    limited = key_for(servers[1], "limited")
    cycle = itertools.cycle(servers)
    jobs: list[tuple[VeilServer, str, str, int]] = []
    for i in range(90):
        words = 1 + i % 7
        jobs.append((next(cycle), acme, "echo" if i % 3 else "gpt", words))
    for _ in range(60):
        jobs.append((next(cycle), limited, "echo", 2))

    def send(job: tuple[VeilServer, str, str, int]) -> tuple[int, str, int, str]:
        server, key, model, words = job
        r = httpx.post(
            server.url + "/v1/chat/completions",
            headers={"authorization": f"Bearer {key}", "x-veil-consent": "openai"},
            json={"model": model, "messages": [{"role": "user", "content": "w " * words}]},
            timeout=60,
        )
        return r.status_code, key, words, r.headers.get("x-request-id", "")

    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(send, jobs))

    limited_codes = sorted(code for code, key, _, _ in results if key == limited)
    assert limited_codes.count(200) == 20  # 20 a minute, whichever replica is asked
    assert limited_codes.count(429) == 40
    assert all(code == 200 for code, key, _, _ in results if key == acme)

    expected = sum(w * (IN + OUT) for code, _, w, _ in results if code == 200)
    ids = [request_id for *_, request_id in results]
    assert len(set(ids)) == len(ids) == 150

    for server in servers:
        server.stop()  # a clean stop flushes every replica's last batch
    usage = db.rows("SELECT COUNT(*) AS n, SUM(billed) AS billed FROM usage")[0]
    assert usage["n"] == 150  # every request metered once: 110 answered, 40 refused
    charges = db.rows(
        "SELECT SUM(amount) AS s, COUNT(*) AS n FROM ledger_entries "
        "WHERE kind = 'charge' AND account LIKE 'tenant:%'"
    )[0]
    assert charges["s"] == usage["billed"] == expected
    assert charges["n"] == 110
    balance = db.rows("SELECT SUM(amount) AS s FROM ledger_entries")[0]["s"]
    assert balance == 0
    unbalanced = db.rows(
        "SELECT request_id FROM ledger_entries GROUP BY request_id HAVING SUM(amount) <> 0"
    )
    assert unbalanced == []
    partner = db.rows(
        "SELECT COUNT(DISTINCT request_id) AS n FROM ledger_entries WHERE kind = 'share'"
    )[0]
    assert partner["n"] == 30  # every third acme request went to the partner
    # And no replica left anything in its journal.
    for server in servers:
        assert list((server.home / "journal").iterdir()) == []
    db.engine.dispose()


def test_an_unreachable_redis_fails_open_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    from tests.support.upstream import free_port

    limits = Limits(parse_config(LIMITS))
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there

    async def go() -> int:
        limiter = RedisLimiter(limits, _spent(0), url, "t3:")
        try:
            for _ in range(30):  # more than the limit of 25: nothing can be checked
                await limiter.admit(limits.scopes("acme", None, None))
        finally:
            await limiter.close()
        return limiter.unavailable

    assert asyncio.run(go()) == 30
    assert "rate-limit store unreachable" in caplog.text
