"""Throwaway PostgreSQL and Redis servers, started from the installed binaries.

Each server lives in its own temporary directory, listens on a free loopback port, keeps
nothing durable (no fsync, no snapshots) and is gone at the end of the session. A small
watchdog process ends it too if the test process dies without cleaning up (say, SIGKILL).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg import sql

from tests.support.upstream import free_port

PG_MISSING = (
    "PostgreSQL not installed (postgres/initdb not found on PATH or in /usr/lib/postgresql/*/bin)"
)
REDIS_MISSING = "Redis not installed (redis-server not found on PATH)"
#: The superuser initdb creates; it needs no password (trust, loopback only).
PG_USER = "veil"
PG_DATABASE = "veil"

# Reads stdin until EOF (the test process closed it, or died), then ends the server and
# removes its directory.
_WATCHDOG = """
import os, shutil, signal, sys, time
pid, sig, base = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

def alive():
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False

sys.stdin.buffer.read()
for s in (sig, signal.SIGKILL):
    if alive():
        os.kill(pid, s)
    for _ in range(100):
        if not alive():
            break
        time.sleep(0.1)
shutil.rmtree(base, ignore_errors=True)
"""


def postgres_bin_dir() -> Path | None:
    """The directory holding ``postgres`` and ``initdb``: PATH first, then Debian's
    ``/usr/lib/postgresql/<version>/bin``, newest version first."""
    candidates: list[Path] = []
    if found := shutil.which("postgres"):
        candidates += [Path(found).parent, Path(found).resolve().parent]
    candidates += sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)],
        reverse=True,
    )
    for folder in candidates:
        if (folder / "postgres").is_file() and (folder / "initdb").is_file():
            return folder
    return None


def redis_binary() -> Path | None:
    found = shutil.which("redis-server")
    return Path(found) if found else None


@dataclass
class _Account:
    """Who runs the server: PostgreSQL refuses root, so root hands it to another user."""

    uid: int | None = None
    gid: int | None = None

    @classmethod
    def for_postgres(cls) -> _Account:
        if os.geteuid() != 0:
            return cls()
        for name in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                entry = pwd.getpwnam(name)
                return cls(entry.pw_uid, entry.pw_gid)
        raise RuntimeError("running as root and neither a postgres nor a nobody user exists")

    def own(self, path: Path) -> None:
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)

    def popen(self, args: list[str], *, cwd: Path, log: IO[bytes]) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        return subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            user=self.uid,
            group=self.gid,
            extra_groups=None if self.uid is None else [],
        )


@dataclass
class _Service:
    """A server process, its log and its watchdog; ``stop`` is safe to call twice."""

    name: str
    base: Path
    log_path: Path
    stop_signal: signal.Signals
    process: subprocess.Popen[bytes] | None = None
    watchdog: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None
    started_in: float = 0.0

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def open_log(self) -> IO[bytes]:
        self._log = self.log_path.open("ab")
        return self._log

    def launch(self, account: _Account, args: list[str]) -> None:
        self.process = account.popen(args, cwd=self.base, log=self.open_log())
        self.watchdog = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WATCHDOG,
                str(self.process.pid),
                str(int(self.stop_signal)),
                str(self.base),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        atexit.register(self.stop)

    def halt(self) -> None:
        """Stop the server the way a crash would (its stop signal), keeping its files, so
        that ``launch`` can start it again on the same data."""
        if self.watchdog is not None:
            self.watchdog.kill()
            self.watchdog.wait()
            assert self.watchdog.stdin is not None
            self.watchdog.stdin.close()
            self.watchdog = None
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(self.stop_signal)
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(10)
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
            )

    def stop(self) -> None:
        self.halt()
        shutil.rmtree(self.base, ignore_errors=True)
        atexit.unregister(self.stop)


def _wait(service: _Service, ready: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        service.check_alive()
        if ready():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{service.name} not ready in {timeout}s:\n{service.log_tail()}")
        time.sleep(0.05)


# ------------------------------------------------------------------------ PostgreSQL


@dataclass
class PostgresServer:
    port: int
    service: _Service
    account: _Account | None = None
    command: list[str] = field(default_factory=list)

    def url(self, database: str = PG_DATABASE) -> str:
        """A SQLAlchemy URL for ``database`` on this server (psycopg 3 driver)."""
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def _admin(self) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=PG_USER,
            dbname="postgres",
            autocommit=True,
            connect_timeout=5,
        )

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (``veil_<random>`` unless named) and return its name."""
        name = name or f"veil_{secrets.token_hex(6)}"
        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, closing any connection still open to it."""
        with self._admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def accepts_connections(self) -> bool:
        try:
            self._admin().close()
        except psycopg.OperationalError:
            return False
        return True

    def stop(self) -> None:
        self.service.stop()

    def halt(self) -> None:
        """Down, as if it crashed (immediate shutdown); ``resume`` brings it back."""
        self.service.halt()

    def resume(self, timeout: float = 60) -> None:
        assert self.account is not None
        self.service.launch(self.account, self.command)
        _wait(self.service, self.accepts_connections, timeout)


def start_postgres(timeout: float = 60, durable: bool = False) -> PostgresServer:
    """initdb into a new temporary directory, then run ``postgres`` on a free loopback port.

    Commits are asynchronous unless ``durable``: fast, but a crash (``halt``) then loses
    the last fraction of a second of commits it already acknowledged, as a real server
    configured that way would.

    Raises ``FileNotFoundError`` with ``PG_MISSING`` when the binaries are not installed.
    """
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError(PG_MISSING)
    began = time.monotonic()
    account = _Account.for_postgres()
    # Not under pytest's own tmp dir: that is mode 0700 for root, closed to the postgres user.
    base = Path(tempfile.mkdtemp(prefix="veil-pg-"))
    account.own(base)
    data = base / "data"
    service = _Service("postgres", base, base / "postgres.log", signal.SIGQUIT)
    try:
        with service.open_log() as log:
            initdb = account.popen(
                [
                    str(bin_dir / "initdb"),
                    f"--pgdata={data}",
                    f"--username={PG_USER}",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                cwd=base,
                log=log,
            )
            if initdb.wait(120) != 0:
                raise RuntimeError(f"initdb failed ({initdb.returncode}):\n{service.log_tail()}")
        port = free_port()
        command = [
            str(bin_dir / "postgres"),
            "-D",
            str(data),
            "-k",
            str(base),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=" + ("on" if durable else "off"),
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=200",
        ]
        service.launch(account, command)
        server = PostgresServer(port, service, account, command)
        _wait(service, server.accepts_connections, timeout)
        server.create_database(PG_DATABASE)
    except BaseException:
        service.stop()
        raise
    service.started_in = time.monotonic() - began
    return server


# ------------------------------------------------------------------------ Redis


@dataclass
class RedisServer:
    port: int
    service: _Service

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, *words: str) -> bytes:
        """Send one inline command and return the first line of the reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(" ".join(words).encode() + b"\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        return reply.strip()

    def flushdb(self) -> None:
        reply = self.command("FLUSHDB")
        if reply != b"+OK":
            raise RuntimeError(f"FLUSHDB answered {reply!r}")

    def answers_ping(self) -> bool:
        try:
            return self.command("PING") == b"+PONG"
        except OSError:
            return False

    def stop(self) -> None:
        self.service.stop()


def start_redis(timeout: float = 30) -> RedisServer:
    """Run ``redis-server`` on a free loopback port, with no persistence at all.

    Raises ``FileNotFoundError`` with ``REDIS_MISSING`` when it is not installed.
    """
    binary = redis_binary()
    if binary is None:
        raise FileNotFoundError(REDIS_MISSING)
    began = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="veil-redis-"))
    service = _Service("redis-server", base, base / "redis.log", signal.SIGTERM)
    port = free_port()
    try:
        service.launch(
            _Account(),
            [
                str(binary),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(base),
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
        )
        server = RedisServer(port, service)
        _wait(service, server.answers_ping, timeout)
    except BaseException:
        service.stop()
        raise
    service.started_in = time.monotonic() - began
    return server
