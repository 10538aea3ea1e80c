"""The private-node set-up of ``private_node.py``: a release in a transparency log, nodes, a
gateway in front of them — each started the way an operator would, with the ``veil`` CLI.

``veil node keygen`` makes one identity key (both nodes run on this one host), ``veil node
measure`` prints each node's measurement, ``veil log append`` publishes it and ``veil log
serve`` serves the log; ``veil node serve`` runs the nodes and ``veil serve`` the gateway.
``NodeThread`` serves an in-process ``Node`` (the class ``veil node serve`` runs) on a thread,
for the part that must hold the node's boot keys.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import uvicorn

from _procs import BenchError, Children, cpu_seconds, free_port, wait_ready
from veil import __version__
from veil.node.server import Node

HERE = Path(__file__).resolve().parent
READY_TIMEOUT = 120.0
VEIL = Path(sys.executable).parent / "veil"


@dataclass(frozen=True)
class Service:
    name: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Stack:
    """The processes of one run, under ``tmp``; ``children`` stops them all at the end."""

    def __init__(self, tmp: Path, children: Children, admin_key: str) -> None:
        if not VEIL.exists():
            raise BenchError(f"{VEIL} does not exist: install the project (pip install -e .)")
        self.tmp = tmp
        self.children = children
        self.admin_key = admin_key
        self.log_dir = tmp / "log"
        self.identity = tmp / "node-identity"
        # Nothing from the caller's own Veil set-up (VEIL_HOME, keys) reaches a child.
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("VEIL_")}
        self.identity_public = self.veil("node", "keygen", "--identity", str(self.identity))

    def veil(self, *args: str) -> str:
        """Run a short ``veil`` command; its standard output, stripped."""
        try:
            done = subprocess.run(
                [str(VEIL), *args],
                env=self._env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=120,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise BenchError(f"`veil {' '.join(args)}` did not finish in 120 s") from None
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace").strip()[-1500:]
            raise BenchError(f"`veil {' '.join(args)}` exited {done.returncode}:\n{tail}")
        return done.stdout.decode().strip()

    def publish(self, *node_options: str) -> str:
        """Measure a node with these options and append the release to the log."""
        measurement = self.veil("node", "measure", "-q", *node_options)
        self.veil(
            "log", "append", "--dir", str(self.log_dir), "--measurement", measurement,
            "--name", "veil-node", "--version", __version__,
        )  # fmt: skip
        return measurement

    @property
    def log_public_key(self) -> str:
        return (self.log_dir / "log_key.pub").read_text().strip()

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Service:
        port = free_port()
        proc = self.children.spawn(
            [*args, "--port", str(port)], env=env or self._env, log=self.tmp / f"{name}.log"
        )
        return Service(name, port, proc)

    def start_log(self) -> Service:
        return self._spawn("log", [str(VEIL), "log", "serve", "--dir", str(self.log_dir)])

    def start_upstream(self, port: int) -> Service:
        """The stand-in model server of ``overhead.py`` (``_upstream.py``), on ``port``."""
        log = self.tmp / "upstream.log"
        proc = self.children.spawn([sys.executable, str(HERE / "_upstream.py"), str(port)], log=log)
        return Service("upstream", port, proc)

    def start_node(self, name: str, *node_options: str) -> Service:
        args = [str(VEIL), "node", "serve", "--identity", str(self.identity), *node_options]
        return self._spawn(name, args)

    def start_gateway(self, config: str) -> Service:
        path = self.tmp / "veil.yaml"
        path.write_text(config)
        home = self.tmp / "home"
        home.mkdir(exist_ok=True)
        env = {**self._env, "VEIL_HOME": str(home), "VEIL_ADMIN_KEY": self.admin_key}
        args = [str(VEIL), "serve", "--config", str(path), "--host", "127.0.0.1"]
        return self._spawn("gateway", args, env)

    def ready(self, service: Service, path: str) -> None:
        try:
            wait_ready(
                service.proc, service.port, path, READY_TIMEOUT, self.tmp / f"{service.name}.log"
            )
        except BenchError as exc:
            raise BenchError(f"{service.name}: {exc}") from None


def settle(services: list[Service], timeout: float = 60.0, window: float = 0.5) -> float:
    """Wait until ``services`` together use under a tenth of a core (a gateway's metering
    writer may still be catching up); the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = sum(cpu_seconds(s.proc.pid) or 0.0 for s in services)
        time.sleep(window)
        if sum(cpu_seconds(s.proc.pid) or 0.0 for s in services) - before < 0.1 * window:
            break
    return time.monotonic() - started


class NodeThread:
    """``node`` served by uvicorn on a thread of this process, while the ``with`` lasts."""

    def __init__(self, node: Node) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            node.app(), host="127.0.0.1", port=self.port, log_level="warning", access_log=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="bench-node", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise BenchError("the in-process node did not start")
            time.sleep(0.02)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.should_exit = True
        self._thread.join(10)
