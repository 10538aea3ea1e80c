"""Money, prices, postings, the crash journal and the in-process limiter, without a server."""

from __future__ import annotations

import asyncio
import fcntl
import os
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from veil.config import parse_config
from veil.errors import ConfigError, RateLimited
from veil.ledger import journal
from veil.ledger.limits import BudgetExceeded, Limits, LocalLimiter, Scope, period_bounds
from veil.ledger.money import UNIT, format_amount, per_token, share, to_decimal, units
from veil.ledger.postings import Book, Posting, Tariff
from veil.ledger.usage import UsageRecord

BASE = """
providers:
  - {name: fake, type: fake}
  - {name: azure-east, type: fake, tier: partner, partner: openai, cloud: azure}
  - {name: oai, type: fake, tier: partner, partner: openai, cloud: openai}
models:
  - name: small
    price: {input: 0.15, output: 0.6}
    cost: {input: 0.1, output: 0.4}
    deployments: [{provider: fake, model: echo}]
  - name: gpt
    price: {input: 2.5, output: 10}
    cost: {input: 2, output: 8}
    deployments: [{provider: azure-east, model: echo}, {provider: oai, model: echo}]
  - name: at-cost
    cost: {input: 1, output: 3}
    deployments: [{provider: fake, model: echo}]
  - name: free
    deployments: [{provider: fake, model: echo}]
"""


# ---------------------------------------------------------------- money


