"""Real parts for the private-node tests: ``veil log serve`` and ``veil node serve`` as
subprocesses, a TCP tap that records every byte between gateway and node, and a stand-in
node that serves a crafted attestation document."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
from aiohttp import web

from tests.support.local import LocalServer, free_port
from veil.attestation.document import Attestation, SignedAttestation
from veil.attestation.log import LogStore, measurement_entry


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")}
    env.update(extra)
    return env


@dataclass
class Proc:
    """A ``veil`` subprocess with its output in a file."""

    process: subprocess.Popen[bytes]
    port: int
    out_path: Path
    out: IO[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output(self) -> str:
        self.out.flush()
        return self.out_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.out.close()


def _spawn(args: list[str], out_path: Path, port: int, ready: str, **kw: Any) -> Proc:
    out = out_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "veil", *args], stdout=out, stderr=subprocess.STDOUT, **kw
    )
    proc = Proc(process, port, out_path, out)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            proc.stop()
            raise RuntimeError(f"veil {args[:2]} exited {process.returncode}:\n{proc.output}")
        try:
            if httpx.get(proc.url + ready, timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.stop()
    raise RuntimeError(f"veil {args[:2]} was not ready:\n{proc.output}")


def append(directory: Path, measurement: str, version: str = "1.0") -> None:
    with LogStore(directory) as store:
        store.append(measurement_entry(measurement, "veil-node", version))


def log_key(directory: Path) -> str:
    with LogStore(directory, writer=False) as store:
        return store.public_key.public_bytes_raw().hex()


def serve_log(directory: Path, port: int | None = None) -> Proc:
    port = port or free_port()
    args = ["log", "serve", "--dir", str(directory), "--port", str(port)]
    return _spawn(args, directory.parent / f"{directory.name}.out", port, "/log/v1/sth", env=_env())


def keygen(path: Path) -> str:
    """Make an identity key file; its public key, hex."""
    done = subprocess.run(
        [sys.executable, "-m", "veil", "node", "keygen", "--identity", str(path)],
        capture_output=True,
        text=True,
        env=_env(),
        check=True,
    )
    return done.stdout.strip()


def node_args(upstream: str, weights: Path) -> list[str]:
    return ["--upstream", upstream, "--upstream-model", "echo", "--model", str(weights)]


def measure(upstream: str, weights: Path, *extra: str) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "veil",
            "node",
            "measure",
            "-q",
            *node_args(upstream, weights),
            *extra,
        ],
        capture_output=True,
        text=True,
        env=_env(),
        check=True,
    )
    return done.stdout.strip()


@dataclass
class Node:
    proc: Proc
    #: The node's working directory, HOME and TMPDIR: it must stay empty.
    root: Path
    measurement: str


def serve_node(
    tmp: Path,
    name: str,
    identity: Path,
    mode: list[str],
    *,
    port: int | None = None,
    **env: str,
) -> Node:
    """``mode``: ``node_args(upstream, weights)``, or ``["--model", "bundled"]``."""
    root = tmp / f"{name}-root"
    root.mkdir()
    port = port or free_port()
    args = ["node", "serve", "--identity", str(identity), "--port", str(port)]
    proc = _spawn(
        [*args, *mode],
        tmp / f"{name}.out",
        port,
        "/node/v1/health",
        cwd=root,
        env=_env(HOME=str(root), TMPDIR=str(root), **env),
    )
    banner = proc.output
    measurement = banner.split("measurement", 1)[1].split()[0]
    return Node(proc, root, measurement)


def open_for_writing(pid: int) -> list[str]:
    """Regular files the process holds open for writing (from /proc), besides its stdout
    and stderr (its log, which the tests read for content)."""
    found = []
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        if fd.name in ("1", "2"):
            continue
        try:
            target = os.readlink(fd)
            flags = int(
                (Path(f"/proc/{pid}/fdinfo") / fd.name).read_text().split("flags:")[1].split()[0],
                8,
            )
        except OSError:
            continue
        if target.startswith("/") and os.path.isfile(target) and flags & (os.O_WRONLY | os.O_RDWR):
            found.append(target)
    return found


class TcpTap:
    """A TCP relay to ``target_port`` recording every byte in both directions."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self.up = bytearray()  # gateway → node
        self.down = bytearray()  # node → gateway
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, server, self.up), daemon=True).start()
            threading.Thread(
                target=self._pipe, args=(server, client, self.down), daemon=True
            ).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, into: bytearray) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    into += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def wire(self) -> bytes:
        with self._lock:
            return bytes(self.up) + bytes(self.down)

    def posts(self) -> int:
        with self._lock:
            return bytes(self.up).count(b"POST /node/v1/chat")

    def close(self) -> None:
        self._closed = True
        self._listener.close()


def first_sealed_request(up: bytes) -> tuple[dict[str, str], bytes]:
    """Headers and body of the first ``POST /node/v1/chat`` in a tapped byte stream."""
    start = up.index(b"POST /node/v1/chat")
    head_end = up.index(b"\r\n\r\n", start)
    lines = up[start:head_end].decode("latin-1").split("\r\n")[1:]
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    length = int(headers["content-length"])
    body = up[head_end + 4 : head_end + 4 + length]
    return headers, body


@dataclass
class StandInNode(LocalServer):
    """Serves a crafted attestation and counts chat requests (which it never answers)."""

    document: Callable[[], SignedAttestation] = field(default=lambda: SignedAttestation(b"", b""))
    chats: int = 0

    def __post_init__(self) -> None:
        super().__init__()

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/node/v1/attestation", self._attestation)
        app.router.add_post("/node/v1/chat", self._chat)

    async def _attestation(self, request: web.Request) -> web.Response:
        return web.json_response(self.document().to_json())

    async def _chat(self, request: web.Request) -> web.Response:
        self.chats += 1
        return web.json_response({"error": {"code": "key_rejected"}}, status=400)


def document(
    measurement: str,
    key: Any,
    *,
    keys: dict[str, bytes] | None = None,
    issued_ms: int | None = None,
    lifetime_ms: int = 3_600_000,
) -> Attestation:
    """An attestation document as a node would make it (boot keys are random bytes here
    unless given: the stand-in never opens anything)."""
    now = int(time.time() * 1000) if issued_ms is None else issued_ms
    from veil.attestation.document import BootKeys

    return Attestation(
        node="stand-in",
        model="echo",
        measurement=measurement,
        keys=keys or BootKeys().public(),
        boot_ms=now,
        issued_ms=now,
        expires_ms=now + lifetime_ms,
        identity=key.public_key().public_bytes_raw().hex(),
    )


def fake_measurement(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()
