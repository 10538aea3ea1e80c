"""What tracing costs a request: the spans of one chat request (the root and the eight
stages of a partner request), made the way the pipeline makes them, with tracing off and on.

Run from the repository root::

    .venv/bin/python bench/tracing.py [--requests N]

"On" uses the real SDK set up as ``veil.tracing.Tracing`` does (batch processor, OTLP/HTTP
exporter) exporting to a minimal collector in another process (it reads each batch and
answers 200), so the exporter thread's protobuf encoding is counted too. Tracing off, on,
and on with ``sample_ratio: 0.1`` are interleaved in rounds; the medians are printed, with
what tracing adds per request.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from veil.config import TracingConfig
from veil.tracing import Stage, Tracing, outcome, parent, start_request

STAGES = (
    "veil.moderate.input",
    "veil.route",
    "veil.policy",
    "veil.protect",
    "veil.upstream",
    "veil.restore",
    "veil.moderate.output",
    "veil.meter",
)
ATTRIBUTES = {"veil.tier": "partner", "veil.provider": "openai-azure", "veil.model": "gpt-4o"}
_NO_SPAN: AbstractContextManager[Any] = nullcontext()
SINK = """
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["content-length"]))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_request(tracing: Tracing | None, i: int) -> None:
    span = None
    if tracing is not None:
        span = start_request(tracing.tracer, f"req-{i}", parent(None))
        if not span.is_recording():  # as the pipeline does: sampled out, no stages
            span = None
    for name in STAGES:
        stage = (
            _NO_SPAN
            if span is None or tracing is None
            else Stage(tracing.tracer, span, name, ATTRIBUTES)
        )
        with stage:
            pass
    if span is not None:
        outcome(span, 200, None)
        span.set_attributes({**ATTRIBUTES, "veil.prompt_tokens": 12})
        span.end()


def timed(tracing: Tracing | None, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        one_request(tracing, i)
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    port = _free_port()
    sink = subprocess.Popen([sys.executable, "-c", SINK, str(port)])
    try:
        time.sleep(0.5)
        endpoint = f"http://127.0.0.1:{port}/v1/traces"
        setups: dict[str, Tracing | None] = {
            "off": None,
            "on": Tracing(TracingConfig(enabled=True, endpoint=endpoint)),
            "on, 10% sampled": Tracing(
                TracingConfig(enabled=True, endpoint=endpoint, sample_ratio=0.1)
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in setups}
        for tracing in setups.values():
            timed(tracing, 300)
        for _ in range(args.rounds):
            for name, tracing in setups.items():
                times[name].append(timed(tracing, args.requests))
        medians = {name: statistics.median(t) for name, t in times.items()}
        print(f"{'tracing':<18}{'µs per request':>16}{'added':>10}   ({len(STAGES) + 1} spans)")
        for name, us in medians.items():
            print(f"{name:<18}{us:>16.1f}{us - medians['off']:>10.1f}")
        for tracing in setups.values():
            if tracing is not None:
                tracing.shutdown()
    finally:
        sink.terminate()
        sink.wait(5)


if __name__ == "__main__":
    main()
