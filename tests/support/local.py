"""A real HTTP server on a thread of its own, recording every request it receives.

The protocol servers of the integration tests (OpenAI, Azure, Anthropic, Gemini and the
plain OpenAI-compatible upstream) are subclasses that add their routes.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from multidict import CIMultiDict

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Received:
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    body: dict[str, Any]


class LocalServer:
    """An aiohttp app on a thread of its own that records what it received."""

    def __init__(self) -> None:
        self.port = 0
        self.received: list[Received] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LocalServer:
        self.port = free_port()
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            self.routes(app)
            runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    async def record(self, request: web.Request) -> Received:
        received = Received(
            request.path,
            dict(request.query),
            CIMultiDict(request.headers),
            await request.json(),
        )
        self.received.append(received)
        return received

    def since(self, before: int) -> list[Received]:
        return self.received[before:]

    def capture(self, call: Callable[[], T]) -> tuple[Received, T]:
        """Run ``call``; return the one request this server received for it, and the result."""
        before = len(self.received)
        result = call()
        [received] = self.since(before)
        return received, result


class Blackhole:
    """A port where connections are never accepted: its backlog is full, so a connect just
    waits (the kernel drops the SYNs) — an upstream host that stopped answering."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        self.port = int(self._listener.getsockname()[1])
        self._filler = socket.create_connection(("127.0.0.1", self.port))  # fills the backlog

    def close(self) -> None:
        self._filler.close()
        self._listener.close()
