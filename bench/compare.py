"""Veil side by side with LiteLLM's proxy and Portkey's gateway, against one local upstream.

Run from the repository root::

    .venv/bin/python bench/compare.py --install     # once: LiteLLM and Portkey into bench/.tools
    .venv/bin/python bench/compare.py [--duration S] [--json FILE]

``--install`` puts ``litellm[proxy]`` (PyPI) in a virtual environment of its own and
``@portkey-ai/gateway`` (npm) in a folder of its own, both under ``bench/.tools``; nothing
of theirs is committed.

Portkey's gateway 1.15.2 on this machine's Node 20 answers every streamed request with a
500 ("TypeError: immutable" when it adds its headers to the upstream's response, the bug
of Portkey-AI/gateway#1389 and #1550; pinning ``@hono/node-server`` to 1.14.2 did not
help). Its streamed rows are reported as failed, not measured. Then the minimal OpenAI-compatible upstream (``_upstream.py``) is
called directly and through each gateway with the closed-loop load generator
(``_load.py``) at concurrency 1 and 32, plain and streamed, every target in one run. Each
gateway is started on its own, measured, and stopped, so none competes with another.

The gateways as configured:

- **Veil** with its full pipeline: an API key checked on every request, hosting policy,
  metering (usage row, ledger lines and the crash journal, written by the writer process).
  Personal-data protection is not on the path: the model is a private-tier deployment.
- **LiteLLM** proxy with a master key and no database (so no spend tracking), its remote
  price map turned off.
- **Portkey** gateway, headless, pointed at the upstream with ``x-portkey-custom-host``.

Figures: requests/s, p50 and p99 latency, and what each gateway adds to the direct p50.
The exit code is 1 when some target could not be measured.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _procs import (
    BenchError,
    Children,
    finish,
    free_port,
    run_load,
    start_upstream,
    start_veil,
    wait_ready,
)

HERE = Path(__file__).resolve().parent
TOOLS = HERE / ".tools"
LITELLM = TOOLS / "litellm" / "bin" / "litellm"
PORTKEY = (
    TOOLS / "portkey" / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
)
CONCURRENCY = (1, 32)
WARMUP = 1.0
CHAT = {
    "model": "bench-model",
    "messages": [{"role": "user", "content": "hello"}],
    "max_tokens": 16,
}
BODIES = {
    "json": CHAT,
    "stream": {**CHAT, "stream": True, "stream_options": {"include_usage": True}},
}


@dataclass
class Target:
    name: str
    port: int
    proc: subprocess.Popen[bytes] | None
    headers: dict[str, str] = field(default_factory=dict)


def install() -> None:
    TOOLS.mkdir(exist_ok=True)
    print("Installing litellm[proxy] into bench/.tools/litellm …", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(TOOLS / "litellm")], check=True)
    subprocess.run(
        [str(TOOLS / "litellm" / "bin" / "pip"), "install", "-q", "litellm[proxy]"], check=True
    )
    print("Installing @portkey-ai/gateway into bench/.tools/portkey …", flush=True)
    folder = TOOLS / "portkey"
    folder.mkdir(exist_ok=True)
    npm = shutil.which("npm")
    if npm is None:
        raise BenchError("npm is not installed (apt-get install nodejs npm)")
    package = {
        "name": "veil-bench-portkey",
        "private": True,
        "dependencies": {"@portkey-ai/gateway": "*"},
    }
    (folder / "package.json").write_text(json.dumps(package, indent=2))
    subprocess.run([npm, "install", "--no-fund", "--no-audit"], cwd=folder, check=True)


class Run:
    def __init__(self, tmp: Path, children: Children, duration: float) -> None:
        self.tmp = tmp
        self.children = children
        self.duration = duration

    def upstream(self) -> Target:
        proc, port = start_upstream(self.children, self.tmp)
        return Target("direct", port, proc)

    def veil(self, upstream: int) -> Target:
        key = secrets.token_hex(20)
        config = (
            "providers:\n"
            "  - {name: upstream, type: openai_compatible, tier: private,"
            f' base_url: "http://127.0.0.1:{upstream}/v1"}}\n'
            "models:\n"
            "  - {name: bench-model, deployments: [{provider: upstream, model: bench-model}],"
            " price: {input: 1, output: 2}}\n"
        )
        proc, port = start_veil(self.children, self.tmp, "veil", config, key)
        return Target("veil", port, proc, {"authorization": f"Bearer {key}"})

    def litellm(self, upstream: int) -> Target:
        if not LITELLM.exists():
            raise BenchError("LiteLLM is not installed: run bench/compare.py --install")
        key = "sk-" + secrets.token_hex(16)
        config = self.tmp / "litellm.yaml"
        config.write_text(
            "model_list:\n"
            "  - model_name: bench-model\n"
            "    litellm_params:\n"
            "      model: openai/bench-model\n"
            f"      api_base: http://127.0.0.1:{upstream}/v1\n"
            "      api_key: sk-bench\n"
        )
        port = free_port()
        env = {
            **os.environ,
            "LITELLM_MASTER_KEY": key,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
        }
        proc = self.children.spawn(
            [str(LITELLM), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            log=self.tmp / "litellm.log",
        )
        wait_ready(proc, port, "/health/liveliness", 180.0, self.tmp / "litellm.log")
        return Target("litellm", port, proc, {"authorization": f"Bearer {key}"})

    def portkey(self, upstream: int) -> Target:
        node = shutil.which("node")
        if not PORTKEY.exists() or node is None:
            raise BenchError("Portkey's gateway is not installed: run bench/compare.py --install")
        port = free_port()
        proc = self.children.spawn(
            [node, str(PORTKEY), f"--port={port}", "--headless"],
            env={**os.environ, "NODE_ENV": "production"},
            log=self.tmp / "portkey.log",
        )
        wait_ready(proc, port, "/", 60.0, self.tmp / "portkey.log")
        headers = {
            "authorization": "Bearer sk-bench",
            "x-portkey-provider": "openai",
            "x-portkey-custom-host": f"http://127.0.0.1:{upstream}/v1",
        }
        return Target("portkey", port, proc, headers)

    def load(self, target: Target, body: dict[str, Any], concurrency: int) -> dict[str, Any]:
        spec = {
            "port": target.port,
            "path": "/v1/chat/completions",
            "body": json.dumps(body),
            "headers": target.headers,
            "concurrency": concurrency,
            "warmup": WARMUP,
            "duration": self.duration,
            "watch": {target.name: target.proc.pid} if target.proc else {},
        }
        return run_load(self.children, self.tmp, spec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--install", action="store_true", help="install LiteLLM and Portkey")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per row")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    started = time.monotonic()
    if args.install:
        install()
    problems: list[str] = []
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name, Children() as children:
        run = Run(Path(tmp_name), children, args.duration)
        upstream = run.upstream()
        makers = {"veil": run.veil, "litellm": run.litellm, "portkey": run.portkey}
        measured: dict[str, Target] = {"direct": upstream}
        for name, make in makers.items():
            print(f"starting {name} …", file=sys.stderr, flush=True)
            try:
                measured[name] = make(upstream.port)
            except BenchError as exc:
                problems.append(f"{name}: {exc}")
                continue
            target = measured[name]
            for mode, body in BODIES.items():
                for concurrency in CONCURRENCY:
                    rows.append(_row(run, target, mode, body, concurrency, problems))
            if target.proc is not None:
                children.stop(target.proc)
        for mode, body in BODIES.items():  # the upstream alone, last, when nothing else runs
            for concurrency in CONCURRENCY:
                rows.append(_row(run, upstream, mode, body, concurrency, problems))
    _print(rows)
    return finish({"rows": rows}, problems, args.json, started)


def _row(
    run: Run,
    target: Target,
    mode: str,
    body: dict[str, Any],
    concurrency: int,
    problems: list[str],
) -> dict[str, Any]:
    figures = run.load(target, body, concurrency)
    if figures["errors"]:
        problems.append(
            f"{target.name} {mode} c={concurrency}: {figures['errors']} errors "
            f"{figures['statuses']} {figures['error_sample']!r}"
        )
    return {
        "target": target.name,
        "mode": mode,
        "concurrency": concurrency,
        "rps": figures["rps"],
        "p50_ms": figures["p50_ms"],
        "p99_ms": figures["p99_ms"],
        "errors": figures["errors"],
    }


def _print(rows: list[dict[str, Any]]) -> None:
    direct = {(r["mode"], r["concurrency"]): r for r in rows if r["target"] == "direct"}
    print(
        f"\n{'target':<9}{'mode':<8}{'c':>4}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'added p50':>11}{'% of direct':>13}"
    )
    order = {"direct": 0, "veil": 1, "litellm": 2, "portkey": 3}
    for r in sorted(rows, key=lambda r: (r["mode"], r["concurrency"], order[r["target"]])):
        base = direct.get((r["mode"], r["concurrency"]))
        added = r["p50_ms"] - base["p50_ms"] if base else float("nan")
        share = 100 * r["rps"] / base["rps"] if base and base["rps"] else float("nan")
        print(
            f"{r['target']:<9}{r['mode']:<8}{r['concurrency']:>4}{r['rps']:>10.0f}"
            f"{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{added:>11.2f}{share:>12.0f}%"
        )
    for mode in BODIES:
        by = {r["target"]: r for r in rows if r["mode"] == mode and r["concurrency"] == 32}
        if "veil" in by and "portkey" in by and by["portkey"]["rps"]:
            print(
                f"{mode}, c=32: Veil {by['veil']['rps'] / by['portkey']['rps']:.2f}× Portkey's "
                "throughput (target ≥ 2×)"
            )
        if "veil" in by and "litellm" in by and by["litellm"]["rps"]:
            print(
                f"{mode}, c=32: Veil {by['veil']['rps'] / by['litellm']['rps']:.2f}× LiteLLM's "
                "throughput"
            )


if __name__ == "__main__":
    raise SystemExit(main())
