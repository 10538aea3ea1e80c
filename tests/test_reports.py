"""Usage reports, statements and reconciliation over hand-made ledgers, on SQLite and
PostgreSQL; the ``veil usage``/``statement``/``ledger reconcile`` commands; and the
``/admin/usage`` and ``/admin/statements`` routes through a real server.

Every expected number is worked out here, in Python, from the rows the test wrote — never
read back through the code under test.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, delete, insert, update

from tests.support.cli import run
from tests.support.server import ADMIN_KEY, VeilServer, key_for, start_server
from veil.config import parse_config
from veil.errors import InvalidRequest
from veil.ledger import reports
from veil.ledger.money import UNIT
from veil.ledger.postings import Book, Posting, Tariff
from veil.store import db
from veil.store.models import LedgerEntry, Usage

# Six-decimal prices make odd per-token amounts; odd percentages make shares that round.
CONFIG = """
providers:
  - {name: fake, type: fake}
  - {name: azure-east, type: fake, tier: partner, partner: openai, cloud: azure}
  - {name: claude-api, type: fake, tier: partner, partner: anthropic, cloud: anthropic}
models:
  - name: gpt-4o-mini
    deployments: [{provider: fake, model: echo}]
    price: {input: 0.150001, output: 0.600007}
    cost: {input: 0.100003, output: 0.400009}
  - name: claude
    deployments: [{provider: fake, model: echo}]
    price: {input: 3.000001, output: 15.000013}
    cost: {input: 2.5, output: 12.5}
tenants:
  - name: globex
    prices: {gpt-4o-mini: {input: 0.2, output: 0.8}}
contracts:
  - name: azure-hosting
    match: {partner: openai}
    shares: [{party: azure, percent: 12.3457, of: revenue, payer: openai}]
  - name: reseller
    match: {tenant: acme}
    shares: [{party: reseller, percent: 3.3333, of: revenue}]
  - name: anthropic-volume
    match: {partner: anthropic}
    shares: [{party: anthropic, percent: 0.7777, of: cost}]
