"""Usage rows and their ledger postings, written in batches off the request path.

``record`` appends the request's usage record to the crash journal — that is all the
request path does. Every ``interval`` seconds (or sooner when ``batch`` records are waiting)
the journal's segment is closed and handed to a *sink*, which writes each request's usage
row and ledger lines in one transaction, inserted with "on conflict do nothing" so that
writing a request twice (a replay after a crash) changes nothing; then the segment is
deleted. So the journal is the queue: nothing metered lives only in memory, and a database
outage only makes the queue longer (on disk).

The sink of ``veil serve`` is a separate writer process (``veil.ledger.writer``): database
work in a thread of the gateway would contend with the event loop for the interpreter lock,
which costs far more than the work itself. A record holds metadata only — ids, names,
counts, timings, amounts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from operator import attrgetter
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Connection, Engine

from veil.ledger.journal import Journal
from veil.ledger.postings import Book, Posting

log = logging.getLogger("veil.usage")


@dataclass(slots=True)
class UsageRecord:
    id: str
    created_at: datetime
    tenant: str
    user_hash: str | None
    key_id: str | None
    tier: str | None
    provider: str | None
    model: str | None
    stream: bool
    prompt_tokens: int
    completion_tokens: int
    token_method: str | None
    latency_ms: float
    status: int
    error_code: str | None
    partner: str | None = None
    cloud: str | None = None
    policy: str | None = None
    consent: str | None = None
    redactions: str | None = None
    category: str | None = None
    difficulty: str | None = None
    attempts: int = 0
    #: Units of 10⁻¹² currency (``veil.ledger.money``).
    billed: int = 0
    cost: int = 0
    #: The measurement of the private node that served it (private nodes only).
    served_by: str | None = None
    #: What moderation decided when it was not ``allow``: ``input:block:violence``, …
    moderation: str | None = None
    #: Bytes of request that left the device (the request as sent, after redaction).
    bytes_out: int = 0


_COLUMNS = tuple(f.name for f in fields(UsageRecord))
_values = attrgetter(*_COLUMNS)
_CREATED = _COLUMNS.index("created_at")
_LEDGER_COLUMNS = (
    "request_id",
    "line",
    "at",
    "account",
    "amount",
    "kind",
    "counterparty",
    "contract",
    "tenant",
    "model",
)


def _row(record: UsageRecord) -> dict[str, object]:
    # Not dataclasses.asdict: it deep-copies every value.
    return dict(zip(_COLUMNS, _values(record), strict=True))


def ledger_rows(book: Book, record: UsageRecord) -> list[tuple[Any, ...]]:
    """The record's ledger lines as rows in ``_LEDGER_COLUMNS`` order (none if free)."""
    if not record.billed and not record.cost:
        return []
    lines = book.post(
        Posting(
            record.tenant,
            record.model,
            record.tier,
            record.partner,
            record.cloud,
            record.billed,
            record.cost,
        )
    )
    at, tenant, model, rid = record.created_at, record.tenant, record.model, record.id
    return [
        (
            rid,
            n,
            at,
            line.account,
            line.amount,
            line.kind,
            line.counterparty,
            line.contract,
            tenant,
            model,
        )
        for n, line in enumerate(lines, 1)
    ]


def _statement(engine: Engine, table: str, columns: tuple[str, ...]) -> str:
    """``INSERT … ON CONFLICT DO NOTHING`` in the driver's own parameter style: rows go to
    the driver's ``executemany`` as tuples, without SQLAlchemy's per-row processing (this
    runs for every request at full load)."""
    mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
    names = ", ".join(f'"{c}"' for c in columns)
    marks = ", ".join([mark] * len(columns))
    return f"INSERT INTO {table} ({names}) VALUES ({marks}) ON CONFLICT DO NOTHING"  # noqa: S608 - names are ours


def _sqlite_time(moment: datetime) -> str:
    # What SQLAlchemy's DateTime stores on SQLite: UTC, without the zone, always with
    # microseconds (so that the text sorts as the time does).
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _new_only(conn: Connection, rows: list[UsageRecord]) -> list[UsageRecord]:
    """The records whose request is not in the database yet (first of each id)."""
    unique = list({r.id: r for r in reversed(rows)}.values())[::-1]
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    found: set[str] = set()
    for i in range(0, len(unique), 500):
        ids = [r.id for r in unique[i : i + 500]]
        sql = f"SELECT id FROM usage WHERE id IN ({', '.join([mark] * len(ids))})"  # noqa: S608 - placeholders only
        found.update(row[0] for row in conn.exec_driver_sql(sql, tuple(ids)))
    return [r for r in unique if r.id not in found]


