"""What tracing costs a request: the spans of one chat request (the root and the eight
stages of a partner request), made the way the pipeline makes them, with tracing off and on.

Run from the repository root::

    .venv/bin/python bench/tracing.py [--requests N]

"On" uses the real SDK set up as ``veil.tracing.Tracing`` does (batch processor, OTLP/HTTP
exporter); the exporter points at a closed port, so exports fail in the background as they
would with the collector down, and the figure is the request path's share. The two are
interleaved in rounds and the medians printed, with their difference per request.
"""

from __future__ import annotations

import argparse
import statistics
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


def one_request(tracing: Tracing | None, i: int) -> None:
    span = None
    if tracing is not None:
        span = start_request(tracing.tracer, f"req-{i}", parent(None))
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
    on = Tracing(
        TracingConfig(enabled=True, endpoint="http://127.0.0.1:9/v1/traces", export_timeout=0.5)
    )
    off_us: list[float] = []
    on_us: list[float] = []
    timed(None, 200)
    timed(on, 200)
    for _ in range(args.rounds):
        off_us.append(timed(None, args.requests))
        on_us.append(timed(on, args.requests))
    off, with_spans = statistics.median(off_us), statistics.median(on_us)
    print(f"{'tracing':<10}{'µs per request (median of ' + str(args.rounds) + ' rounds)':>40}")
    print(f"{'off':<10}{off:>40.2f}")
    print(f"{'on':<10}{with_spans:>40.2f}")
    print(f"added by tracing: {with_spans - off:.1f} µs per request ({len(STAGES) + 1} spans)")
    on.provider.shutdown()


if __name__ == "__main__":
    main()