"""
JAN = datetime(2024, 1, 10, 12, tzinfo=UTC)


@dataclass
class Ledger:
    """Writes usage rows and their postings the way the gateway does, and remembers them."""

    engine: Engine
    usage: list[dict[str, Any]] = field(default_factory=list)
    lines: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        config = parse_config(CONFIG)
        self.tariff, self.book = Tariff(config), Book(config.contracts)

    def request(
        self,
        rid: str,
        at: datetime = JAN,
        *,
        tenant: str = "acme",
        model: str = "gpt-4o-mini",
        tier: str = "partner",
        partner: str | None = "openai",
        cloud: str | None = None,
        provider: str = "azure-eu",
        prompt: int = 1000,
        completion: int = 500,
        status: int = 200,
        category: str | None = None,
    ) -> None:
        billed, cost = self.tariff.charge(tenant, model, prompt, completion)
        posting = Posting(tenant, model, tier, partner, cloud, billed, cost)
        row = {
            "id": rid,
            "created_at": at,
            "tenant": tenant,
            "tier": tier,
            "provider": provider,
            "model": model,
            "partner": partner,
            "cloud": cloud,
            "category": category,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "latency_ms": 12.5,
            "status": status,
            "billed": billed,
            "cost": cost,
        }
        lines = [
            {
                "request_id": rid,
                "line": i,
                "at": at,
                "account": line.account,
                "amount": line.amount,
                "kind": line.kind,
                "counterparty": line.counterparty,
                "contract": line.contract,
                "tenant": tenant,
                "model": model,
            }
            for i, line in enumerate(self.book.post(posting))
        ]
        self.write([row], lines)

    def write(self, usage: list[dict[str, Any]], lines: list[dict[str, Any]]) -> None:
        with self.engine.begin() as conn:
            if usage:
                conn.execute(insert(Usage), usage)
            if lines:
                conn.execute(insert(LedgerEntry), lines)
        self.usage += usage
        self.lines += lines

    def fill(self) -> None:
        """A month of varied traffic, plus requests on either side of it."""
        n = 0
        for tenant in ("acme", "globex", "initech"):
            for i in range(7):
                n += 1
                at = JAN + timedelta(days=i * 3, minutes=n)
                self.request(f"r{n:03}-openai", at, tenant=tenant, prompt=1000 + 37 * n,
                             completion=333 + n, cloud="azure" if i % 2 else None,
                             category="code" if i % 3 else "chat")  # fmt: skip
                n += 1
                self.request(f"r{n:03}-claude", at, tenant=tenant, model="claude",
                             partner="anthropic", provider="anthropic", prompt=2001 + n,
                             completion=777 + 3 * n, category="math")  # fmt: skip
                n += 1
                self.request(f"r{n:03}-device", at, tenant=tenant, model="device",
                             tier="device", partner=None, provider="device", prompt=50 + n,
                             completion=20 + n)  # fmt: skip
            n += 1
            self.request(f"r{n:03}-failed", JAN, tenant=tenant, model="claude",
                         partner="anthropic", provider="anthropic", prompt=0, completion=0,
                         status=502)  # fmt: skip
        self.request("r900-december", datetime(2023, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))
        self.request("r901-february", datetime(2024, 2, 1, tzinfo=UTC))

    def in_period(self, period: reports.Period, key: str) -> Iterator[dict[str, Any]]:
        rows = self.usage if key == "created_at" else self.lines
        return (r for r in rows if period.start <= r[key] < period.end)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'veil.db'}"
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
    eng = db.make_engine(url)
    db.migrate(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def ledger(engine: Engine) -> Ledger:
    book = Ledger(engine)
    book.fill()
    return book


def units(text: str) -> int:
    """An exact decimal string back to units; fails if it is not exact."""
    scaled = Decimal(text) * UNIT
    assert scaled == scaled.to_integral_value(), text
    return int(scaled)


# ------------------------------------------------------------------------ periods


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("2024-01", datetime(2024, 1, 1), datetime(2024, 2, 1)),
        ("2024-12", datetime(2024, 12, 1), datetime(2025, 1, 1)),
        ("2024-02", datetime(2024, 2, 1), datetime(2024, 3, 1)),
        ("2024-02-29", datetime(2024, 2, 29), datetime(2024, 3, 1)),
        ("2024-01-30..2024-02-02", datetime(2024, 1, 30), datetime(2024, 2, 3)),
        (" 2024-03-05..2024-03-05 ", datetime(2024, 3, 5), datetime(2024, 3, 6)),
    ],
)
def test_periods_are_utc_and_half_open(text: str, start: datetime, end: datetime) -> None:
    period = reports.parse_period(text)
    assert (period.start, period.end) == (start.replace(tzinfo=UTC), end.replace(tzinfo=UTC))


@pytest.mark.parametrize(
    "text",
    ["", "2024", "2024-13", "2024-00", "2023-02-29", "2024/01", "2024-1", "01-2024",
     "2024-01-05..2024-01-01", "2024-01..2024-02", "2024-01-01..", "last month", "0000-01",
     "0000-01-01", "9999-12", "9999-12-31", "１２３４-01"],
)  # fmt: skip
def test_bad_periods_are_clear_errors(text: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        reports.parse_period(text)
    assert caught.value.param == "period"
    assert "YYYY-MM" in caught.value.message


def test_a_period_includes_its_last_millisecond_not_the_next_midnight(engine: Engine) -> None:
    book = Ledger(engine)
    book.request("last-ms", datetime(2024, 1, 31, 23, 59, 59, 999000, tzinfo=UTC))
    book.request("first-ms", datetime(2024, 1, 1, tzinfo=UTC), tenant="globex")
    book.request("next-day", datetime(2024, 2, 1, tzinfo=UTC), tenant="initech")
    book.request("before", datetime(2023, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), tenant="x")
    january = reports.parse_period("2024-01")
    usage = reports.usage_report(engine, "tenant", january)
    assert [r.group for r in usage.rows] == ["acme", "globex"]
    assert reports.statement(engine, "openai", january).requests == 2
    assert reports.reconcile(engine, january).requests == 2
    last_day = reports.usage_report(engine, "tenant", reports.parse_period("2024-01-31"))
    assert [r.group for r in last_day.rows] == ["acme"]
    february = reports.usage_report(engine, "tenant", reports.parse_period("2024-02"))
    assert [r.group for r in february.rows] == ["initech"]


# ------------------------------------------------------------------------ usage


def expected_usage(rows: Iterator[dict[str, Any]], by: str) -> dict[str | None, tuple[int, ...]]:
    groups: dict[str | None, list[int]] = defaultdict(lambda: [0] * 6)
    for r in rows:
        g = groups[r.get(by)]
        g[0] += 1
        g[1] += r["status"] >= 400
        g[2] += r["prompt_tokens"]
        g[3] += r["completion_tokens"]
        g[4] += r["billed"]
        g[5] += r["cost"]
    return {k: tuple(v) for k, v in groups.items()}


def as_tuple(row: reports.UsageRow) -> tuple[int, ...]:
    return (row.requests, row.errors, row.prompt_tokens, row.completion_tokens, row.billed,
            row.cost)  # fmt: skip


def test_usage_by_every_group_is_exact(ledger: Ledger, engine: Engine) -> None:
    january = reports.parse_period("2024-01")
    for by in reports.USAGE_GROUPS:
        report = reports.usage_report(engine, by, january)
        expected = expected_usage(ledger.in_period(january, "created_at"), by)
        assert {r.group: as_tuple(r) for r in report.rows} == expected, by
        assert as_tuple(report.total) == tuple(map(sum, zip(*expected.values(), strict=True)))
    by_tenant = reports.usage_report(engine, "tenant", january)
    assert by_tenant.total.requests == 3 * 22  # not the December or February requests
    assert by_tenant.total.errors == 3
    assert by_tenant.total.billed % 1000 != 0  # odd amounts, really summed


def test_usage_for_one_tenant_counts_only_its_rows(ledger: Ledger, engine: Engine) -> None:
    january = reports.parse_period("2024-01")
    report = reports.usage_report(engine, "model", january, tenant="globex")
    globex = (r for r in ledger.in_period(january, "created_at") if r["tenant"] == "globex")
    assert {r.group: as_tuple(r) for r in report.rows} == expected_usage(globex, "model")
    assert reports.usage_report(engine, "model", january, tenant="nobody").rows == []


def test_usage_refuses_an_unknown_group(engine: Engine) -> None:
    with pytest.raises(InvalidRequest, match="cannot group usage by 'user_hash'"):
        reports.usage_report(engine, "user_hash", reports.parse_period("2024-01"))


# ------------------------------------------------------------------------ statements


def test_statements_are_the_exact_sums_of_their_lines(ledger: Ledger, engine: Engine) -> None:
    january = reports.parse_period("2024-01")
    lines = list(ledger.in_period(january, "at"))
    shares = [x for x in lines if x["kind"] == "share" and x["amount"] > 0]
    assert any(x["amount"] % 10 for x in shares)  # rounded shares: odd last digits
    accounts = {x["account"] for x in lines}
    assert {"platform", "party:azure", "party:reseller", "tenant:acme"} <= accounts
    for account in accounts:
        st = reports.statement(engine, account, january)
        mine = [x for x in lines if x["account"] == account]
        assert st.debits == sum(x["amount"] for x in mine if x["amount"] > 0), account
        assert st.credits == -sum(x["amount"] for x in mine if x["amount"] < 0), account
        assert st.net == -sum(x["amount"] for x in mine)
        assert st.requests == len({x["request_id"] for x in mine})
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
        for x in mine:
            groups[(x["kind"], x["contract"], x["counterparty"], x["model"], x["tenant"])].append(x)
        got = {
            (g.kind, g.contract, g.counterparty, g.model, g.tenant): (g.requests, g.debits,
                                                                      g.credits)
            for g in st.lines
        }  # fmt: skip
        assert got == {
            key: (
                len({x["request_id"] for x in xs}),
                sum(x["amount"] for x in xs if x["amount"] > 0),
                -sum(x["amount"] for x in xs if x["amount"] < 0),
            )
            for key, xs in groups.items()
        }, account


def test_a_party_name_is_its_party_account(ledger: Ledger, engine: Engine) -> None:
    january = reports.parse_period("2024-01")
    assert reports.statement(engine, "azure", january).account == "party:azure"
    assert reports.statement(engine, "azure", january) == reports.statement(
        engine, "party:azure", january
    )
    azure = reports.statement(engine, "azure", january)
    assert azure.net > 0
    assert azure.debits == 0
    assert reports.statement(engine, "platform", january).account == "platform"
    acme = reports.statement(engine, "tenant:acme", january)
    assert acme.net < 0
    assert acme.credits == 0
    assert reports.statement(engine, "nobody", january).lines == []
    for bad in ("", "a b", "tenant:", "party:x;drop", "x" * 200):
        with pytest.raises(InvalidRequest) as caught:
            reports.statement(engine, bad, january)
        assert caught.value.param == "party"


def test_sums_past_64_bits_are_exact(engine: Engine) -> None:
    """Each amount fits a BIGINT, their sum does not: SQLite's SUM would fail."""
    book = Ledger(engine)
    big = 2**62 + 123_456_789_013  # ~4.6 million in the currency, in units
    usage = []
    lines = []
    for i in range(5):
        rid = f"big{i}"
        usage.append({"id": rid, "created_at": JAN, "tenant": "whale", "latency_ms": 1.0,
                      "status": 200, "billed": big + i, "cost": big - i})  # fmt: skip
        for n, (account, amount, other) in enumerate(
            [("tenant:whale", big + i, "platform"), ("platform", -(big + i), "tenant:whale")]
        ):
            lines.append({"request_id": rid, "line": n, "at": JAN, "account": account,
                          "amount": amount, "kind": "charge", "counterparty": other,
                          "contract": None, "tenant": "whale", "model": None})  # fmt: skip
    book.write(usage, lines)
    january = reports.parse_period("2024-01")
    total = reports.usage_report(engine, "tenant", january).total
    assert total.billed == 5 * big + 10 > 2**63
    assert total.cost == 5 * big - 10
    whale = reports.statement(engine, "tenant:whale", january)
    assert whale.debits == 5 * big + 10
    platform = reports.statement(engine, "platform", january)
    assert platform.credits == 5 * big + 10
    assert platform.net == 5 * big + 10
    check = reports.reconcile(engine)
    assert check.ok, check.problems
    # A huge imbalance is reported exactly too.
    with engine.begin() as conn:
        conn.execute(
            update(LedgerEntry)
            .where(LedgerEntry.request_id == "big3", LedgerEntry.line == 1)
            .values(amount=-(2**63 - 1))
        )
    broken = reports.reconcile(engine)
    assert broken.total == big + 3 - (2**63 - 1)
    assert [(p.kind, p.request_id, p.actual) for p in broken.problems[:1]] == [
        ("unbalanced_request", "big3", big + 3 - (2**63 - 1))
    ]