def test_prices_are_exact_decimals_not_floats() -> None:
    assert to_decimal(0.15, 6, "a price") == Decimal("0.15")
    assert to_decimal("0.0375", 6, "a price") == Decimal("0.0375")
    assert per_token(Decimal("0.15")) == 150_000  # units (10⁻¹²) per token
    assert per_token(Decimal("0.000001")) == 1
    # A million tokens at 0.15 is exactly 0.15, with no float drift.
    assert 1_000_000 * per_token(Decimal("0.15")) == units(Decimal("0.15"))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0.0000001, "at most 6 decimals"),
        (-1, "must not be negative"),
        ("abc", "must be a number"),
        (True, "must be a number"),
        ("nan", "finite"),
    ],
)
def test_bad_prices_are_refused(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_decimal(value, 6, "a price")


def test_a_bad_price_in_config_names_file_line_and_key() -> None:
    text = BASE.replace("output: 0.6}", "output: 0.6000001}")
    with pytest.raises(ConfigError) as err:
        parse_config(text, "veil.yaml")
    [problem] = err.value.problems
    assert problem.file == "veil.yaml"
    assert problem.key == "models[0].price.output"
    assert problem.line == 8  # BASE starts with a blank line
    assert "at most 6 decimals" in problem.message


def test_tenant_prices_must_name_known_models() -> None:
    with pytest.raises(ConfigError, match=r"tenants\[0\]\.prices\.nope.*no model named"):
        parse_config(BASE + "tenants: [{name: t, prices: {nope: {input: 1, output: 1}}}]")


@pytest.mark.parametrize(
    ("base", "percent", "expected"),
    [
        (100, "20", 20),
        (5, "50", 2),  # 2.5 → 2 (half to even)
        (7, "50", 4),  # 3.5 → 4 (half to even)
        (1, "33.3333", 0),
        (3, "33.3333", 1),
        (10**18, "12.3456", 123_456_000_000_000_000),
        (-7, "50", -4),
    ],
)
def test_shares_round_half_to_even(base: int, percent: str, expected: int) -> None:
    assert share(base, Decimal(percent)) == expected


@given(st.integers(min_value=0, max_value=10**15), st.integers(min_value=1, max_value=1_000_000))
def test_shares_are_within_half_a_unit_of_the_exact_value(base: int, basis_points: int) -> None:
    percent = Decimal(basis_points) / 10_000
    exact = Decimal(base) * percent / 100
    assert abs(Decimal(share(base, percent)) - exact) <= Decimal("0.5")


def test_amounts_format_exactly() -> None:
    assert format_amount(12 * UNIT) == "12.00"
    assert format_amount(150_000_000) == "0.00015"
    assert format_amount(-1) == "-0.000000000001"
    assert format_amount(0) == "0.00"


# ---------------------------------------------------------------- tariff and book


def test_tariff_bills_tenant_prices_and_records_upstream_cost() -> None:
    config = parse_config(
        BASE + "tenants: [{name: vip, prices: {small: {input: 0.1, output: 0.2}}}]"
    )
    tariff = Tariff(config)
    assert tariff.charge("acme", "small", 1000, 500) == (450_000_000, 300_000_000)
    assert tariff.charge("vip", "small", 1000, 500) == (200_000_000, 300_000_000)
    # No price: billed at cost. No price and no cost: free.
    assert tariff.charge("acme", "at-cost", 10, 10) == (40_000_000, 40_000_000)
    assert tariff.charge("acme", "free", 10, 10) == (0, 0)
    assert tariff.charge("acme", None, 10, 10) == (0, 0)


CONTRACTS = """
contracts:
  - name: azure-share-of-openai
    match: {partner: openai}
    shares: [{party: azure, percent: 20, of: cost, payer: openai}]
  - name: reseller
    match: {tenant: [acme, beta], tier: partner}
    shares: [{party: reseller-co, percent: 12.5, of: revenue}]
  - name: never
    match: {cloud: azure, tenant: nobody}
    shares: [{party: nobody, percent: 50, of: revenue}]
"""


def test_each_request_posts_balanced_lines_and_contract_shares() -> None:
    config = parse_config(BASE + CONTRACTS)
    tariff = Tariff(config)
    book = Book(config.contracts)
    billed, cost = tariff.charge("acme", "gpt", 1001, 333)
    lines = book.post(Posting("acme", "gpt", "partner", "openai", "openai", billed, cost))
    assert sum(line.amount for line in lines) == 0
    by = {(line.account, line.kind, line.contract): line.amount for line in lines}
    assert by[("tenant:acme", "charge", None)] == billed == 1001 * 2_500_000 + 333 * 10_000_000
    assert by[("platform", "charge", None)] == -billed
    # The cost goes to the host (openai's own cloud here); azure gets 20 % of it from openai.
    assert by[("party:openai", "cost", None)] == -cost
    assert by[("party:azure", "share", "azure-share-of-openai")] == -share(cost, Decimal(20))
    assert by[("party:openai", "share", "azure-share-of-openai")] == share(cost, Decimal(20))
    assert by[("party:reseller-co", "share", "reseller")] == -share(billed, Decimal("12.5"))
    assert not any(line.contract == "never" for line in lines)


def test_served_from_azure_the_cost_is_owed_to_azure() -> None:
    config = parse_config(BASE + CONTRACTS)
    lines = Book(config.contracts).post(Posting("zeta", "gpt", "partner", "openai", "azure", 10, 8))
    costs = {line.account: line.amount for line in lines if line.kind == "cost"}
    assert costs == {"platform": 8, "party:azure": -8}
    # zeta is not a reseller tenant: no reseller share.
    assert {line.contract for line in lines} == {None, "azure-share-of-openai"}


def test_private_traffic_has_no_partner_cost_line() -> None:
    config = parse_config(BASE + CONTRACTS)
    lines = Book(config.contracts).post(Posting("acme", "small", "private", None, None, 5, 3))
    assert [(line.account, line.amount) for line in lines] == [
        ("tenant:acme", 5),
        ("platform", -5),
    ]


def test_contracts_must_name_partners_clouds_and_models_of_the_config() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(
            BASE + "contracts: [{name: c, match: {partner: OpenAI, model: [gpt, gtp]},"
            " shares: [{party: a, percent: 1, of: cost}]}]"
        )
    keys = {p.key: p.message for p in err.value.problems}
    assert "no partner named 'OpenAI'" in keys["contracts[0].match.partner"]
    assert "case-sensitive" in keys["contracts[0].match.partner"]
    assert "no model named 'gtp'" in keys["contracts[0].match.model[1]"]
    assert "contracts[0].match.model[0]" not in keys


def test_a_tenant_price_may_name_a_model_by_its_alias() -> None:
    text = BASE.replace("  - name: small\n", "  - name: small\n    aliases: [tiny]\n")
    config = parse_config(
        text + "tenants: [{name: vip, prices: {tiny: {input: 0.1, output: 0.2}}}]"
    )
    # Usage rows record the model's name; the alias's price applies to it.
    assert Tariff(config).charge("vip", "small", 1000, 500) == (200_000_000, 300_000_000)


def test_a_zero_budget_is_refused() -> None:
    with pytest.raises(ConfigError, match="greater than 0"):
        parse_config(BASE + "limits: {tenant: {budget: {amount: 0}}}")


def test_a_party_cannot_pay_itself() -> None:
    with pytest.raises(ConfigError, match="cannot pay itself"):
        parse_config(
            BASE + "contracts: [{name: c, shares: [{party: a, payer: a, percent: 1, of: cost}]}]"
        )


# ---------------------------------------------------------------- journal


def _record(request_id: str, status: int = 200, billed: int = 7) -> UsageRecord:
    return UsageRecord(
        id=request_id,
        created_at=datetime(2026, 11, 22, 1, 2, 3, tzinfo=UTC),
        tenant="acme",
        user_hash=None,
        key_id="k1",
        tier="private",
        provider="fake",
        model="small",
        stream=False,
        prompt_tokens=3,
        completion_tokens=4,
        token_method="counted",
        latency_ms=1.5,
        status=status,
        error_code=None if status == 200 else "interrupted",
        billed=billed,
    )


def test_the_journal_recovers_metered_and_interrupted_requests(tmp_path: Path) -> None:
    j = journal.Journal(tmp_path)
    j.open()
    j.dispatched(_record("a", 500, 1))
    j.metered(_record("a"))
    j.dispatched(_record("b", 500, 1))  # in flight when the process died
    j.rotate()  # b is carried into the new segment
    j.dispatched(_record("c", 500, 1))
    j.metered(_record("c"))
    # While this journal's process lives, its segments are locked: nothing to recover.
    assert journal.recover(tmp_path).records == []
    j.close(flushed=False)  # the process dies: its locks go

    found = journal.recover(tmp_path)
    got = {r.id: r for r in found.records}
    assert set(got) == {"a", "b", "c"}
    assert (got["a"].status, got["a"].billed) == (200, 7)
    assert (got["b"].status, got["b"].error_code) == (500, "interrupted")
    assert (found.metered, found.interrupted) == (2, 1)
    assert got["a"].created_at == _record("a").created_at
    found.release()
    assert list(tmp_path.iterdir()) == []


def test_committed_segments_are_deleted_and_a_torn_line_is_skipped(tmp_path: Path) -> None:
    j = journal.Journal(tmp_path)
    j.open()
    j.metered(_record("a"))
    j.rotate()
    j.committed()  # a is in the database
    j.metered(_record("b"))
    j.close(flushed=False)
    [segment] = tmp_path.glob("*.journal")
    with segment.open("ab") as f:
        f.write(b'M{"id": "torn", "tena')  # the crash cut this line short
    found = journal.recover(tmp_path)
    assert [r.id for r in found.records] == ["b"]
    assert found.skipped_lines == 0  # an unterminated line is not even read
    found.abandon()
    assert segment.exists()  # kept for the next start


def test_segments_are_private_to_their_owner(tmp_path: Path) -> None:
    j = journal.Journal(tmp_path / "journal")
    j.open()
    j.metered(_record("a"))
    files = sorted((tmp_path / "journal").iterdir())
    [lock] = [f for f in files if f.suffix == ".lock"]
    [segment] = [f for f in files if f.suffix == ".journal"]
    assert (tmp_path / "journal").stat().st_mode & 0o777 == 0o700
    assert segment.stat().st_mode & 0o777 == 0o600
    # The living process holds its lock: another one can neither take it nor replay it.
    fd = os.open(lock, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    assert journal.recover(tmp_path / "journal").records == []
    j.close(flushed=True)
    assert list((tmp_path / "journal").iterdir()) == []


def test_a_long_outage_keeps_one_file_open_not_one_per_segment(tmp_path: Path) -> None:
    j = journal.Journal(tmp_path)
    j.open()
    before = len(os.listdir("/proc/self/fd"))
    for i in range(300):
        j.metered(_record(f"r{i}"))
        j.rotate()
        j.sync()  # what each failed flush does
    assert len(os.listdir("/proc/self/fd")) == before
    assert len(j.closed()) == 300
    j.close(flushed=False)
    found = journal.recover(tmp_path)
    assert len(found.records) == 300
    found.release()
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------- limiter

LIMITS = """
limits:
  tenant: {requests_per_minute: 3}
  key: {tokens_per_minute: 100}
tenants:
  - name: rich
    limits: {tenant: {requests_per_minute: 1000, budget: {amount: 0.5, period: day}}}
"""


def test_scopes_take_tenant_overrides_and_skip_missing_callers() -> None:
    limits = Limits(parse_config(BASE + LIMITS))
    assert limits.active
    kinds = [(s.kind, s.ident) for s in limits.scopes("acme", "u1", "k1")]
    assert kinds == [("tenant", "acme"), ("key", "k1")]  # no user limit configured
    [tenant, _] = limits.scopes("rich", None, "k2")
    assert tenant.limit.requests_per_minute == 1000
    assert tenant.budget == UNIT // 2
    assert not Limits(parse_config(BASE)).active


def _spent(amount: int = 0):  # type: ignore[no-untyped-def]
    async def spent(scope: Scope, start: datetime, end: datetime) -> int:
        return amount

    return spent


def test_requests_per_minute_admits_exactly_the_limit() -> None:
    limits = Limits(parse_config(BASE + LIMITS))
    limiter = LocalLimiter(limits, _spent())
    scopes = limits.scopes("acme", None, "k1")

    async def go() -> RateLimited:
        for _ in range(3):
            await limiter.admit(scopes)
        with pytest.raises(RateLimited) as err:
            await limiter.admit(scopes)
        return err.value

    error = asyncio.run(go())
    assert "tenant acme may use 3 requests per minute" in error.message
    assert error.retry_after is not None
    assert 1 <= error.retry_after <= 60
    assert error.status == 429


def test_tokens_per_minute_counts_metered_tokens() -> None:
    limits = Limits(parse_config(BASE + LIMITS))
    limiter = LocalLimiter(limits, _spent())
    scopes = limits.scopes("other", None, "k9")  # tenant limit 3/min, key 100 tokens/min

    async def go() -> None:
        await limiter.admit(scopes)
        limiter.used(scopes, 99, 0)
        await limiter.admit(scopes)  # 99 < 100: still room
        limiter.used(scopes, 1, 0)
        with pytest.raises(RateLimited, match="key k9 may use 100 tokens per minute"):
            await limiter.admit(scopes)

    asyncio.run(go())


def test_budgets_start_from_what_was_spent_and_renew_next_period() -> None:
    limits = Limits(parse_config(BASE + LIMITS))
    limiter = LocalLimiter(limits, _spent(UNIT // 2 - 1))  # 1 unit under the budget
    scopes = limits.scopes("rich", None, None)

    async def go() -> BudgetExceeded:
        await limiter.admit(scopes)
        limiter.used(scopes, 10, 1)
        with pytest.raises(BudgetExceeded) as err:
            await limiter.admit(scopes)
        return err.value

    error = asyncio.run(go())
    assert error.code == "budget_exceeded"
    assert "tenant rich may spend 0.50 USD per day and has spent 0.50" in error.message
    _, end = period_bounds("day", datetime.now(UTC))
    assert error.retry_after is not None
    assert abs(error.retry_after - (end - datetime.now(UTC)).total_seconds()) < 5


def test_period_bounds() -> None:
    moment = datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert period_bounds("month", moment) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert period_bounds("day", moment) == (
        datetime(2026, 12, 31, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )


def test_segments_stay_in_the_journal_until_the_database_has_them(tmp_path: Path) -> None:
    """A sink that fails (the database is down) leaves the segments in place; the next
    flush hands them over again, and only then are they deleted."""
    from veil.ledger.usage import UsageRecorder, segment_records

    written: list[str] = []

    class FlakySink:
        fail = True

        async def start(self) -> None:
            pass

        async def post(self, paths: list[Path]) -> None:
            if self.fail:
                raise OSError("database unavailable")
            written.extend(r.id for p in paths for r in segment_records(p))

        async def close(self) -> None:
            pass

    sink = FlakySink()

    async def go() -> None:
        j = journal.Journal(tmp_path)
        j.open()
        recorder = UsageRecorder(j, sink, interval=60)
        recorder.record(_record("a"))
        assert await recorder.flush() is False
        recorder.record(_record("b"))
        assert await recorder.flush() is False
        # Two closed segments and the live one (and the process's lock file).
        assert len(os.listdir(tmp_path)) == 4
        sink.fail = False
        assert await recorder.flush() is True
        assert len(os.listdir(tmp_path)) == 2
        await recorder.close()

    asyncio.run(go())
    assert written == ["a", "b"]
    assert list(tmp_path.iterdir()) == []


def test_token_limits_and_budgets_need_metering() -> None:
    text = (
        BASE
        + "metering: {enabled: false}\ntenants: [{name: t, limits: {user: {budget: {amount: 1}}}}]"
    )
    with pytest.raises(ConfigError, match=r"tenants\[0\]\.limits\.user.*need metering"):
        parse_config(text)
    # A requests-per-minute limit needs no metering.
    parse_config(BASE + "metering: {enabled: false}\nlimits: {tenant: {requests_per_minute: 5}}")


def test_a_tenant_and_a_key_with_the_same_name_have_their_own_counters() -> None:
    limits = Limits(
        parse_config(
            BASE + "limits: {tenant: {requests_per_minute: 2}, key: {requests_per_minute: 2}}"
        )
    )
    limiter = LocalLimiter(limits, _spent())

    async def go() -> None:
        await limiter.admit(limits.scopes("same", None, "other-key"))
        await limiter.admit(limits.scopes("other-tenant", None, "same"))
        # Each "same" has used one of its two: one more each still passes.
        await limiter.admit(limits.scopes("same", None, "third-key"))
        await limiter.admit(limits.scopes("fourth-tenant", None, "same"))
        with pytest.raises(RateLimited, match="tenant same"):
            await limiter.admit(limits.scopes("same", None, "fifth-key"))

    asyncio.run(go())


def test_a_replay_posts_nothing_twice_even_after_the_contracts_changed(tmp_path: Path) -> None:
    from veil.ledger.usage import write_records
    from veil.store import db

    engine = db.make_engine(f"sqlite:///{tmp_path / 'v.db'}")
    db.migrate(engine)
    first = Book(())
    later = Book(parse_config(BASE + CONTRACTS).contracts)

    def partner(request_id: str) -> UsageRecord:
        return replace(_record(request_id), tier="partner", partner="openai", cloud="azure", cost=4)

    records = [partner("a"), partner("b"), partner("a")]  # "a" twice in one batch too
    write_records(engine, first, records)
    # A replay of "a" under new contracts, then a new request "c" under them.
    write_records(engine, later, [partner("a"), partner("c")])
    with engine.connect() as conn:
        lines = conn.exec_driver_sql(
            "SELECT request_id, COUNT(*), SUM(amount) FROM ledger_entries GROUP BY request_id"
        ).all()
        usage = conn.exec_driver_sql("SELECT COUNT(*) FROM usage").scalar()
    assert usage == 3
    # a and b: charge and cost; c also the azure and reseller shares.
    assert sorted(lines) == [("a", 4, 0), ("b", 4, 0), ("c", 8, 0)]
    engine.dispose()
