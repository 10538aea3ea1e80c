"""The metering writer: a child process of ``veil serve`` that writes journal segments to
the database.

Why a process: the gateway's event loop and a writer thread share one interpreter lock, and
the hand-offs between them cost the gateway several times what the inserts themselves cost
(measured: ``bench/overhead.py --part metering``). In its own process the writer competes
only for a CPU core.

The protocol is lines over the child's stdin and stdout. The first stdin line is a JSON
object with the database URL and the revenue-share contracts (the URL may hold a password,
so it is never on the command line). Then each stdin line is the path of a closed journal
segment; the child writes that segment's metered requests (usage rows and ledger lines, in
one transaction, idempotently) and answers ``ok`` or ``error <ExceptionType>`` on stdout, in
order. When stdin closes — the gateway stopped or died — the child exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections import deque
from pathlib import Path
from typing import Any

import orjson

from veil.config import ContractConfig
from veil.ledger.usage import WriterError

log = logging.getLogger("veil.writer")

#: Seconds the gateway waits for the writer to finish when it stops.
STOP_TIMEOUT = 30.0


class ProcessSink:
    """The gateway's side: starts the writer, hands it segments, restarts it if it dies."""

    def __init__(self, url: str, contracts: list[ContractConfig]) -> None:
        self._init = orjson.dumps(
            {"url": url, "contracts": [c.model_dump(mode="json") for c in contracts]}
        )
        self._proc: asyncio.subprocess.Process | None = None
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        await self._spawn()

    async def _spawn(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "veil.ledger.writer",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        assert self._proc.stdin is not None
        self._proc.stdin.write(self._init + b"\n")
        await self._proc.stdin.drain()
        self._reader = asyncio.create_task(self._read(self._proc), name="veil-writer-replies")

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                break
            if not self._waiting:
                continue
            future = self._waiting.popleft()
            if future.done():
                continue
            answer = line.decode().strip()
            if answer == "ok":
                future.set_result(None)
            else:
                future.set_exception(WriterError(f"the writer said: {answer[:100]}"))
        # The writer is gone: whatever it had not answered fails (and is handed over again).
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(WriterError("the writer process exited"))

    async def post(self, paths: list[Path]) -> None:
        async with self._lock:
            if self._proc is None or self._proc.returncode is not None:
                if self._proc is not None:
                    log.error(
                        "the metering writer exited (%s); restarting it", self._proc.returncode
                    )
                await self._spawn()
            proc = self._proc
            assert proc is not None
            assert proc.stdin is not None
            loop = asyncio.get_running_loop()
            futures = []
            for path in paths:
                future: asyncio.Future[None] = loop.create_future()
                self._waiting.append(future)
                futures.append(future)
                proc.stdin.write(str(path).encode() + b"\n")
            try:
                await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise WriterError("the writer process exited") from exc
        await asyncio.gather(*futures)

    async def close(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await proc.stdin.wait_closed()
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if self._reader is not None:
            await self._reader
        self._proc = None


def _serve() -> int:
    """The child: read the set-up line, then write each segment it is given."""
    from veil.ledger.postings import Book
    from veil.ledger.usage import segment_records, write_records
    from veil.store import db

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    first = sys.stdin.buffer.readline()
    if not first:
        return 0
    setup: dict[str, Any] = orjson.loads(first)
    engine = db.make_engine(setup["url"])
    book = Book(ContractConfig.model_validate(c) for c in setup["contracts"])
    out = sys.stdout.buffer
    try:
        for raw in sys.stdin.buffer:
            path = Path(raw.decode().rstrip("\n"))
            try:
                records = segment_records(path)
                if records:
                    write_records(engine, book, records)
                out.write(b"ok\n")
            except Exception as exc:  # reported to the gateway, which tries again later
                out.write(f"error {type(exc).__name__}\n".encode())
            out.flush()
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(_serve())