# ------------------------------------------------------------------------ reconcile


def test_reconcile_passes_a_balanced_ledger(ledger: Ledger, engine: Engine) -> None:
    result = reports.reconcile(engine)
    assert result.ok, result.problems
    assert result.total == 0
    assert result.requests == len({x["request_id"] for x in ledger.lines})
    assert result.lines == len(ledger.lines)
    assert result.usage_rows == len(ledger.usage)
    january = reports.reconcile(engine, reports.parse_period("2024-01"))
    assert january.ok
    assert january.usage_rows == len(ledger.usage) - 2


def _set_line(engine: Engine, rid: str, kind: str, positive: bool, amount: int | None) -> None:
    where = [LedgerEntry.request_id == rid, LedgerEntry.kind == kind]
    where.append(LedgerEntry.amount > 0 if positive else LedgerEntry.amount < 0)
    with engine.begin() as conn:
        if amount is None:
            conn.execute(delete(LedgerEntry).where(*where))
        else:
            conn.execute(update(LedgerEntry).where(*where).values(amount=amount))


def _tamper(case: str, engine: Engine, ledger: Ledger) -> tuple[set[tuple[str, str | None]], int]:
    """Break the ledger one way; return the problems reconcile must find, and the amount
    that goes with the first one."""
    usage = {r["id"]: r for r in ledger.usage}
    billed = usage["r004-openai"]["billed"]
    if case == "one line changed":
        _set_line(engine, "r004-openai", "charge", True, billed + 1)
        return {
            ("unbalanced_request", "r004-openai"),
            ("unbalanced_ledger", None),
            ("charge_mismatch", "r004-openai"),
        }, 1
    if case == "both lines of a charge changed":
        _set_line(engine, "r004-openai", "charge", True, billed - 7)
        _set_line(engine, "r004-openai", "charge", False, -(billed - 7))
        return {("charge_mismatch", "r004-openai")}, billed - 7
    if case == "charge moved to another tenant":
        with engine.begin() as conn:
            conn.execute(
                update(LedgerEntry)
                .where(
                    LedgerEntry.request_id == "r004-openai", LedgerEntry.account == "tenant:acme"
                )
                .values(account="tenant:globex")
            )
        return {("charge_mismatch", "r004-openai")}, billed
    if case == "a line deleted":
        with engine.begin() as conn:
            conn.execute(
                delete(LedgerEntry).where(
                    LedgerEntry.request_id == "r005-claude", LedgerEntry.account == "party:reseller"
                )
            )
        share = next(x["amount"] for x in ledger.lines
                     if x["request_id"] == "r005-claude" and x["account"] == "party:reseller")  # fmt: skip
        return {("unbalanced_request", "r005-claude"), ("unbalanced_ledger", None)}, -share
    if case == "usage cost changed":
        with engine.begin() as conn:
            conn.execute(update(Usage).where(Usage.id == "r005-claude").values(cost=Usage.cost + 1))
        return {("cost_mismatch", "r005-claude")}, usage["r005-claude"]["cost"] + 1
    if case == "cost posted for a device request":
        row = usage["r006-device"]
        ledger.write([], [
            {"request_id": "r006-device", "line": 9, "at": row["created_at"],
             "account": "platform", "amount": 5, "kind": "cost", "counterparty": "party:x",
             "contract": None, "tenant": row["tenant"], "model": "device"},
            {"request_id": "r006-device", "line": 10, "at": row["created_at"],
             "account": "party:x", "amount": -5, "kind": "cost", "counterparty": "platform",
             "contract": None, "tenant": row["tenant"], "model": "device"},
        ])  # fmt: skip
        return {("cost_mismatch", "r006-device")}, 0
    if case == "usage row deleted":
        with engine.begin() as conn:
            conn.execute(delete(Usage).where(Usage.id == "r007-openai"))
        return {("orphan_entries", "r007-openai")}, 0
    if case == "usage row without postings":
        ledger.write([dict(usage["r004-openai"], id="lost-posting")], [])
        return {("charge_mismatch", "lost-posting"), ("cost_mismatch", "lost-posting")}, billed
    raise AssertionError(case)


