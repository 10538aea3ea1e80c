"""Reports over usage rows and the ledger: usage by group, a party's statement, and the
reconciliation that proves the ledger balances and matches usage.

Pure functions over an ``Engine``; every amount is an ``int`` of units (``veil.ledger.money``)
until ``to_dict`` formats it for a currency. Periods are in UTC and half-open: an entry at
23:59:59.999 on the last day of a month is in that month, one at 00:00 the next day is not.

Sums are exact on both databases. SQLite's ``SUM`` fails on a total past 2⁶³ units (about
9.2 million in the currency), so each amount is summed in two parts, ``amount / 10⁶`` and
``amount % 10⁶``: both truncate toward zero on SQLite and on PostgreSQL alike, so for every
row ``amount = hi · 10⁶ + lo``, and the two sums are recombined in Python's exact integers.
Where a check compares a sum with a usage row, SQL only preselects the rows whose parts
differ (a superset of the real mismatches) and Python decides on the exact total.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, Literal, get_args

from sqlalchemy import (
    ColumnElement,
    Engine,
    case,
    distinct,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.sql import Executable

from veil.errors import InvalidRequest
from veil.ledger.money import format_amount
from veil.ledger.postings import PLATFORM, party_account
from veil.store.models import LedgerEntry, Usage

#: What ``usage_report`` can group by: a column of the usage table each.
UsageBy = Literal["tenant", "model", "tier", "partner", "provider", "category", "served_by"]
USAGE_GROUPS: Final[tuple[str, ...]] = get_args(UsageBy)
#: The kinds of problem ``reconcile`` reports.
PROBLEM_KINDS: Final = (
    "unbalanced_request",
    "unbalanced_ledger",
    "charge_mismatch",
    "cost_mismatch",
    "orphan_entries",
)
#: Problems of one kind listed at most (all are counted).
MAX_LISTED = 1000

_SPLIT = 1_000_000
_MONTH = re.compile(r"([0-9]{4})-([0-9]{2})")
_DAY = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_ACCOUNT = re.compile(r"(?:(?:tenant|party):)?[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}")


# ------------------------------------------------------------------------ periods


@dataclass(frozen=True, slots=True)
class Period:
    """A span of time in UTC: ``start`` included, ``end`` excluded; ``label`` as given."""

    label: str
    start: datetime
    end: datetime

    def to_dict(self) -> dict[str, str]:
        return {"label": self.label, "start": self.start.isoformat(), "end": self.end.isoformat()}


def parse_period(text: str) -> Period:
    """``YYYY-MM`` (a month), ``YYYY-MM-DD`` (a day) or ``YYYY-MM-DD..YYYY-MM-DD`` (both
    days included), in UTC. Anything else is an ``InvalidRequest`` naming the forms."""
    value = text.strip()
    first, sep, last = value.partition("..")
    if sep:
        start, end = _day(first, text), _day(last, text)
        if end < start:
            raise _bad_period(text, "its last day is before its first")
    elif month := _MONTH.fullmatch(value):
        year, number = int(month[1]), int(month[2])
        if not 1 <= number <= 12 or year < 1:
            raise _bad_period(text, "no such month")
        start = date(year, number, 1)
        end = (
            date(year, number % 12 + 1, 1) - timedelta(days=1)
            if number < 12
            else date(year, 12, 31)
        )
    else:
        start = end = _day(value, text)
    try:
        return Period(value, _midnight(start), _midnight(end + timedelta(days=1)))
    except OverflowError:  # the day after 9999-12-31
        raise _bad_period(text, "too far ahead") from None


def _day(part: str, text: str) -> date:
    match = _DAY.fullmatch(part.strip())
    if match is None:
        raise _bad_period(text)
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        raise _bad_period(text, "no such day") from None


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _bad_period(text: str, why: str | None = None) -> InvalidRequest:
    reason = f" ({why})" if why else ""
    return InvalidRequest(
        f"invalid period {text[:40]!r}{reason}: use YYYY-MM, YYYY-MM-DD or "
        "YYYY-MM-DD..YYYY-MM-DD (UTC)",
        param="period",
        code="invalid_period",
    )


def _within(column: Any, period: Period | None) -> list[ColumnElement[bool]]:
    return [] if period is None else [column >= period.start, column < period.end]


# ------------------------------------------------------------------------ exact sums


def split_sum(value: Any) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
    """``SUM`` of ``value`` as two parts that cannot overflow; see the module docstring."""
    return func.sum(value // _SPLIT), func.sum(value % _SPLIT)


def join_sum(hi: Any, lo: Any) -> int:
    """Recombine the parts of ``split_sum`` (``None``, the sum of no rows, is 0).
    PostgreSQL sums ``bigint`` as ``numeric``, handed back as an exact ``Decimal``."""
    return int(hi or 0) * _SPLIT + int(lo or 0)


# ------------------------------------------------------------------------ usage


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One group of usage rows (``group`` is ``None`` for rows without that value)."""

    group: str | None
    requests: int
    #: Requests that ended with a status of 400 or more.
    errors: int
    prompt_tokens: int
    completion_tokens: int
    billed: int
    cost: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "requests": self.requests,
            "errors": self.errors,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "billed": format_amount(self.billed),
            "cost": format_amount(self.cost),
        }


