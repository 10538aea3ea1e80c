"""Child processes of the benchmark: start them, wait until they serve, never leave one behind."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A step of the benchmark could not be carried out; the message says which and why."""


class Children:
    """Every process the benchmark starts; leaving the ``with`` block stops them all.

    Each child gets its own session, so Ctrl-C in the terminal reaches only the benchmark,
    which then stops the children in order, and stopping a child also stops whatever it
    started (a server's workers) because the whole process group is signalled.
    """

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def spawn(
        self,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        stdout_pipe: bool = False,
    ) -> subprocess.Popen[bytes]:
        out = log.open("wb") if log is not None else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(
                args,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else out,
                stderr=out,
                start_new_session=True,
            )
        finally:
            if log is not None and not isinstance(out, int):
                out.close()
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc in self._procs:
            self._procs.remove(proc)
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        else:
            # The leader is gone, but what it started may not be.
            _signal_group(proc.pid, signal.SIGKILL)
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for proc in reversed(list(self._procs)):
            self.stop(proc)


def finish(
    results: dict[str, Any], problems: list[str], json_path: str | None, started: float
) -> int:
    """End a benchmark run: write ``results`` as JSON if asked, print the total time and
    each problem; the exit code is 1 if anything could not be measured."""
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\ntotal time {time.monotonic() - started:.0f} s")
    for problem in problems:
        print(f"\nFAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def free_port() -> int:
    # Racy in theory (another process may take it before the server binds), fine on a
    # machine that runs nothing else.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_status(port: int, path: str, timeout: float = 2.0) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def wait_ready(
    proc: subprocess.Popen[bytes],
    port: int,
    path: str,
    timeout: float,
    log: Path | None,
) -> None:
    """Poll ``GET path`` until it answers 200; fail early if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"exited with code {proc.returncode} before it was ready{_tail(log)}")
        if http_status(port, path) == 200:
            return
        time.sleep(0.1)
    raise BenchError(f"GET {path} did not answer 200 within {timeout:.0f} s{_tail(log)}")


def _tail(log: Path | None, lines: int = 25) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").strip().splitlines()[-lines:]
    return "\n  last lines of its log:\n    " + "\n    ".join(text) if text else ""


def cpu_seconds(pid: int) -> float | None:
    """CPU time used so far by ``pid`` and its live descendants; ``None`` if ``pid`` is gone."""
    root = _own_cpu_seconds(pid)
    if root is None:
        return None
    total, stack = root, _children(pid)
    while stack:
        child = stack.pop()
        # A descendant may exit between the two reads; it then simply no longer counts.
        total += _own_cpu_seconds(child) or 0.0
        stack.extend(_children(child))
    return total


def _own_cpu_seconds(pid: int) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces; the fields after its ')' do not.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found.extend(int(c) for c in (task / "children").read_text().split())
    except OSError:
        pass
    return found


def start_upstream(children: Children, tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The minimal OpenAI-compatible upstream (``_upstream.py``), ready: its process and port."""
    log = tmp / "upstream.log"
    proc = children.spawn(
        [sys.executable, str(Path(__file__).with_name("_upstream.py"))], log=log, stdout_pipe=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if not line.isdigit():
        raise BenchError(f"the upstream did not start; see {log}")
    port = int(line)
    wait_ready(proc, port, "/health", 10.0, log)
    return proc, port


def start_veil(
    children: Children, tmp: Path, name: str, config: str | None, key: str
) -> tuple[subprocess.Popen[bytes], int]:
    """``veil serve`` with ``config`` (YAML text; ``None``: the embedded defaults), its own
    ``VEIL_HOME`` and ``key`` as the admin key, ready: its process and port."""
    exe = Path(sys.executable).parent / "veil"
    if not exe.exists():
        raise BenchError(f"{exe} does not exist: install the project (pip install -e .)")
    home = tmp / f"home-{name}"
    home.mkdir(exist_ok=True)
    port = free_port()
    cmd = [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port)]
    if config is not None:
        path = tmp / f"{name}.yaml"
        path.write_text(config)
        cmd[2:2] = ["--config", str(path)]
    log = tmp / f"{name}.log"
    proc = children.spawn(
        cmd, env={**os.environ, "VEIL_HOME": str(home), "VEIL_ADMIN_KEY": key}, log=log
    )
    try:
        wait_ready(proc, port, "/readyz", 120.0, log)
    except BenchError as exc:
        raise BenchError(f"`{' '.join(cmd)}` {exc}") from None
    return proc, port


def run_load(children: Children, tmp: Path, spec: dict[str, Any]) -> dict[str, Any]:
    """One run of the load generator (``_load.py``) with ``spec``; its figures."""
    log = tmp / "load.log"
    proc = children.spawn(
        [sys.executable, str(Path(__file__).with_name("_load.py")), json.dumps(spec)],
        log=log,
        stdout_pipe=True,
    )
    try:
        out, _ = proc.communicate(timeout=spec["warmup"] + spec["duration"] + 60)
    except subprocess.TimeoutExpired:
        raise BenchError(f"the load generator did not finish; see {log}") from None
    finally:
        children.stop(proc)
    if proc.returncode != 0 or not out.strip():
        raise BenchError(f"the load generator failed:\n{log.read_text()[-2000:]}")
    figures: dict[str, Any] = json.loads(out)
    return figures