TAMPERING = [
    "one line changed",
    "both lines of a charge changed",
    "charge moved to another tenant",
    "a line deleted",
    "usage cost changed",
    "cost posted for a device request",
    "usage row deleted",
    "usage row without postings",
]


@pytest.mark.parametrize("case", TAMPERING)
def test_reconcile_finds_each_kind_of_tampering(case: str, ledger: Ledger, engine: Engine) -> None:
    assert reports.reconcile(engine).ok
    expected, amount = _tamper(case, engine, ledger)
    result = reports.reconcile(engine)
    assert not result.ok
    assert {(p.kind, p.request_id) for p in result.problems} == expected
    assert sum(result.counts.values()) == len(expected)
    first = result.problems[0]
    if first.kind in ("unbalanced_request", "unbalanced_ledger"):
        assert abs(first.actual or 0) == amount
    elif first.kind.endswith("_mismatch"):
        assert amount in (first.expected, first.actual)
    # Outside the period, nothing to see.
    assert reports.reconcile(engine, reports.parse_period("2023-12")).ok


# ------------------------------------------------------------------------ the CLI


def cli_home(tmp_path: Path) -> tuple[Path, Path, Ledger]:
    """A VEIL_HOME whose database holds the month of traffic, and a config (in EUR)."""
    home = tmp_path / "home"
    home.mkdir()
    config = tmp_path / "veil.yaml"
    config.write_text(CONFIG + "metering: {currency: EUR}\n")
    engine = db.make_engine(f"sqlite:///{home / 'veil.db'}")
    db.migrate(engine)
    book = Ledger(engine)
    book.fill()
    engine.dispose()
    return home, config, book


