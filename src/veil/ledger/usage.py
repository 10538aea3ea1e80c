"""Usage rows and their ledger postings, written in batches off the request path.

``record`` appends to the crash journal and to an in-memory list; a background task writes
what has gathered every ``interval`` seconds (or sooner when ``batch`` rows are waiting) on a
worker thread: each request's usage row and its ledger lines in one transaction, inserted
with "on conflict do nothing" so that writing a request twice (a replay of the journal after
a crash) changes nothing. Shutdown flushes what is left. A row holds metadata only — ids,
names, counts, timings, amounts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from veil.ledger.journal import Journal
from veil.ledger.postings import Book, Posting
from veil.store.models import LedgerEntry, Usage

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


#: Rows kept in memory while the database is unavailable, before new ones are dropped.
MAX_PENDING = 200_000
_COLUMNS = tuple(f.name for f in fields(UsageRecord))


def _row(record: UsageRecord) -> dict[str, object]:
    # Not dataclasses.asdict: it deep-copies every value, and this runs for every request.
    return {name: getattr(record, name) for name in _COLUMNS}


def _insert_ignore(engine: Engine, table: Table) -> Any:
    """``INSERT … ON CONFLICT DO NOTHING`` in the engine's dialect."""
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing()


def ledger_rows(book: Book, record: UsageRecord) -> list[dict[str, object]]:
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
    return [
        {
            "request_id": record.id,
            "line": n,
            "at": record.created_at,
            "account": line.account,
            "amount": line.amount,
            "kind": line.kind,
            "counterparty": line.counterparty,
            "contract": line.contract,
            "tenant": record.tenant,
            "model": record.model,
        }
        for n, line in enumerate(lines, 1)
    ]


def write_records(engine: Engine, book: Book, rows: list[UsageRecord]) -> None:
    """Usage rows and ledger lines in one transaction; rows already there are left alone."""
    usage_table = Usage.__table__
    ledger_table = LedgerEntry.__table__
    assert isinstance(usage_table, Table)
    assert isinstance(ledger_table, Table)
    lines = [line for r in rows for line in ledger_rows(book, r)]
    with engine.begin() as conn:
        conn.execute(_insert_ignore(engine, usage_table), [_row(r) for r in rows])
        if lines:
            conn.execute(_insert_ignore(engine, ledger_table), lines)


class UsageRecorder:
    def __init__(
        self,
        engine: Engine,
        book: Book | None = None,
        interval: float = 0.2,
        batch: int = 1024,
        journal: Journal | None = None,
    ) -> None:
        self._engine = engine
        self._book = book or Book(())
        self._interval = interval
        self._batch = batch
        self.journal = journal
        self._pending: list[UsageRecord] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.dropped = 0

    def record(self, row: UsageRecord) -> None:
        if len(self._pending) >= MAX_PENDING:
            # The database has been failing for a long while: keep memory bounded, say so.
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.error("usage writer is %d rows behind; dropped %d", MAX_PENDING, self.dropped)
            return
        if self.journal is not None:
            self.journal.metered(row)
        self._pending.append(row)
        if len(self._pending) >= self._batch:
            self._wake.set()

    def dispatched(self, row: UsageRecord) -> None:
        """Journal what to bill should the process die before ``record`` (see journal)."""
        if self.journal is not None:
            self.journal.dispatched(row)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="veil-usage-writer")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
        if self.journal is not None:
            self.journal.close(flushed=not self._pending)

    async def flush(self) -> None:
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        if self.journal is not None:
            self.journal.rotate()
        try:
            await asyncio.to_thread(self._write, rows)
        except SQLAlchemyError as exc:
            # Keep the rows and try again on the next tick (the journal keeps them too);
            # say what failed, not what was in it.
            log.error("writing %d usage rows failed: %s", len(rows), type(exc).__name__)
            self._pending[:0] = rows
            return
        if self.journal is not None:
            self.journal.committed()

    def _write(self, rows: list[UsageRecord]) -> None:
        write_records(self._engine, self._book, rows)
        self.written += len(rows)
        if self.journal is not None:
            self.journal.sync()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            await self.flush()
