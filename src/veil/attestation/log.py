"""The transparency log on disk and over HTTP.

A ``LogStore`` is a directory::

    entries     the append-only records, each: length (4 bytes, big-endian) | entry |
                its RFC 9162 leaf hash (32 bytes). Appended with fsync; a torn last
                record (a crash mid-write) is cut off, with a warning, when a writer opens.
    log_key     the log's Ed25519 signing key, raw 32 bytes as hex, mode 0600,
                made on first use
    log_key.pub the public key, raw 32 bytes as hex, for verifiers
    lock        a writer holds an flock on it: one writer at a time

``create_app`` serves a store read-only (``veil log serve``); appends go through
``veil log append``, which writes the directory directly. The server picks up new records
whenever the entries file has grown, before answering each request.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import logging
import os
import re
import struct
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from veil.attestation.merkle import (
    HASH_SIZE,
    MerkleLog,
    SignedTreeHead,
    TreeHead,
    leaf_hash,
    sign_tree_head,
)

log = logging.getLogger(__name__)

MAX_ENTRY_SIZE = 64 * 1024
MAX_ENTRIES_PER_REQUEST = 1000
_LENGTH = struct.Struct(">I")
_MEASUREMENT = re.compile(r"[0-9a-f]{64}")


class LogError(Exception):
    """The log directory cannot be used: corrupt records, a bad key file, a bad entry."""


def measurement_entry(measurement: str, name: str, version: str) -> bytes:
    """A release measurement record as canonical JSON bytes (sorted keys, no spaces)."""
    if not _MEASUREMENT.fullmatch(measurement):
        raise LogError("measurement must be a SHA-256 digest as 64 lowercase hex digits")
    record = {"measurement": measurement, "name": name, "version": version}
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


def load_public_key(hex_key: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(hex_key.strip()))
    except ValueError:
        raise LogError("a log public key is 32 bytes as 64 hex digits") from None


def _load_or_make_key(directory: Path) -> Ed25519PrivateKey:
    path = directory / "log_key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        try:
            return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(path.read_text().strip()))
        except ValueError:
            raise LogError(f"{path} is not a raw Ed25519 key in hex") from None
    key = Ed25519PrivateKey.generate()
    with os.fdopen(fd, "w") as f:
        f.write(key.private_bytes_raw().hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    (directory / "log_key.pub").write_text(key.public_key().public_bytes_raw().hex() + "\n")
    return key


class LogStore:
    """A persistent, append-only Merkle log of entries, signed with the directory's key.

    ``writer=True`` takes the directory's lock (waiting for another writer to finish) and
    repairs a torn last record; a reader (``writer=False``) takes no lock, never writes
    entries, and calls ``refresh`` to pick up what a writer appended since.
    Entries are kept in memory: a log of releases is small.
    """

    def __init__(self, directory: Path, *, writer: bool = True) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._writer = writer
        self._lock_fd: int | None = None
        if writer:
            self._lock_fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self._key = _load_or_make_key(directory)
        self._path = directory / "entries"
        self._path.touch(exist_ok=True)
        self._merkle = MerkleLog()
        self._entries: list[bytes] = []
        self._end = 0
        self._head: SignedTreeHead | None = None
        self.refresh()
        if writer:
            self._repair()

    def __enter__(self) -> LogStore:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    @property
    def size(self) -> int:
        return self._merkle.size

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    def refresh(self) -> bool:
        """Read records appended since the last read; whether there were any."""
        if self._path.stat().st_size <= self._end:
            return False
        with self._path.open("rb") as f:
            f.seek(self._end)
            data = f.read()
        pos, before = 0, self.size
        while pos + _LENGTH.size <= len(data):
            (length,) = _LENGTH.unpack_from(data, pos)
            start, stop = pos + _LENGTH.size, pos + _LENGTH.size + length
            if length > MAX_ENTRY_SIZE or stop + HASH_SIZE > len(data):
                break
            entry, hashed = data[start:stop], data[stop : stop + HASH_SIZE]
            if leaf_hash(entry) != hashed:
                if stop + HASH_SIZE < len(data):
                    raise LogError(f"record {self.size} of {self._path} is corrupt")
                break
            self._merkle.append_hash(hashed)
            self._entries.append(entry)
            pos = stop + HASH_SIZE
        self._end += pos
        return self.size > before

    def _repair(self) -> None:
        actual = self._path.stat().st_size
        if actual > self._end:
            log.warning(
                "%s: cutting off a torn last record (%d bytes after record %d)",
                self._path,
                actual - self._end,
                self.size,
            )
            os.truncate(self._path, self._end)

    def append(self, entry: bytes) -> tuple[int, SignedTreeHead]:
        """Write one entry durably; its index and the new signed tree head."""
        if not self._writer:
            raise LogError("this store was opened read-only")
        if not 0 < len(entry) <= MAX_ENTRY_SIZE:
            raise LogError(f"an entry must be 1..{MAX_ENTRY_SIZE} bytes")
        hashed = leaf_hash(entry)
        record = _LENGTH.pack(len(entry)) + entry + hashed
        with self._path.open("ab") as f:
            try:
                f.write(record)
                f.flush()
                os.fsync(f.fileno())
            except OSError:
                os.truncate(self._path, self._end)
                raise
        self._end += len(record)
        self._entries.append(entry)
        index = self._merkle.append_hash(hashed)
        return index, self.sth()

    def sth(self) -> SignedTreeHead:
        """The signed tree head for the current size, signed when that size was first seen."""
        if self._head is None or self._head.head.size != self.size:
            head = TreeHead(self.size, self._merkle.root(), time.time_ns() // 1_000_000)
            self._head = sign_tree_head(head, self._key)
        return self._head

    def inclusion(self, index: int, size: int) -> list[bytes]:
        return self._merkle.inclusion(index, size)

    def consistency(self, old: int, new: int) -> list[bytes]:
        return self._merkle.consistency(old, new)

    def leaf_hash(self, index: int) -> bytes:
        return self._merkle.leaf_hash(index)

    def entries(self, start: int, end: int) -> list[bytes]:
        """Entries ``start`` (inclusive) to ``end`` (exclusive)."""
        if not 0 <= start <= end <= self.size:
            raise ValueError(f"no entries {start}..{end} in a log of {self.size}")
        return self._entries[start:end]


# ------------------------------------------------------------------------ wire format


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: object) -> bytes:
    if not isinstance(text, str):
        raise ValueError("expected a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError("invalid base64") from None


def sth_to_json(signed: SignedTreeHead) -> dict[str, Any]:
    return {
        "tree_size": signed.head.size,
        "timestamp_ms": signed.head.timestamp_ms,
        "root_hash": b64(signed.head.root),
        "signature": b64(signed.signature),
    }


def sth_from_json(data: object) -> SignedTreeHead:
    """Parse a tree head as served; ``ValueError`` if malformed (a signature is not checked)."""
    if not isinstance(data, dict):
        raise ValueError("a tree head is a JSON object")
    size, ts = data.get("tree_size"), data.get("timestamp_ms")
    if not isinstance(size, int) or not isinstance(ts, int):
        raise ValueError("tree_size and timestamp_ms must be integers")
    head = TreeHead(size, unb64(data.get("root_hash")), ts)
    return SignedTreeHead(head, unb64(data.get("signature")))


# ------------------------------------------------------------------------ HTTP


class _BadParam(Exception):
    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


def _param(request: Request, name: str) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        raise _BadParam(name, "missing")
    if not raw.isdecimal() or len(raw) > 20:
        raise _BadParam(name, "must be a non-negative integer")
    return int(raw)


def _bounds(request: Request, low: str, high: str, size: int) -> tuple[int, int]:
    """Two parameters naming a range of the log: ``low <= high <= size``."""
    lo, hi = _param(request, low), _param(request, high)
    if hi > size:
        raise _BadParam(high, f"must be at most {size}")
    if lo > hi:
        raise _BadParam(low, f"must be at most {high} ({hi})")
    return lo, hi


def _bad(name: str, reason: str) -> JSONResponse:
    return JSONResponse({"error": f"{name}: {reason}", "parameter": name}, status_code=400)


def create_app(store: LogStore) -> Starlette:
    """The read-only HTTP API of ``store``. Handlers are async on purpose: they share the
    store on the event loop's one thread, so ``refresh`` never races itself."""

    async def sth(request: Request) -> JSONResponse:
        store.refresh()
        return JSONResponse(sth_to_json(store.sth()))

    async def inclusion(request: Request) -> JSONResponse:
        store.refresh()
        try:
            index, size = _param(request, "index"), _param(request, "tree_size")
        except _BadParam as e:
            return _bad(e.name, e.reason)
        if not 0 < size <= store.size:
            return _bad("tree_size", f"must be in 1..{store.size}")
        if index >= size:
            return _bad("index", f"must be below tree_size {size}")
        path = store.inclusion(index, size)
        return JSONResponse(
            {"leaf_index": index, "tree_size": size, "inclusion_path": [b64(h) for h in path]}
        )

    async def consistency(request: Request) -> JSONResponse:
        store.refresh()
        try:
            first, second = _bounds(request, "first", "second", store.size)
        except _BadParam as e:
            return _bad(e.name, e.reason)
        return JSONResponse({"consistency": [b64(h) for h in store.consistency(first, second)]})

    async def entries(request: Request) -> JSONResponse:
        store.refresh()
        try:
            start, end = _bounds(request, "start", "end", store.size)
        except _BadParam as e:
            return _bad(e.name, e.reason)
        if end - start > MAX_ENTRIES_PER_REQUEST:
            return _bad("end", f"at most {MAX_ENTRIES_PER_REQUEST} entries per request")
        body = [
            {"leaf_input": b64(entry), "leaf_hash": b64(store.leaf_hash(start + i))}
            for i, entry in enumerate(store.entries(start, end))
        ]
        return JSONResponse({"entries": body})

    return Starlette(
        routes=[
            Route("/log/v1/sth", sth),
            Route("/log/v1/proof/inclusion", inclusion),
            Route("/log/v1/proof/consistency", consistency),
            Route("/log/v1/entries", entries),
        ]
    )