def test_cli_usage_json_and_csv_read_back_to_the_same_numbers(tmp_path: Path) -> None:
    home, config, book = cli_home(tmp_path)
    january = reports.parse_period("2024-01")
    expected = expected_usage(book.in_period(january, "created_at"), "model")
    args = ("usage", "--by", "model", "--period", "2024-01", "--config", str(config))
    as_json = run(home, *args, "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["currency"] == "EUR"
    assert data["period"]["start"] == "2024-01-01T00:00:00+00:00"
    got = {
        r["group"]: (r["requests"], r["errors"], r["prompt_tokens"], r["completion_tokens"],
                     units(r["billed"]), units(r["cost"]))
        for r in data["data"]
    }  # fmt: skip
    assert got == expected
    assert units(data["total"]["billed"]) == sum(v[4] for v in expected.values())

    as_csv = run(home, *args, "--format", "csv")
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert {r["currency"] for r in rows} == {"EUR"}
    total = [r for r in rows if r["row"] == "total"]
    assert len(total) == 1
    got_csv = {
        r["model"]: (int(r["requests"]), int(r["errors"]), int(r["prompt_tokens"]),
                     int(r["completion_tokens"]), units(r["billed"]), units(r["cost"]))
        for r in rows if r["row"] == "group"
    }  # fmt: skip
    assert got_csv == expected
    assert units(total[0]["cost"]) == sum(v[5] for v in expected.values())

    table = run(home, *args)
    assert table.returncode == 0, table.stderr
    assert "total" in table.stdout
    assert "billed (EUR)" in table.stdout
    # Whole amounts, never cut short to fit a narrow terminal.
    assert data["total"]["billed"] in table.stdout
    assert data["total"]["cost"] in table.stdout

    one = run(home, *args, "--tenant", "globex", "--format", "json")
    assert {r["group"] for r in json.loads(one.stdout)["data"]} == {"gpt-4o-mini", "claude",
                                                                     "device"}  # fmt: skip
    globex = [r for r in book.in_period(january, "created_at") if r["tenant"] == "globex"]
    assert json.loads(one.stdout)["total"]["requests"] == len(globex)


def test_cli_statement_json_and_csv_read_back_to_the_same_numbers(tmp_path: Path) -> None:
    home, config, book = cli_home(tmp_path)
    mine = [x for x in book.lines if x["account"] == "party:reseller"
            and x["at"].month == 1 and x["at"].year == 2024]  # fmt: skip
    debits = sum(x["amount"] for x in mine if x["amount"] > 0)
    credits = -sum(x["amount"] for x in mine if x["amount"] < 0)
    assert credits % 10  # a rounded share
    args = ("statement", "--party", "reseller", "--period", "2024-01", "--config", str(config))
    as_json = run(home, *args, "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert (data["account"], data["currency"]) == ("party:reseller", "EUR")
    assert (units(data["debits"]), units(data["credits"]), units(data["net"])) == (
        debits, credits, credits - debits
    )  # fmt: skip
    assert sum(units(line["net"]) for line in data["lines"]) == units(data["net"])
    assert data["requests"] == len({x["request_id"] for x in mine})

    as_csv = run(home, *args, "--format", "csv")
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    lines = [r for r in rows if r["row"] == "line"]
    (total,) = [r for r in rows if r["row"] == "total"]
    assert units(total["credits"]) == credits == sum(units(r["credits"]) for r in lines)
    assert {r["counterparty"] for r in lines} == {"platform"}
    assert {r["tenant"] for r in lines} == {"acme"}

    table = run(home, *args)
    assert table.returncode == 0, table.stderr
    assert "owed to party:reseller" in table.stdout


def test_cli_reconcile_exits_1_on_tampering(tmp_path: Path) -> None:
    home, config, book = cli_home(tmp_path)
    ok = run(home, "ledger", "reconcile", "--config", str(config))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert (
        f"Checked {len({x['request_id'] for x in book.lines})} requests in the ledger" in ok.stdout
    )
    assert "ok" in ok.stdout
    engine = db.make_engine(f"sqlite:///{home / 'veil.db'}")
    _set_line(engine, "r010-openai", "share", True, 1)
    engine.dispose()
    broken = run(home, "ledger", "reconcile", "--config", str(config))
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "r010-openai" in broken.stdout
    assert "unbalanced_request" in broken.stdout
    as_json = run(home, "ledger", "reconcile", "--period", "2024-01", "--format", "json",
                  "--config", str(config))  # fmt: skip
    assert as_json.returncode == 1
    data = json.loads(as_json.stdout)
    assert data["ok"] is False
    assert data["counts"]["unbalanced_request"] == 1
    assert run(home, "ledger", "reconcile", "--period", "2023-12").returncode == 0


def test_cli_bad_period_is_a_clear_error(tmp_path: Path) -> None:
    result = run(tmp_path, "usage", "--period", "2024-13")
    assert result.returncode == 1
    assert "invalid period '2024-13'" in result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------------ HTTP


@pytest.fixture(scope="module")
def report_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VeilServer, Ledger]]:
    home = tmp_path_factory.mktemp("reports") / "home"
    home.mkdir()
    engine = db.make_engine(f"sqlite:///{home / 'veil.db'}")
    db.migrate(engine)
    book = Ledger(engine)
    book.fill()
    engine.dispose()
    server = start_server(home, CONFIG + "metering: {currency: CHF}\n")
    yield server, book
    server.stop()


ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