@dataclass(frozen=True, slots=True)
class UsageReport:
    by: str
    period: Period
    #: The only tenant whose rows were counted, or ``None`` for all of them.
    tenant: str | None
    rows: list[UsageRow]

    @property
    def total(self) -> UsageRow:
        """The sum of ``rows``, exactly."""
        return UsageRow(
            None,
            sum(r.requests for r in self.rows),
            sum(r.errors for r in self.rows),
            sum(r.prompt_tokens for r in self.rows),
            sum(r.completion_tokens for r in self.rows),
            sum(r.billed for r in self.rows),
            sum(r.cost for r in self.rows),
        )

    def to_dict(self, currency: str) -> dict[str, Any]:
        return {
            "object": "usage_report",
            "by": self.by,
            "period": self.period.to_dict(),
            "tenant": self.tenant,
            "currency": currency,
            "data": [r.to_dict() for r in self.rows],
            "total": self.total.to_dict(),
        }


def check_usage_group(by: str) -> str:
    if by not in USAGE_GROUPS:
        raise InvalidRequest(
            f"cannot group usage by {by[:40]!r}: use one of {', '.join(USAGE_GROUPS)}",
            param="by",
        )
    return by


def usage_report(engine: Engine, by: str, period: Period, tenant: str | None = None) -> UsageReport:
    """Requests, errors, tokens and money of the usage rows in ``period``, per value of the
    column ``by`` (one of ``USAGE_GROUPS``); only ``tenant``'s rows when it is given."""
    column = getattr(Usage, check_usage_group(by))
    billed_hi, billed_lo = split_sum(Usage.billed)
    cost_hi, cost_lo = split_sum(Usage.cost)
    query = (
        select(
            column,
            func.count(),
            func.sum(case((Usage.status >= 400, 1), else_=0)),
            func.sum(Usage.prompt_tokens),
            func.sum(Usage.completion_tokens),
            billed_hi,
            billed_lo,
            cost_hi,
            cost_lo,
        )
        .where(*_within(Usage.created_at, period))
        .group_by(column)
    )
    if tenant is not None:
        query = query.where(Usage.tenant == tenant)
    with engine.connect() as conn:
        rows = [
            UsageRow(
                group,
                int(requests),
                int(errors or 0),
                int(prompt or 0),
                int(completion or 0),
                join_sum(b_hi, b_lo),
                join_sum(c_hi, c_lo),
            )
            for group, requests, errors, prompt, completion, b_hi, b_lo, c_hi, c_lo in conn.execute(
                query
            )
        ]
    rows.sort(key=lambda r: (r.group is None, r.group or ""))
    return UsageReport(by, period, tenant, rows)


# ------------------------------------------------------------------------ statements


def account_for(party: str) -> str:
    """The ledger account a statement is for: ``platform``, ``tenant:<name>`` and
    ``party:<name>`` as given; any other name is a party (``openai`` → ``party:openai``)."""
    name = party.strip()
    if not _ACCOUNT.fullmatch(name):
        raise InvalidRequest(
            f"invalid party {party[:40]!r}: a name such as openai, platform or tenant:acme",
            param="party",
        )
    if name == PLATFORM or name.startswith(("tenant:", "party:")):
        return name
    return party_account(name)


@dataclass(frozen=True, slots=True)
class StatementLine:
    """The account's ledger lines of one kind, contract, counterparty, model and tenant."""

    kind: str
    contract: str | None
    counterparty: str
    model: str | None
    tenant: str
    #: Requests with at least one such line.
    requests: int
    #: What the account owes or paid (its positive lines), in units.
    debits: int
    #: What the account is owed (its negative lines, as a positive number), in units.
    credits: int

    @property
    def net(self) -> int:
        """Credits minus debits: positive when this is owed to the account."""
        return self.credits - self.debits

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "contract": self.contract,
            "counterparty": self.counterparty,
            "model": self.model,
            "tenant": self.tenant,
            "requests": self.requests,
            "debits": format_amount(self.debits),
            "credits": format_amount(self.credits),
            "net": format_amount(self.net),
        }


