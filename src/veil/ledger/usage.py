"""Usage rows, written in batches off the request path.

``record`` only appends to an in-memory list; a background task writes what has gathered
every ``interval`` seconds (or sooner when ``batch`` rows are waiting) on a worker thread.
Shutdown flushes what is left. A row holds metadata only — ids, names, counts, timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, fields
from datetime import datetime

from sqlalchemy import Engine, insert
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from veil.store.models import Usage

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


#: Rows kept in memory while the database is unavailable, before new ones are dropped.
MAX_PENDING = 200_000
_COLUMNS = tuple(f.name for f in fields(UsageRecord))


def _row(record: UsageRecord) -> dict[str, object]:
    # Not dataclasses.asdict: it deep-copies every value, and this runs for every request.
    return {name: getattr(record, name) for name in _COLUMNS}


class UsageRecorder:
    def __init__(self, engine: Engine, interval: float = 0.2, batch: int = 1024) -> None:
        self._engine = engine
        self._interval = interval
        self._batch = batch
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
        self._pending.append(row)
        if len(self._pending) >= self._batch:
            self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="veil-usage-writer")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    async def flush(self) -> None:
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        try:
            await asyncio.to_thread(self._write, rows)
        except SQLAlchemyError as exc:
            # Keep the rows and try again on the next tick; say what failed, not what was in it.
            log.error("writing %d usage rows failed: %s", len(rows), type(exc).__name__)
            self._pending[:0] = rows

    def _write(self, rows: list[UsageRecord]) -> None:
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(Usage), [_row(r) for r in rows])
        except IntegrityError:
            # A row already written (same request id) must not block the rest: one at a time.
            for row in rows:
                try:
                    with self._engine.begin() as conn:
                        conn.execute(insert(Usage), [_row(row)])
                except IntegrityError:
                    continue
        self.written += len(rows)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval)
            self._wake.clear()
            await self.flush()
