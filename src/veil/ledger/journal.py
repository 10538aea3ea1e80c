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
copied into the new segment first). A process holds an ``flock`` on every segment it has
not deleted yet, so a replica sharing the directory never replays a live one's segments.

On start, ``recover`` reads every unlocked segment: the ``M`` record of each request, else
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


@dataclass(slots=True)
class _Segment:
    path: Path
    fd: int


def _encode(kind: bytes, record: UsageRecord) -> bytes:
    return kind + orjson.dumps(record) + b"\n"


class Journal:
    def __init__(self, directory: Path, fsync: str = "interval") -> None:
        self.directory = directory
        self._always = fsync == "always"
        self._fsync = fsync != "never"
        #: fsync once per batch (``metering.fsync: interval``).
        self.fsyncs = fsync == "interval"
        self._prefix = f"{os.getpid()}-{time.time_ns()}"
        self._seq = 0
        self._current: _Segment | None = None
        self._closed: list[_Segment] = []
        #: Dispatched requests not metered yet: their last ``D`` line.
        self._open: dict[str, bytes] = {}

    def open(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._current = self._new_segment()

    def _new_segment(self) -> _Segment:
        self._seq += 1
        path = self.directory / f"{self._prefix}-{self._seq:06d}{SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return _Segment(path, fd)

    def _append(self, line: bytes) -> None:
        segment = self._current
        if segment is None:
            return
        os.write(segment.fd, line)
        if self._always:
            os.fsync(segment.fd)

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
        old = self._current
        if old is None:
            return
        self._current = self._new_segment()
        if self._open:
            self._append(b"".join(self._open.values()))
        self._closed.append(old)

    def sync(self) -> None:
        """fsync the segments (a worker thread calls this once per batch)."""
        if not self._fsync:
            return
        for segment in [*self._closed, *([self._current] if self._current else [])]:
            with contextlib.suppress(OSError):
                os.fsync(segment.fd)

    def closed(self) -> list[Path]:
        """Segments no longer written to, oldest first, not yet in the database."""
        return [segment.path for segment in self._closed]

    def committed(self, paths: list[Path] | None = None) -> None:
        """What these closed segments (default: all) hold is in the database: delete them."""
        done = set(paths) if paths is not None else None
        keep: list[_Segment] = []
        for segment in self._closed:
            if done is None or segment.path in done:
                _remove(segment)
            else:
                keep.append(segment)
        self._closed = keep

    def close(self, flushed: bool) -> None:
        """On a clean shutdown (``flushed``: every metered row was written), delete all."""
        if flushed and not self._open:
            self.committed()
            if self._current is not None:
                _remove(self._current)
        else:
            for segment in [*self._closed, *([self._current] if self._current else [])]:
                os.close(segment.fd)
            self._closed = []
        self._current = None


def _remove(segment: _Segment) -> None:
    with contextlib.suppress(FileNotFoundError):
        segment.path.unlink()
    os.close(segment.fd)


@dataclass(slots=True)
class Recovered:
    """What an earlier process left in the journal."""

    records: list[UsageRecord]
    metered: int
    interrupted: int
    skipped_lines: int
    paths: list[Path]
    _fds: list[int]

    def release(self) -> None:
        """The records are posted: delete the segments."""
        for path, fd in zip(self.paths, self._fds, strict=True):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            os.close(fd)
        self.paths, self._fds = [], []

    def abandon(self) -> None:
        """Posting failed: keep the segments for the next start."""
        for fd in self._fds:
            os.close(fd)
        self.paths, self._fds = [], []


def recover(directory: Path) -> Recovered:
    """Read the segments no live process holds (the caller posts, then ``release``s)."""
    from veil.ledger.usage import UsageRecord

    metered: dict[str, UsageRecord] = {}
    dispatched: dict[str, UsageRecord] = {}
    paths: list[Path] = []
    fds: list[int] = []
    skipped = 0
    names = {f.name for f in fields(UsageRecord)}
    for path in sorted(directory.glob(f"*{SUFFIX}")) if directory.is_dir() else []:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a live process's segment
            os.close(fd)
            continue
        paths.append(path)
        fds.append(fd)
        for kind, data in _lines(fd):
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
        [*metered.values(), *interrupted], len(metered), len(interrupted), skipped, paths, fds
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
    from veil.ledger.usage import UsageRecord

    values: dict[str, Any] = orjson.loads(data)
    if not isinstance(values, dict) or not names.issuperset(values):
        raise ValueError("not a usage record")
    values["created_at"] = datetime.fromisoformat(values["created_at"])
    return UsageRecord(**values)