@dataclass(frozen=True, slots=True)
class Statement:
    account: str
    period: Period
    lines: list[StatementLine]
    #: Distinct requests behind the lines (a request can be on several lines).
    requests: int

    @property
    def debits(self) -> int:
        return sum(line.debits for line in self.lines)

    @property
    def credits(self) -> int:
        return sum(line.credits for line in self.lines)

    @property
    def net(self) -> int:
        """Credits minus debits: positive when the account is owed money."""
        return self.credits - self.debits

    def to_dict(self, currency: str) -> dict[str, Any]:
        return {
            "object": "statement",
            "account": self.account,
            "period": self.period.to_dict(),
            "currency": currency,
            "requests": self.requests,
            "debits": format_amount(self.debits),
            "credits": format_amount(self.credits),
            "net": format_amount(self.net),
            "lines": [line.to_dict() for line in self.lines],
        }


def statement(engine: Engine, party: str, period: Period) -> Statement:
    """The ledger lines of ``party``'s account in ``period``, grouped, with their totals
    (which are the sums of the lines, by construction)."""
    account = account_for(party)
    L = LedgerEntry
    debit_hi, debit_lo = split_sum(case((L.amount > 0, L.amount), else_=0))
    credit_hi, credit_lo = split_sum(case((L.amount < 0, L.amount), else_=0))
    keys = (L.kind, L.contract, L.counterparty, L.model, L.tenant)
    where = [L.account == account, *_within(L.at, period)]
    grouped = (
        select(*keys, func.count(distinct(L.request_id)), debit_hi, debit_lo, credit_hi, credit_lo)
        .where(*where)
        .group_by(*keys)
    )
    with engine.connect() as conn:
        lines = [
            StatementLine(
                kind,
                contract,
                counterparty,
                model,
                tenant,
                int(requests),
                join_sum(d_hi, d_lo),
                -join_sum(c_hi, c_lo),
            )
            for kind, contract, counterparty, model, tenant, requests, d_hi, d_lo, c_hi, c_lo in (
                conn.execute(grouped)
            )
        ]
        requests = conn.scalar(select(func.count(distinct(L.request_id))).where(*where)) or 0
    lines.sort(key=lambda x: (x.kind, x.contract or "", x.counterparty, x.model or "", x.tenant))
    return Statement(account, period, lines, int(requests))


# ------------------------------------------------------------------------ reconcile


@dataclass(frozen=True, slots=True)
class Problem:
    """Something that does not add up. Ids and amounts only (there is no content to show)."""

    kind: str
    request_id: str | None
    #: What the amount should be, and what it is, in units (``None`` where not an amount).
    expected: int | None
    actual: int | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "request_id": self.request_id,
            "expected": None if self.expected is None else format_amount(self.expected),
            "actual": None if self.actual is None else format_amount(self.actual),
            "message": self.message,
        }


@dataclass(slots=True)
class Reconciliation:
    period: Period | None
    #: Requests and lines in the ledger, and usage rows, that were checked.
    requests: int = 0
    lines: int = 0
    usage_rows: int = 0
    #: The sum of every ledger line checked: 0 when the ledger balances.
    total: int = 0
    #: Up to ``MAX_LISTED`` problems of each kind.
    problems: list[Problem] = field(default_factory=list)
    #: Every problem found, by kind (including those not listed).
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PROBLEM_KINDS, 0))

    @property
    def ok(self) -> bool:
        return not any(self.counts.values())

    def add(self, problems: Iterable[Problem]) -> None:
        for problem in problems:
            self.counts[problem.kind] += 1
            if self.counts[problem.kind] <= MAX_LISTED:
                self.problems.append(problem)

    def to_dict(self, currency: str) -> dict[str, Any]:
        return {
            "object": "reconciliation",
            "period": None if self.period is None else self.period.to_dict(),
            "currency": currency,
            "ok": self.ok,
            "checked": {
                "requests": self.requests,
                "lines": self.lines,
                "usage_rows": self.usage_rows,
            },
            "total": format_amount(self.total),
            "counts": dict(self.counts),
            "problems": [p.to_dict() for p in self.problems],
        }


