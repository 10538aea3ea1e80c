"""A closed-loop HTTP/1.1 load generator, run in its own process.

``python bench/_load.py SPEC_JSON`` opens ``concurrency`` keep-alive connections, and each
sends the same pre-encoded request again as soon as the previous answer is complete. It
warms up, measures for ``duration`` seconds, and prints one JSON object with the figures.

On a 2-core machine the client competes with the servers it measures, so it is written to
cost little per request: uvloop, protocol callbacks instead of tasks and streams, and
httptools (llhttp) to find the end of each answer, whether sized by Content-Length or chunked.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

import httptools
import uvloop

from _procs import cpu_seconds

_GRACE_SECONDS = 10.0
_RECONNECT_DELAY = 0.05
_SAMPLE_BYTES = 4096


@dataclass(frozen=True)
class Spec:
    port: int
    path: str
    body: str
    concurrency: int
    warmup: float
    duration: float
    headers: dict[str, str] = field(default_factory=dict)
    #: Processes whose CPU use over the measured window is reported, by label.
    watch: dict[str, int] = field(default_factory=dict)

    def request(self) -> bytes:
        body = self.body.encode()
        head = [
            f"POST {self.path} HTTP/1.1",
            f"host: 127.0.0.1:{self.port}",
            "content-type: application/json",
            f"content-length: {len(body)}",
            *(f"{k}: {v}" for k, v in self.headers.items()),
        ]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class _Run:
    """State shared by all connections of one measurement."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.request = spec.request()
        self.loop = asyncio.get_running_loop()
        self.measuring = False
        self.stopping = False
        self.latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.failures: Counter[str] = Counter()
        self.sample: bytes | None = None
        self.error_sample: str | None = None
        self.clients: set[_Client] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.all_closed = self.loop.create_future()
        self.window = (0.0, 0.0)
        self.cpu: dict[str, list[float | None]] = {}

    def begin(self) -> None:
        self.window = (time.perf_counter(), 0.0)
        self.cpu = {name: [_cpu(name, pid)] for name, pid in self._watched().items()}
        self.measuring = True

    def finish(self) -> None:
        self.measuring = False
        self.stopping = True
        self.window = (self.window[0], time.perf_counter())
        for name, pid in self._watched().items():
            self.cpu[name].append(_cpu(name, pid))
        for client in list(self.clients):
            client.close_if_idle()
        self._check_all_closed()

    def _watched(self) -> dict[str, int]:
        return {"client": 0, **self.spec.watch}

    def record(self, t0: float, t1: float, status: int) -> None:
        if self.measuring:
            self.statuses[status] += 1
            if status == 200:
                self.latencies.append(t1 - t0)

    def record_failure(self, reason: str) -> None:
        if self.measuring:
            self.failures[reason] += 1

    async def connect(self) -> None:
        while not self.stopping:
            try:
                await self.loop.create_connection(
                    lambda: _Client(self), "127.0.0.1", self.spec.port
                )
                return
            except OSError as exc:
                self.record_failure(f"connect: {exc.strerror or exc}")
                await asyncio.sleep(_RECONNECT_DELAY)
        self._check_all_closed()

    def closed(self, client: _Client) -> None:
        self.clients.discard(client)
        if self.stopping:
            self._check_all_closed()
        else:
            # The loop keeps only weak references to tasks.
            task = self.loop.create_task(self.connect())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _check_all_closed(self) -> None:
        if self.stopping and not self.clients and not self.all_closed.done():
            self.all_closed.set_result(None)


def _cpu(name: str, pid: int) -> float | None:
    return time.process_time() if name == "client" else cpu_seconds(pid)


class _Client(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self, run: _Run) -> None:
        self._run = run
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._t0 = 0.0
        self._busy = False
        self._body: bytearray | None = None
        run.clients.add(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but have its methods.
        self._transport = cast(asyncio.Transport, transport)
        self._send()

    def _send(self) -> None:
        assert self._transport is not None
        if self._run.stopping:
            self._transport.close()
            return
        self._busy = True
        self._t0 = time.perf_counter()
        self._transport.write(self._run.request)

    def close_if_idle(self) -> None:
        if not self._busy and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._run.record_failure(f"bad response: {exc}")
            self._busy = False
            assert self._transport is not None
            self._transport.close()

    def on_headers_complete(self) -> None:
        # Keep one body of each kind, to show what an error said and to let the caller check
        # that a 200 really carried a completion; copying every body would cost too much.
        status = self._parser.get_status_code()
        want = self._run.error_sample is None if status != 200 else self._run.sample is None
        self._body = bytearray() if want else None

    def on_body(self, body: bytes) -> None:
        if self._body is not None and len(self._body) < _SAMPLE_BYTES:
            self._body += body

    def on_message_complete(self) -> None:
        t1 = time.perf_counter()
        self._busy = False
        status = self._parser.get_status_code()
        self._run.record(self._t0, t1, status)
        if self._body is not None:
            if status == 200:
                self._run.sample = bytes(self._body)
            else:
                text = self._body.decode(errors="replace")
                self._run.error_sample = f"{status}: {text[:300]}"
            self._body = None
        if self._parser.should_keep_alive():
            self._send()
        else:
            assert self._transport is not None
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._busy:
            self._busy = False
            self._run.record_failure("connection lost mid-request")
        self._run.closed(self)


async def _measure(spec: Spec) -> dict[str, Any]:
    run = _Run(spec)
    for _ in range(spec.concurrency):
        await run.connect()
    run.loop.call_later(spec.warmup, run.begin)
    run.loop.call_later(spec.warmup + spec.duration, run.finish)
    await asyncio.sleep(spec.warmup + spec.duration)
    try:
        await asyncio.wait_for(asyncio.shield(run.all_closed), _GRACE_SECONDS)
    except TimeoutError:
        run.failures["no answer within the grace period"] += len(run.clients)
        for client in list(run.clients):
            client.abort()
    return _report(run)


def _report(run: _Run) -> dict[str, Any]:
    elapsed = run.window[1] - run.window[0]
    lat = sorted(run.latencies)
    errors = sum(n for status, n in run.statuses.items() if status != 200)
    errors += sum(run.failures.values())
    cpu: dict[str, float | None] = {}
    for name, (before, after) in run.cpu.items():
        cpu[name] = None if before is None or after is None else (after - before) / elapsed
    return {
        "ok": len(lat),
        "errors": errors,
        "elapsed": elapsed,
        "rps": len(lat) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": _percentile(lat, 0.50) * 1e3,
        "p90_ms": _percentile(lat, 0.90) * 1e3,
        "p99_ms": _percentile(lat, 0.99) * 1e3,
        "statuses": {str(k): v for k, v in sorted(run.statuses.items())},
        "failures": dict(run.failures),
        "error_sample": run.error_sample,
        "sample": run.sample.decode(errors="replace") if run.sample is not None else None,
        "cpu": cpu,
    }


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN when nothing was measured."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def main() -> None:
    spec = Spec(**json.loads(sys.argv[1]))
    print(json.dumps(uvloop.run(_measure(spec))), flush=True)


if __name__ == "__main__":
    main()
