"""Faults under traffic: the database goes away and comes back (PostgreSQL crashed and
restarted; SQLite locked by another process), an upstream resets its connection in the
middle of a stream. Every request is answered or fails cleanly, and every answered request
is in the ledger exactly once afterwards."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests.support.server import ADMIN_KEY, VeilServer, start_server
from tests.support.services import PG_MISSING, PostgresServer, postgres_bin_dir, start_postgres
from tests.support.upstream import free_port
from veil.ledger.reports import reconcile

HEADERS = {"authorization": f"Bearer {ADMIN_KEY}"}
CONFIG = """
providers:
  - {{name: phone, type: fake, tier: device}}
models:
  - {{name: small, deployments: [{{provider: phone, model: echo}}], price: {{input: 1, output: 2}}}}
metering: {{flush_interval: 0.1}}
{database}
"""


def _ask(server: VeilServer, n: int, stream: bool = False) -> list[str]:
    ids = []
    for i in range(n):
        r = httpx.post(
            server.url + "/v1/chat/completions",
            json={
                "model": "small",
                "messages": [{"role": "user", "content": f"q{i}"}],
                "stream": stream,
            },
            headers=HEADERS,
            timeout=30,
        )
        assert r.status_code == 200, r.text
        ids.append(r.headers["x-request-id"])
    return ids


def _rows(url: str) -> list[str]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return [row[0] for row in conn.execute(text("SELECT id FROM usage"))]
    finally:
        engine.dispose()


def _eventually(check: object, timeout: float = 30.0) -> object:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except Exception:  # the database may still be coming back
            value = None
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own: it is crashed on purpose."""
    if postgres_bin_dir() is None:
        pytest.skip(PG_MISSING)
    pg = start_postgres(durable=True)  # a crash loses no acknowledged commit
    yield pg
    pg.stop()


def test_postgres_crashing_and_restarting_loses_and_doubles_nothing(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    url = own_postgres.url()
    server = start_server(tmp_path / "home", CONFIG.format(database=f"database: {{url: '{url}'}}"))
    try:
        before = _ask(server, 10) + _ask(server, 5, stream=True)
        assert _eventually(lambda: set(before) <= set(_rows(url)))
        own_postgres.halt()
        down = _ask(server, 10) + _ask(server, 5, stream=True)  # answered all the same
        ready = httpx.get(server.url + "/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"] is False
        own_postgres.resume()
        after = _ask(server, 10)
        expected = before + down + after

        def all_written() -> bool:
            return sorted(_rows(url)) == sorted(expected)

        assert _eventually(all_written, 60), (len(_rows(url)), len(expected))
        engine = create_engine(url, poolclass=NullPool)
        try:
            check = reconcile(engine)
        finally:
            engine.dispose()
        assert check.ok, check.to_dict("USD")
        assert "Traceback" not in server.log
    finally:
        server.stop()


def test_a_locked_sqlite_database_delays_rows_and_loses_none(tmp_path: Path) -> None:
    server = start_server(tmp_path / "home", CONFIG.format(database=""))
    db = server.home / "veil.db"
    try:
        first = _ask(server, 5)
        assert _eventually(lambda: set(first) <= set(_rows(f"sqlite:///{db}")))
        lock = sqlite3.connect(db, isolation_level=None, timeout=5)
        lock.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        try:
            held = _ask(server, 10) + _ask(server, 5, stream=True)
            time.sleep(1.0)  # several flush intervals pass while it is locked
        finally:
            lock.execute("COMMIT")
            lock.close()
        expected = first + held
        assert _eventually(lambda: sorted(_rows(f"sqlite:///{db}")) == sorted(expected), 60)
        engine = create_engine(f"sqlite:///{db}", poolclass=NullPool)
        try:
            assert reconcile(engine).ok
        finally:
            engine.dispose()
    finally:
        server.stop()


class ResettingUpstream:
    """Speaks just enough HTTP to start an OpenAI stream, sends ``tokens`` chunks, then
    resets the connection (RST, not a clean close)."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.port = free_port()
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"transfer-encoding: chunked\r\n\r\n"
                )
                for i in range(self.tokens):
                    event = (
                        b'data: {"id":"x","object":"chat.completion.chunk","created":1,'
                        b'"model":"m","choices":[{"index":0,"delta":{"content":"w%d "},'
                        b'"finish_reason":null}]}\n\n' % i
                    )
                    conn.sendall(b"%x\r\n%s\r\n" % (len(event), event))
                conn.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )

    def close(self) -> None:
        self._sock.close()


@pytest.mark.parametrize("tokens", [0, 3])
def test_an_upstream_reset_mid_stream_fails_cleanly_or_fails_over(
    tmp_path: Path, tokens: int
) -> None:
    bad = ResettingUpstream(tokens)
    config = f"""
providers:
  - {{name: phone, type: fake, tier: device}}
  - {{name: flaky, type: openai_compatible, base_url: "{bad.base_url}"}}
models:
  - {{name: small, deployments: [{{provider: phone, model: echo}}]}}
  - {{name: remote, deployments: [{{provider: flaky, model: m}}], fallbacks: [small]}}
routing: {{retries: {{attempts: 0}}}}
"""
    server = start_server(tmp_path / "home", config)
    try:
        with httpx.stream(
            "POST",
            server.url + "/v1/chat/completions",
            json={
                "model": "remote",
                "messages": [{"role": "user", "content": "hi"}],
                "stream": True,
            },
            headers=HEADERS,
            timeout=30,
        ) as r:
            body = r.read().decode()
        assert r.status_code == 200
        if tokens == 0:  # nothing was sent yet: it failed over to the device, invisibly
            assert r.headers["x-veil-provider"] == "phone"
            assert "hi" in body
            assert body.rstrip().endswith("data: [DONE]")
        else:  # the answer had started: it ends with an error event, never a hang
            events = [e.removeprefix("data: ") for e in body.split("\n\n") if e]
            text = "".join(
                (c.get("delta") or {}).get("content") or ""
                for e in events[:-1]
                for c in json.loads(e).get("choices", ())
            )
            assert text == "w0 w1 w2 "
            assert "error" in json.loads(events[-1])
            assert "[DONE]" not in body
        assert httpx.get(server.url + "/healthz").status_code == 200
        assert "Traceback" not in server.log
    finally:
        server.stop()
        bad.close()
