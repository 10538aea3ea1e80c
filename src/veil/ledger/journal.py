"""The crash journal: metering survives a gateway that dies.

Usage rows and ledger postings are written in batches, off the request path. In between, a
request exists only in memory — and a crash, a ``kill -9`` or an out-of-memory kill would
lose it, unbilled. So before a request is handed to an upstream, and again once it is
metered, one line is appended to the journal with a plain ``write(2)``: the kernel keeps it
even if the process dies the next instant. (``fsync`` — which a power cut needs — runs once
per batch, or per line with ``metering.fsync: always``.)

Each line is metadata only — a usage record, never prompt or completion text:

* ``D`` (dispatched): the request as it would be metered if the gateway died now —
  status 500, ``error_code: interrupted``, its prompt tokens estimated;
* ``M`` (metered): the request's real usage record.

Lines go to the current *segment* file. Each batch write rotates the segment; once the
batch is committed, the old segment is deleted (dispatched-but-unmetered requests are
copied into the new segment first). A process holds an ``flock`` on its ``.lock`` file for
as long as it lives, so a replica sharing the directory never replays a live one's
segments.

On start, ``recover`` reads the segments of every process whose lock is free: the ``M`` record of each request, else
its last ``D`` record, and the caller posts them — idempotently, since a batch may have been
committed just before the crash.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from veil.ledger.usage import UsageRecord

log = logging.getLogger("veil.journal")

SUFFIX = ".journal"
LOCK = ".lock"


def _encode(kind: bytes, record: UsageRecord) -> bytes:
    return kind + orjson.dumps(record) + b"\n"


class Journal:
    """One process's journal: ``<prefix>.lock`` (held with ``flock`` while the process
    lives) and its segments ``<prefix>-<n>.journal``. Only the segment being written is
    open, so a long database outage costs disk space, not file descriptors."""

    def __init__(self, directory: Path, fsync: str = "interval") -> None:
        self.directory = directory
        self._always = fsync == "always"
        #: fsync once per batch (``metering.fsync: interval``).
        self.fsyncs = fsync == "interval"
        self._prefix = f"{os.getpid()}-{time.time_ns()}"
        self._seq = 0
        self._lock: int | None = None
        self._fd: int | None = None
        self._path: Path | None = None
        #: Closed segments not yet in the database, oldest first.
        self._closed: list[Path] = []
        #: Descriptors of closed segments, fsynced and closed by ``sync``.
        self._to_sync: list[int] = []
        #: Dispatched requests not metered yet: their last ``D`` line.
        self._open: dict[str, bytes] = {}

    def open(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock = self.directory / f"{self._prefix}{LOCK}"
        self._lock = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._new_segment()

    def _new_segment(self) -> None:
        self._seq += 1
        self._path = self.directory / f"{self._prefix}-{self._seq:06d}{SUFFIX}"
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def _append(self, line: bytes) -> None:
        if self._fd is None:
            return
        os.write(self._fd, line)
        if self._always:
            os.fsync(self._fd)

    def dispatched(self, record: UsageRecord) -> None:
        """The request is about to reach an upstream; ``record`` is what to bill if the
        gateway dies before it is metered."""
        line = _encode(b"D", record)
        self._open[record.id] = line
        self._append(line)

    def metered(self, record: UsageRecord) -> None:
        self._open.pop(record.id, None)
        self._append(_encode(b"M", record))

    def rotate(self) -> None:
        """Start a new segment; what is in the old one is about to be written. Requests
        still in flight are carried into the new segment."""
        if self._fd is None or self._path is None:
            return
        old_fd, old_path = self._fd, self._path
        self._new_segment()
        if self._open:
            self._append(b"".join(self._open.values()))
        self._closed.append(old_path)
        if self.fsyncs:
            self._to_sync.append(old_fd)
        else:
            os.close(old_fd)

    def sync(self) -> None:
        """fsync the closed segments and the live one (a worker thread, once per batch)."""
        to_sync, self._to_sync = self._to_sync, []
        for fd in to_sync:
            with contextlib.suppress(OSError):
                os.fsync(fd)
            os.close(fd)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)

    def closed(self) -> list[Path]:
        """Segments no longer written to, oldest first, not yet in the database."""
        return list(self._closed)

    def committed(self, paths: list[Path] | None = None) -> None:
        """What these closed segments (default: all) hold is in the database: delete them."""
        done = set(paths) if paths is not None else set(self._closed)
        for path in done:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._closed = [p for p in self._closed if p not in done]

    def close(self, flushed: bool) -> None:
        """On a clean shutdown (``flushed``: every metered row was written), delete all;
        otherwise leave the segments for the next start to recover."""
        self.sync()
        if self._fd is not None:
            os.close(self._fd)
        if flushed and not self._open:
            self.committed()
            if self._path is not None:
                with contextlib.suppress(FileNotFoundError):
                    self._path.unlink()
            with contextlib.suppress(FileNotFoundError):
                (self.directory / f"{self._prefix}{LOCK}").unlink()
        if self._lock is not None:
            os.close(self._lock)
        self._fd = self._lock = None
        self._path = None


@dataclass(slots=True)
class Recovered:
    """What earlier processes left in the journal."""

    records: list[UsageRecord]
    metered: int
    interrupted: int
    skipped_lines: int
    #: Segments and lock files to delete once the records are posted.
    paths: list[Path]
    _locks: list[int]

    def release(self) -> None:
        """The records are posted: delete the segments."""
        for path in self.paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.abandon()
        self.paths = []

    def abandon(self) -> None:
        """Posting failed: keep the segments for the next start."""
        for fd in self._locks:
            os.close(fd)
        self._locks = []


def _dead_prefixes(directory: Path) -> tuple[set[str], list[int], list[Path]]:
    """Prefixes of processes that are gone (their lock could be taken, and is now held)."""
    live: set[str] = set()
    dead: set[str] = set()
    locks: list[int] = []
    lock_paths: list[Path] = []
    for lock in directory.glob(f"*{LOCK}"):
        prefix = lock.name[: -len(LOCK)]
        try:
            fd = os.open(lock, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            live.add(prefix)
            continue
        dead.add(prefix)
        locks.append(fd)
        lock_paths.append(lock)
    # A segment whose process left no lock file at all is an orphan: recover it too.
    for path in directory.glob(f"*{SUFFIX}"):
        prefix = path.name.rsplit("-", 1)[0]
        if prefix not in live:
            dead.add(prefix)
    return dead, locks, lock_paths


def recover(directory: Path) -> Recovered:
    """Read the segments of processes that are gone (the caller posts, then ``release``s)."""
    from veil.ledger.usage import UsageRecord

    metered: dict[str, UsageRecord] = {}
    dispatched: dict[str, UsageRecord] = {}
    skipped = 0
    if not directory.is_dir():
        return Recovered([], 0, 0, 0, [], [])
    dead, locks, paths = _dead_prefixes(directory)
    names = {f.name for f in fields(UsageRecord)}
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        if path.name.rsplit("-", 1)[0] not in dead:
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        paths.append(path)
        try:
            lines = list(_lines(fd))
        finally:
            os.close(fd)
        for kind, data in lines:
            try:
                record = _decode(data, names)
            except (orjson.JSONDecodeError, TypeError, ValueError, KeyError):
                skipped += 1  # a line cut short by the crash
                continue
            if kind == b"M":
                metered[record.id] = record
            elif kind == b"D":
                dispatched[record.id] = record
            else:
                skipped += 1
    interrupted = [r for i, r in dispatched.items() if i not in metered]
    if skipped:
        log.warning("journal: skipped %d unreadable lines", skipped)
    return Recovered(
        [*metered.values(), *interrupted], len(metered), len(interrupted), skipped, paths, locks
    )


def read_segment(path: Path) -> list[UsageRecord]:
    """The metered (``M``) records of a closed segment, for the writer."""
    from veil.ledger.usage import UsageRecord

    names = {f.name for f in fields(UsageRecord)}
    records: list[UsageRecord] = []
    if not path.exists():  # already written and deleted
        return records
    with path.open("rb") as f:
        for raw in f:
            if raw[:1] != b"M" or not raw.endswith(b"\n"):
                continue
            try:
                records.append(_decode(raw[1:-1], names))
            except (orjson.JSONDecodeError, TypeError, ValueError, KeyError):
                log.warning("journal: skipped an unreadable line in %s", path.name)
    return records


def _lines(fd: int) -> Iterator[tuple[bytes, bytes]]:
    with os.fdopen(os.dup(fd), "rb") as f:
        for raw in f:
            if raw.endswith(b"\n") and len(raw) > 2:
                yield raw[:1], raw[1:-1]


def _decode(data: bytes, names: set[str]) -> UsageRecord:
    """A journal line back to its record (``TypeError`` for a line that is not one)."""
    values: dict[str, Any] = orjson.loads(data)
    values["created_at"] = datetime.fromisoformat(values["created_at"])
    return _record_type()(**values)


def _record_type() -> type[UsageRecord]:
    global _RECORD
    if _RECORD is None:
        from veil.ledger.usage import UsageRecord

        _RECORD = UsageRecord
    return _RECORD


_RECORD: type[UsageRecord] | None = None
