"""Load and soak: hundreds of concurrent streaming clients for a bounded time, with Veil's
memory and open file descriptors watched.

Run from the repository root::

    .venv/bin/python bench/load.py [--clients N] [--rounds R] [--seconds S] [--json FILE]

Starts the minimal OpenAI-compatible upstream (``_upstream.py``) and Veil in front of it
(the full pipeline: authentication, policy, metering with the journal and the writer
process), then runs the closed-loop load generator (``_load.py``) with N concurrent
streaming clients (default 200) for R rounds of S seconds (default 6 × 10 s). Each round
opens its N connections anew, so connection churn is part of it. Between rounds it reads
Veil's resident memory and open file descriptors from ``/proc``.

It passes when no request failed, the open descriptors after the last round are no more
than after the first (the connection pool to the upstream is open by then: those stay,
by design), and memory grew by less than 10% from the end of the second round (caches
warm) to the end of the last. The exit code is 1 when it did not pass or
could not be measured.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _procs import BenchError, Children, finish, start_upstream, start_veil

HERE = Path(__file__).resolve().parent
MAX_MEMORY_GROWTH = 0.10
FD_SLACK = 8
BODY = {
    "model": "bench-model",
    "messages": [{"role": "user", "content": "hello"}],
    "max_tokens": 16,
    "stream": True,
    "stream_options": {"include_usage": True},
}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for process {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    started = time.monotonic()
    problems: list[str] = []
    results: dict[str, Any] = {"clients": args.clients, "rounds": []}
    key = secrets.token_hex(20)
    with tempfile.TemporaryDirectory() as tmp_name, Children() as children:
        tmp = Path(tmp_name)
        _, up_port = start_upstream(children, tmp)
        config = (
            "providers:\n"
            "  - {name: upstream, type: openai_compatible, tier: private,"
            f' base_url: "http://127.0.0.1:{up_port}/v1", max_connections: 512}}\n'
            "models:\n"
            "  - {name: bench-model, deployments: [{provider: upstream, model: bench-model}],"
            " price: {input: 1, output: 2}}\n"
        )
        veil, port = start_veil(children, tmp, "veil", config, key)
        before = {"rss_mb": rss_mb(veil.pid), "fds": open_fds(veil.pid)}
        results["before"] = before
        print(f"Veil pid {veil.pid}: {before['rss_mb']:.1f} MB resident, {before['fds']} fds open")
        print(
            f"{'round':>5}{'requests':>10}{'errors':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
            f"{'RSS MB':>9}{'fds':>6}"
        )
        spec = {
            "port": port,
            "path": "/v1/chat/completions",
            "body": json.dumps(BODY),
            "headers": {"authorization": f"Bearer {key}"},
            "concurrency": args.clients,
            "warmup": 1.0,
            "duration": args.seconds,
            "watch": {"veil": veil.pid},
        }
        for n in range(1, args.rounds + 1):
            proc = children.spawn(
                [sys.executable, str(HERE / "_load.py"), json.dumps(spec)],
                log=tmp / "load.log",
                stdout_pipe=True,
            )
            try:
                out, _ = proc.communicate(timeout=args.seconds + 60)
            except subprocess.TimeoutExpired:
                problems.append(f"round {n}: the load generator did not finish")
                break
            if proc.returncode != 0 or not out.strip():
                problems.append(f"round {n}: the load generator failed")
                break
            figures = json.loads(out)
            time.sleep(1.0)  # connections closed, the writer's batch flushed
            row = {
                "round": n,
                "requests": figures["ok"] + figures["errors"],
                "errors": figures["errors"],
                "rps": figures["rps"],
                "p50_ms": figures["p50_ms"],
                "p99_ms": figures["p99_ms"],
                "rss_mb": rss_mb(veil.pid),
                "fds": open_fds(veil.pid),
                "statuses": figures["statuses"],
                "failures": figures["failures"],
            }
            results["rounds"].append(row)
            print(
                f"{n:>5}{row['requests']:>10,}{row['errors']:>8}{row['rps']:>9.0f}"
                f"{row['p50_ms']:>9.1f}{row['p99_ms']:>9.1f}{row['rss_mb']:>9.1f}{row['fds']:>6}"
            )
            if figures["errors"]:
                problems.append(
                    f"round {n}: {figures['errors']} errors "
                    f"({figures['statuses']}, {figures['failures']}, {figures['error_sample']!r})"
                )
        rounds = results["rounds"]
        if len(rounds) >= 3:
            warm, last = rounds[1]["rss_mb"], rounds[-1]["rss_mb"]
            growth = (last - warm) / warm
            results["memory_growth"] = growth
            print(
                f"memory from the end of round 2 to the end of round {len(rounds)}: "
                f"{warm:.1f} → {last:.1f} MB ({growth:+.1%}; limit +{MAX_MEMORY_GROWTH:.0%})"
            )
            if growth > MAX_MEMORY_GROWTH:
                problems.append(f"memory grew {growth:.1%} while warm")
            first, fds = rounds[0]["fds"], rounds[-1]["fds"]
            print(
                f"open fds: {before['fds']} before, {first} after round 1 (the upstream pool), "
                f"{fds} after round {len(rounds)}"
            )
            if fds > first + FD_SLACK:
                problems.append(f"open fds grew from {first} to {fds} after round 1")
        else:
            problems.append("fewer than 3 rounds were measured")
        total = sum(r["requests"] for r in rounds)
        print(
            f"{total:,} streamed requests from {args.clients} concurrent clients, "
            f"{sum(r['errors'] for r in rounds)} errors"
        )
    return finish(results, problems, args.json, started)


if __name__ == "__main__":
    raise SystemExit(main())