def test_a_tenant_key_sees_only_its_own_usage(report_server: tuple[VeilServer, Ledger]) -> None:
    server, book = report_server
    january = reports.parse_period("2024-01")
    key = {"authorization": f"Bearer {key_for(server, 'globex')}"}
    url = server.url + "/admin/usage"
    mine = httpx.get(url, params={"by": "tenant", "period": "2024-01"}, headers=key)
    assert mine.status_code == 200, mine.text
    data = mine.json()
    assert (data["tenant"], data["currency"]) == ("globex", "CHF")
    assert [r["group"] for r in data["data"]] == ["globex"]
    globex = [r for r in book.in_period(january, "created_at") if r["tenant"] == "globex"]
    assert units(data["total"]["billed"]) == sum(r["billed"] for r in globex)
    by_model = httpx.get(url, params={"by": "model", "period": "2024-01"}, headers=key).json()
    assert by_model["total"]["requests"] == len(globex)

    for other in ("acme", "GLOBEX", ""):
        refused = httpx.get(url, params={"period": "2024-01", "tenant": other}, headers=key)
        assert refused.status_code == 403, other
        assert refused.json()["error"]["type"] == "permission_error"
        assert "acme" not in refused.text.replace("tenant", "")
    same = httpx.get(url, params={"period": "2024-01", "tenant": "globex"}, headers=key)
    assert same.status_code == 200