def write_records(engine: Engine, book: Book, rows: list[UsageRecord]) -> None:
    """Usage rows and ledger lines in one transaction; a request already there is left
    alone, its ledger lines included (a replay after a crash posts nothing twice, even if
    the contracts changed in between)."""
    with engine.begin() as conn:
        rows = _new_only(conn, rows)
        if not rows:
            return
        usage = [_values(r) for r in rows]
        lines = [line for r in rows for line in ledger_rows(book, r)]
        if engine.dialect.name == "sqlite":
            # One conversion per request, shared by its usage row and its ledger lines.
            times = {r.id: _sqlite_time(r.created_at) for r in rows}
            usage = [(*u[:_CREATED], times[u[0]], *u[_CREATED + 1 :]) for u in usage]
            lines = [(*x[:2], times[x[0]], *x[3:]) for x in lines]
        conn.exec_driver_sql(_statement(engine, "usage", _COLUMNS), usage)
        if lines:
            conn.exec_driver_sql(_statement(engine, "ledger_entries", _LEDGER_COLUMNS), lines)


def segment_records(path: Path) -> list[UsageRecord]:
    """The metered records (``M`` lines) of one journal segment."""
    from veil.ledger.journal import read_segment

    return read_segment(path)


class WriterError(RuntimeError):
    """The writer could not write a segment; the message names the database's error."""


class Sink(Protocol):
    """Writes closed journal segments to the database (in a thread, or a writer process)."""

    async def start(self) -> None: ...

    async def post(self, paths: list[Path]) -> None:
        """Write every metered record of these segments, or raise."""

    async def close(self) -> None: ...


class ThreadSink:
    """Writes from a worker thread of this process: for short-lived gateways (the CLI)."""

    def __init__(self, engine: Engine, book: Book) -> None:
        self._engine = engine
        self._book = book

    async def start(self) -> None:
        pass

    async def post(self, paths: list[Path]) -> None:
        await asyncio.to_thread(self._write, paths)

    def _write(self, paths: list[Path]) -> None:
        records = [r for path in paths for r in segment_records(path)]
        if records:
            write_records(self._engine, self._book, records)

    async def close(self) -> None:
        pass


class UsageRecorder:
    """Meters into the journal; every ``interval`` seconds (or after ``batch`` records) the
    segment is closed and handed to the sink, and deleted once the sink has written it."""

    def __init__(
        self,
        journal: Journal,
        sink: Sink,
        interval: float = 0.2,
        batch: int = 1024,
    ) -> None:
        self.journal = journal
        self._sink = sink
        self._interval = interval
        self._batch = batch
        self._metered = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failures = 0

    def record(self, row: UsageRecord) -> None:
        self.journal.metered(row)
        self._metered += 1
        if self._metered >= self._batch:
            self._wake.set()

    def dispatched(self, row: UsageRecord) -> None:
        """Journal what to bill should the process die before ``record`` (see journal)."""
        self.journal.dispatched(row)

    async def start(self) -> None:
        await self._sink.start()
        self._task = asyncio.create_task(self._run(), name="veil-usage-writer")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        flushed = await self.flush()
        await self._sink.close()
        self.journal.close(flushed=flushed)

    async def flush(self) -> bool:
        """Hand what was metered to the sink; True when everything is in the database."""
        if self._metered:
            self._metered = 0
            self.journal.rotate()
        paths = self.journal.closed()
        if not paths:
            return True
        try:
            await self._sink.post(paths)
        except Exception as exc:
            if self.journal.fsyncs:  # the queue is on disk: make it survive a power cut
                await asyncio.to_thread(self.journal.sync)
            # The segments stay in the journal and are handed over again on the next tick.
            # Say what failed, never what was in it.
            self._failures += 1
            if self._failures % 50 == 1:
                # A writer error carries the database's exception type (never content).
                reason = str(exc) if isinstance(exc, WriterError) else type(exc).__name__
                log.error(
                    "writing usage to the database failed (%s); %d journal segments waiting",
                    reason,
                    len(paths),
                )
            return False
        self._failures = 0
        self.journal.committed(paths)
        if self.journal.fsyncs:  # what is metered from now on survives a power cut too
            await asyncio.to_thread(self.journal.sync)
        return True

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            try:
                await self.flush()
            except Exception as exc:  # e.g. no disk space for a new segment: keep trying
                log.error("metering flush failed: %s", type(exc).__name__)