def reconcile(engine: Engine, period: Period | None = None) -> Reconciliation:
    """Check the ledger (lines in ``period``, or all) and the usage rows (made in
    ``period``, or all):

    * every request's lines sum to zero, and so do all lines together;
    * a usage row's ``charge`` lines on its tenant's account sum to its ``billed``;
    * a partner-tier usage row's ``cost`` debits sum to its ``cost`` (other tiers post none);
    * every request in the ledger has a usage row.
    """
    report = Reconciliation(period)
    L, U = LedgerEntry, Usage
    in_ledger = _within(L.at, period)
    hi, lo = split_sum(L.amount)
    with engine.connect() as conn:
        requests, lines, total_hi, total_lo = conn.execute(
            select(func.count(distinct(L.request_id)), func.count(), hi, lo).where(*in_ledger)
        ).one()
        report.requests, report.lines = int(requests), int(lines)
        report.total = join_sum(total_hi, total_lo)
        report.usage_rows = int(
            conn.scalar(select(func.count()).select_from(U).where(*_within(U.created_at, period)))
            or 0
        )
        report.add(_unbalanced(conn.execute(_unbalanced_query(in_ledger))))
        if report.total:
            whole = "all lines together do not sum to zero"
            report.add([Problem("unbalanced_ledger", None, 0, report.total, whole)])
        report.add(_mismatches("charge_mismatch", conn.execute(_charges_query(period))))
        report.add(_mismatches("cost_mismatch", conn.execute(_costs_query(period))))
        report.add(_orphans(conn.execute(_orphans_query(in_ledger))))
    return report


def _unbalanced_query(in_ledger: list[ColumnElement[bool]]) -> Executable:
    L = LedgerEntry
    hi, lo = split_sum(L.amount)
    return (
        select(L.request_id, hi, lo)
        .where(*in_ledger)
        .group_by(L.request_id)
        .having(or_(hi != 0, lo != 0))
        .order_by(L.request_id)
    )


def _unbalanced(rows: Iterable[Any]) -> Iterator[Problem]:
    for request_id, hi, lo in rows:
        if total := join_sum(hi, lo):
            yield Problem(
                "unbalanced_request", request_id, 0, total, "its lines do not sum to zero"
            )


def _lines_of(*conditions: ColumnElement[bool]) -> tuple[Any, Any]:
    """The split sum of a usage row's ledger lines that meet ``conditions``, as two
    correlated scalar subqueries (found by the ledger's primary key)."""
    L = LedgerEntry
    hi, lo = split_sum(L.amount)
    where = [L.request_id == Usage.id, *conditions]
    return (
        select(hi).where(*where).correlate(Usage).scalar_subquery(),
        select(lo).where(*where).correlate(Usage).scalar_subquery(),
    )


def _mismatch_query(expected: Any, hi: Any, lo: Any, period: Period | None) -> Executable:
    rows = (
        select(Usage.id.label("id"), expected.label("expected"), hi.label("hi"), lo.label("lo"))
        .where(*_within(Usage.created_at, period))
        .subquery()
    )
    return (
        select(rows.c.id, rows.c.expected, rows.c.hi, rows.c.lo)
        .where(
            or_(
                func.coalesce(rows.c.hi, 0) != rows.c.expected // _SPLIT,
                func.coalesce(rows.c.lo, 0) != rows.c.expected % _SPLIT,
            )
        )
        .order_by(rows.c.id)
    )


def _charges_query(period: Period | None) -> Executable:
    L = LedgerEntry
    hi, lo = _lines_of(L.kind == "charge", L.account == literal("tenant:") + Usage.tenant)
    return _mismatch_query(Usage.billed, hi, lo, period)


def _costs_query(period: Period | None) -> Executable:
    L = LedgerEntry
    hi, lo = _lines_of(L.kind == "cost", L.amount > 0)
    expected = case((Usage.tier == "partner", Usage.cost), else_=0)
    return _mismatch_query(expected, hi, lo, period)


def _mismatches(kind: str, rows: Iterable[Any]) -> Iterator[Problem]:
    what = "its tenant's charge lines" if kind == "charge_mismatch" else "its cost lines"
    column = "billed" if kind == "charge_mismatch" else "cost"
    for request_id, expected, hi, lo in rows:
        actual = join_sum(hi, lo)
        if actual != int(expected):
            yield Problem(
                kind,
                request_id,
                int(expected),
                actual,
                f"{what} differ from the usage row's {column}",
            )


def _orphans_query(in_ledger: list[ColumnElement[bool]]) -> Executable:
    L = LedgerEntry
    return (
        select(L.request_id, func.count())
        .outerjoin(Usage, Usage.id == L.request_id)
        .where(Usage.id.is_(None), *in_ledger)
        .group_by(L.request_id)
        .order_by(L.request_id)
    )


def _orphans(rows: Iterable[Any]) -> Iterator[Problem]:
    for request_id, lines in rows:
        yield Problem(
            "orphan_entries", request_id, None, None, f"{lines} ledger lines, no usage row"
        )