def test_the_admin_sees_every_tenant_and_may_filter(
    report_server: tuple[VeilServer, Ledger],
) -> None:
    server, book = report_server
    january = reports.parse_period("2024-01")
    url = server.url + "/admin/usage"
    everyone = httpx.get(url, params={"by": "tenant", "period": "2024-01"}, headers=ADMIN).json()
    assert [r["group"] for r in everyone["data"]] == ["acme", "globex", "initech"]
    expected = expected_usage(book.in_period(january, "created_at"), "tenant")
    for r in everyone["data"]:
        assert (r["requests"], units(r["billed"]), units(r["cost"])) == (
            expected[r["group"]][0], expected[r["group"]][4], expected[r["group"]][5]
        )  # fmt: skip
    acme = httpx.get(url, params={"by": "provider", "period": "2024-01", "tenant": "acme"},
                     headers=ADMIN).json()  # fmt: skip
    assert acme["total"]["requests"] == expected["acme"][0]

    bad = httpx.get(url, params={"period": "January"}, headers=ADMIN)
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "period"
    bad_by = httpx.get(url, params={"period": "2024-01", "by": "user"}, headers=ADMIN)
    assert (bad_by.status_code, bad_by.json()["error"]["param"]) == (400, "by")
    assert httpx.get(url, params={"period": "2024-01"}).status_code == 401


def test_statements_are_for_the_admin_only(report_server: tuple[VeilServer, Ledger]) -> None:
    server, book = report_server
    url = server.url + "/admin/statements"
    params = {"party": "azure", "period": "2024-01"}
    key = {"authorization": f"Bearer {key_for(server, 'acme')}"}
    refused = httpx.get(url, params=params, headers=key)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "admin_required"
    assert httpx.get(url, params=params).status_code == 401
    assert (
        httpx.get(url, params=params, headers={"authorization": "Bearer nope"}).status_code == 401
    )

    st = httpx.get(url, params=params, headers=ADMIN)
    assert st.status_code == 200, st.text
    data = st.json()
    mine = [x for x in book.lines if x["account"] == "party:azure" and x["at"].month == 1
            and x["at"].year == 2024]  # fmt: skip
    assert (data["account"], data["currency"]) == ("party:azure", "CHF")
    assert units(data["net"]) == -sum(x["amount"] for x in mine) > 0
    assert sum(units(line["credits"]) for line in data["lines"]) == units(data["credits"])
    # Azure hosts some of OpenAI's traffic (its cost) and has a share of all of it.
    assert {(x["kind"], x["contract"], x["counterparty"]) for x in data["lines"]} == {
        ("cost", None, "platform"),
        ("share", "azure-hosting", "party:openai"),
    }
    bad = httpx.get(url, params={"party": "a b", "period": "2024-01"}, headers=ADMIN)
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "party")


# ------------------------------------------------------------------------ end to end

