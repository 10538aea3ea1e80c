"""Run ``veil serve`` as a real subprocess for end-to-end tests."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import sqlalchemy
from sqlalchemy import RowMapping
from sqlalchemy.pool import NullPool

from tests.support.upstream import free_port

ADMIN_KEY = "veil-test-admin-key-0123456789abcdefghijkl"


@dataclass
class VeilServer:
    home: Path
    port: int
    log_path: Path
    process: subprocess.Popen[bytes]
    log_file: IO[bytes]
    admin_key: str | None = ADMIN_KEY

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log_file.close()


def start_server(
    home: Path,
    config: str | None = None,
    *,
    admin_key: str | None = ADMIN_KEY,
    env: dict[str, str] | None = None,
    wait: bool = True,
) -> VeilServer:
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [sys.executable, "-m", "veil", "serve", "--port", str(port)]
    if config is not None:
        path = home.parent / f"{home.name}-config.yaml"
        path.write_text(config)
        args += ["--config", str(path)]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")}
    full_env["VEIL_HOME"] = str(home)
    if admin_key is not None:
        full_env["VEIL_ADMIN_KEY"] = admin_key
    full_env.update(env or {})
    log_path = home.parent / f"{home.name}-server.log"
    log = log_path.open("wb")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    server = VeilServer(home, port, log_path, process, log, admin_key)
    if wait:
        wait_ready(server)
    return server


def wait_ready(server: VeilServer, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            server.stop()
            raise RuntimeError(f"veil serve exited with {server.process.returncode}:\n{server.log}")
        try:
            if httpx.get(server.url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"veil serve was not ready in {timeout}s:\n{server.log}")


def usage_row(
    server: VeilServer, request_id: str, url: str | None = None
) -> sqlite3.Row | RowMapping:
    """The usage row of a request, once the background writer has flushed it: from the
    database at SQLAlchemy ``url`` when given, else from the server's own SQLite file.
    Either way the row's columns read as ``row["name"]``."""
    if url is not None:
        return _usage_row_at(url, request_id)
    for _ in range(100):
        with sqlite3.connect(server.home / "veil.db") as conn:
            conn.row_factory = sqlite3.Row
            row = conn.execute("SELECT * FROM usage WHERE id = ?", (request_id,)).fetchone()
        if row is not None:
            return row  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError(f"no usage row for {request_id}")


def _usage_row_at(url: str, request_id: str) -> RowMapping:
    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    query = sqlalchemy.text("SELECT * FROM usage WHERE id = :id")
    try:
        for _ in range(100):
            with engine.connect() as conn:
                row = conn.execute(query, {"id": request_id}).mappings().first()
            if row is not None:
                return row
            time.sleep(0.05)
    finally:
        engine.dispose()
    raise AssertionError(f"no usage row for {request_id}")


def key_for(server: VeilServer, tenant: str, user: str | None = None) -> str:
    """A new API key for ``tenant`` (and ``user``), issued through the admin API."""
    body: dict[str, Any] = {"tenant": tenant} | ({"user": user} if user else {})
    r = httpx.post(
        server.url + "/admin/keys", headers={"authorization": f"Bearer {ADMIN_KEY}"}, json=body
    )
    assert r.status_code == 201, r.text
    return str(r.json()["key"])
