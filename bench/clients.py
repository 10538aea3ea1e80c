"""Which HTTP client should Veil use upstream? aiohttp and httpx, measured side by side.

``python bench/clients.py [--requests N]`` starts the benchmark upstream (``_upstream.py``)
and, in this one process, sends the same chat completion request N times with each client,
at concurrency 1 and 32, through one pooled client each — as a provider does. It prints
requests/s and the client's CPU time per request (the figure that matters on the gateway's
hot path: it is CPU the gateway cannot spend on anything else). Clients alternate rounds so
that changes in the machine's load hit both alike; the median of the rounds is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx
import orjson
import uvloop

HERE = Path(__file__).resolve().parent
BODY = orjson.dumps(
    {"model": "bench-model", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16}
)
HEADERS = {"content-type": "application/json", "authorization": "Bearer x"}

Send = Callable[[], Awaitable[None]]


async def _aiohttp(url: str) -> tuple[Send, Callable[[], Awaitable[None]]]:
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))

    async def send() -> None:
        async with session.post(url, data=BODY, headers=HEADERS) as resp:
            orjson.loads(await resp.read())
            assert resp.status == 200

    return send, session.close


async def _httpx(url: str) -> tuple[Send, Callable[[], Awaitable[None]]]:
    client = httpx.AsyncClient(limits=httpx.Limits(max_connections=256))

    async def send() -> None:
        resp = await client.post(url, content=BODY, headers=HEADERS)
        orjson.loads(resp.content)
        assert resp.status_code == 200

    return send, client.aclose


CLIENTS = {"aiohttp": _aiohttp, "httpx": _httpx}


async def _round(name: str, url: str, concurrency: int, requests: int) -> tuple[float, float]:
    send, close = await CLIENTS[name](url)
    try:
        for _ in range(50):  # warm the pool
            await send()
        per_worker = requests // concurrency

        async def worker() -> None:
            for _ in range(per_worker):
                await send()

        cpu0, wall0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        done = per_worker * concurrency
        return done / wall, cpu / done * 1e6
    finally:
        await close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    upstream = subprocess.Popen(
        [sys.executable, str(HERE / "_upstream.py")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert upstream.stdout is not None
        url = f"http://127.0.0.1:{int(upstream.stdout.readline())}/v1/chat/completions"
        print(f"{args.requests} requests per round, {args.rounds} rounds, median shown")
        print(f"{'client':8} {'conc':>4} {'req/s':>8} {'CPU µs/req':>11}")
        for concurrency in (1, 32):
            results: dict[str, list[tuple[float, float]]] = {n: [] for n in CLIENTS}
            for _ in range(args.rounds):
                for name in CLIENTS:
                    results[name].append(uvloop.run(_round(name, url, concurrency, args.requests)))
            for name, runs in results.items():
                rps = statistics.median(r for r, _ in runs)
                cpu = statistics.median(c for _, c in runs)
                print(f"{name:8} {concurrency:>4} {rps:>8.0f} {cpu:>11.0f}")
    finally:
        upstream.terminate()
        upstream.wait(10)


if __name__ == "__main__":
    main()