LIVE = """
providers:
  - {name: fake, type: fake}
  - {name: partner-fake, type: fake, tier: partner, partner: openai, cloud: azure}
models:
  - name: echo
    price: {input: 1.500001, output: 6.000003}
    deployments: [{provider: fake, model: echo}]
  - name: gpt
    price: {input: 2.500007, output: 10.000011}
    cost: {input: 1.25, output: 5.000001}
    deployments: [{provider: partner-fake, model: echo}]
  - name: broken
    price: {input: 1, output: 1}
    deployments: [{provider: fake, model: error-500}]
routing: {retries: {attempts: 1, backoff: 0}}
contracts:
  - name: azure-share
    match: {partner: openai}
    shares: [{party: microsoft, percent: 13.3333, of: cost, payer: azure}]
metering: {flush_interval: 0.05, currency: EUR}
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_reports_agree_with_what_the_gateway_metered(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Traffic through a real server, then its reports and reconcile over what it wrote."""
    home = tmp_path / "home"
    url = f"sqlite:///{home / 'veil.db'}"
    config = LIVE
    if backend == "postgresql":
        url = request.getfixturevalue("pg_url")
        config = f"database: {{url: '{url}'}}\n" + LIVE
    config_file = tmp_path / "live.yaml"
    config_file.write_text(config)
    server = start_server(home, config)
    try:
        ids = []
        for tenant, model, words, headers in [
            ("acme", "echo", "one two three", {}),
            ("acme", "gpt", "alpha beta gamma delta", {"x-veil-consent": "openai"}),
            ("acme", "broken", "x", {}),
            ("globex", "gpt", "a b c d e f g", {"x-veil-consent": "openai"}),
            ("globex", "echo", "seven", {}),
        ]:
            key = key_for(server, tenant)
            r = httpx.post(
                server.url + "/v1/chat/completions",
                headers={"authorization": f"Bearer {key}", **headers},
                json={"model": model, "messages": [{"role": "user", "content": words}]},
                timeout=30,
            )
            assert (r.status_code >= 500) if model == "broken" else (r.status_code == 200), r.text
            ids.append(r.headers["x-request-id"])
        engine = db.make_engine(url)
        try:
            rows = _wait_for_usage(engine, ids)
        finally:
            engine.dispose()
        today = datetime.now(UTC).date()
        span = f"{today - timedelta(days=1)}..{today + timedelta(days=1)}"

        usage = httpx.get(
            server.url + "/admin/usage", params={"by": "tenant", "period": span}, headers=ADMIN
        ).json()
        assert usage["currency"] == "EUR"
        for group in usage["data"]:
            mine = [r for r in rows if r["tenant"] == group["group"]]
            assert group["requests"] == len(mine)
            assert group["errors"] == sum(r["status"] >= 400 for r in mine)
            assert units(group["billed"]) == sum(r["billed"] for r in mine)
            assert units(group["cost"]) == sum(r["cost"] for r in mine)
        assert {g["group"] for g in usage["data"]} == {"acme", "globex"}
        assert usage["total"]["errors"] >= 1
        partner_cost = sum(r["cost"] for r in rows if r["tier"] == "partner")
        assert partner_cost > 0

        azure = httpx.get(
            server.url + "/admin/statements",
            params={"party": "azure", "period": span},
            headers=ADMIN,
        ).json()
        share: dict[str, int] = defaultdict(int)
        for x in azure["lines"]:
            share[x["kind"]] += units(x["net"])
        assert share["cost"] == partner_cost  # Azure is owed what it charged…
        assert units(azure["net"]) == partner_cost + share["share"]  # …less Microsoft's share
        assert share["share"] < 0

        check = run(home, "ledger", "reconcile", "--period", span, "--config", str(config_file))
        assert check.returncode == 0, check.stdout + check.stderr
        assert (
            f"Checked {sum(1 for r in rows if r['billed'] or r['cost'])} requests in the ledger"
            in (check.stdout)
        )
    finally:
        server.stop()


def _wait_for_usage(engine: Engine, ids: list[str]) -> list[dict[str, Any]]:
    from sqlalchemy import select

    deadline = time.monotonic() + 15
    while True:
        with engine.connect() as conn:
            found = [
                dict(r) for r in conn.execute(select(Usage).where(Usage.id.in_(ids))).mappings()
            ]
        if len(found) == len(ids) or time.monotonic() > deadline:
            assert len(found) == len(ids), "the gateway did not write every usage row"
            return found
