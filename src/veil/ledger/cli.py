"""``veil usage``, ``veil statement`` and ``veil ledger reconcile``: the reports of
``veil.ledger.reports`` over the database a config names, as a table, JSON or CSV.

Amounts are printed exactly (``format_amount``) in ``metering.currency``. JSON is the shape
``GET /admin/usage`` and ``GET /admin/statements`` answer with.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from sqlalchemy import Engine

from veil.ledger import reports
from veil.ledger.money import format_amount

ledger_app = typer.Typer(
    help="Check the ledger.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

out = Console()

T = TypeVar("T")


Format = Literal["table", "json", "csv"]

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config file (its database and currency)."),
]
PeriodHelp = "YYYY-MM, YYYY-MM-DD or YYYY-MM-DD..YYYY-MM-DD (UTC, both days included)."
FormatOption = Annotated[Format, typer.Option("--format", "-f", help="How to print it.")]


@ledger_app.callback()
def _group() -> None:
    """Check the ledger."""


@contextmanager
def _database(config: Path | None) -> Iterator[tuple[Engine, str]]:
    """The engine and currency of ``config``, with Veil's errors shown as ``veil`` shows
    them (imported here: ``veil.cli`` imports this module)."""
    from veil import cli

    with cli._errors():
        cfg = cli._load(config)
        engine = cli._open_db(cfg)
        try:
            yield engine, cfg.metering.currency
        finally:
            engine.dispose()


def _report(config: Path | None, make: Callable[[Engine], T]) -> tuple[T, str]:
    with _database(config) as (engine, currency):
        return make(engine), currency


def _json(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _csv(header: list[str], rows: list[list[Any]]) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(["" if v is None else v for v in row] for row in rows)


def _table(*columns: str, numbers: int, title: str | None = None) -> Table:
    """A table whose last ``numbers`` columns are right-aligned and never wrapped."""
    table = Table(title=title, title_justify="left")
    for i, name in enumerate(columns):
        number = i >= len(columns) - numbers
        table.add_column(name, justify="right" if number else "left", no_wrap=number)
    return table


def _print(table: Table) -> None:
    """Print ``table`` without ever cutting an amount short: rich would squeeze a table
    wider than the terminal (or the 80 columns of a pipe) with ellipses, so such a table
    is printed at its natural width instead, in lines longer than the terminal."""
    needed = Measurement.get(out, out.options.update_width(10_000), table).maximum
    (out if needed <= out.width else Console(width=needed)).print(table)


# ------------------------------------------------------------------------ usage


def usage(
    period: Annotated[str, typer.Option(help=PeriodHelp)],
    by: Annotated[reports.UsageBy, typer.Option(help="Group the usage rows by this.")] = "tenant",
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's usage.")] = None,
    output: FormatOption = "table",
    config: ConfigOption = None,
) -> None:
    """Requests, errors, tokens, billed and cost amounts per tenant, model, tier, partner,
    provider or category, with a total."""

    def make(engine: Engine) -> reports.UsageReport:
        return reports.usage_report(engine, by, reports.parse_period(period), tenant)

    report, currency = _report(config, make)
    if output == "json":
        _json(report.to_dict(currency))
        return
    rows = [*report.rows, report.total]
    if output == "csv":
        header = ["row", by, "requests", "errors", "prompt_tokens", "completion_tokens"]
        _csv(
            [*header, "billed", "cost", "currency"],
            [
                [
                    "total" if r is rows[-1] else "group",
                    r.group,
                    r.requests,
                    r.errors,
                    r.prompt_tokens,
                    r.completion_tokens,
                    format_amount(r.billed),
                    format_amount(r.cost),
                    currency,
                ]
                for r in rows
            ],
        )
        return
    scope = f", tenant {tenant}" if tenant else ""
    table = _table(
        by,
        "requests",
        "errors",
        "prompt tokens",
        "completion tokens",
        f"billed ({currency})",
        f"cost ({currency})",
        numbers=6,
        title=f"Usage by {by}, {report.period.label}{scope}",
    )
    for r in report.rows:
        table.add_row(r.group or "-", *_usage_numbers(r))
    table.add_section()
    table.add_row("total", *_usage_numbers(report.total), style="bold")
    _print(table)


def _usage_numbers(r: reports.UsageRow) -> list[str]:
    return [
        f"{r.requests:,}",
        f"{r.errors:,}",
        f"{r.prompt_tokens:,}",
        f"{r.completion_tokens:,}",
        format_amount(r.billed),
        format_amount(r.cost),
    ]


# ------------------------------------------------------------------------ statement


def statement(
    party: Annotated[
        str, typer.Option(help="A party (openai), platform, or an account (tenant:acme).")
    ],
    period: Annotated[str, typer.Option(help=PeriodHelp)],
    output: FormatOption = "table",
    config: ConfigOption = None,
) -> None:
    """A party's ledger lines in a period, grouped, with their totals. A positive net is
    owed to the party."""

    def make(engine: Engine) -> reports.Statement:
        return reports.statement(engine, party, reports.parse_period(period))

    st, currency = _report(config, make)
    if output == "json":
        _json(st.to_dict(currency))
        return
    if output == "csv":
        keys = ["kind", "contract", "counterparty", "model", "tenant", "requests"]
        head = [st.account, st.period.label]
        _csv(
            ["account", "period", "row", *keys, "debits", "credits", "net", "currency"],
            [
                [*head, "line", *(getattr(line, k) for k in keys), *_money(line), currency]
                for line in st.lines
            ]
            + [[*head, "total", "", "", "", "", "", st.requests, *_money(st), currency]],
        )
        return
    table = _table(
        "kind",
        "contract",
        "counterparty",
        "model",
        "tenant",
        "requests",
        f"debits ({currency})",
        f"credits ({currency})",
        f"net ({currency})",
        numbers=4,
        title=f"Statement of {st.account}, {st.period.label}",
    )
    for line in st.lines:
        table.add_row(
            line.kind,
            line.contract or "-",
            line.counterparty,
            line.model or "-",
            line.tenant,
            f"{line.requests:,}",
            *_money(line),
        )
    table.add_section()
    table.add_row("total", "", "", "", "", f"{st.requests:,}", *_money(st), style="bold")
    _print(table)
    owed = "owed to" if st.net > 0 else "owed by" if st.net < 0 else "nothing owed to or by"
    out.print(f"Net {format_amount(abs(st.net))} {currency}: {owed} {st.account}", highlight=False)


def _money(item: reports.StatementLine | reports.Statement) -> list[str]:
    return [format_amount(item.debits), format_amount(item.credits), format_amount(item.net)]


# ------------------------------------------------------------------------ reconcile


@ledger_app.command()
def reconcile(
    period: Annotated[
        str | None, typer.Option(help=PeriodHelp + " Default: the whole ledger.")
    ] = None,
    output: Annotated[
        Literal["table", "json"], typer.Option("--format", "-f", help="How to print it.")
    ] = "table",
    config: ConfigOption = None,
) -> None:
    """Prove that the ledger balances and matches usage; exit 1 when it does not."""

    def make(engine: Engine) -> reports.Reconciliation:
        return reports.reconcile(engine, reports.parse_period(period) if period else None)

    result, currency = _report(config, make)
    if output == "json":
        _json(result.to_dict(currency))
    else:
        _print_reconciliation(result, currency)
    if not result.ok:
        raise typer.Exit(1)


def _print_reconciliation(result: reports.Reconciliation, currency: str) -> None:
    scope = f"in {result.period.label}" if result.period else "in the whole ledger"
    out.print(
        f"Checked {result.requests:,} requests in the ledger ({result.lines:,} lines) and "
        f"{result.usage_rows:,} usage rows {scope}; the lines sum to "
        f"{format_amount(result.total)} {currency}.",
        highlight=False,
    )
    if result.ok:
        out.print("[green]ok[/green] the ledger balances and matches usage")
        return
    table = _table(
        "problem", "request", "what", f"expected ({currency})", f"actual ({currency})", numbers=2
    )
    for p in result.problems:
        table.add_row(
            p.kind,
            p.request_id or "-",
            p.message,
            "-" if p.expected is None else format_amount(p.expected),
            "-" if p.actual is None else format_amount(p.actual),
        )
    _print(table)
    counts = ", ".join(f"{n:,} {kind}" for kind, n in result.counts.items() if n)
    shown = len(result.problems)
    total = sum(result.counts.values())
    more = f" (the first {shown:,} listed)" if shown < total else ""
    out.print(f"[red]{total:,} problems[/red]: {counts}{more}", highlight=False)
