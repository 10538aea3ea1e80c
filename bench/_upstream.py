"""A minimal OpenAI-compatible upstream: ``POST /v1/chat/completions``, plain and streamed.

Run as ``python bench/_upstream.py``: it binds a free port on 127.0.0.1, prints the port on
stdout and serves until it is killed (or its parent dies). One process, uvloop and httptools
straight on the protocol layer, so that it is never the bottleneck of the measurement; yet
it is a real HTTP/1.1 server: it parses every request and its JSON body, keeps connections
alive, accepts pipelining and chunked request bodies, and streams with chunked encoding.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from typing import Any, cast

import httptools
import orjson
import uvloop

_MODEL = "bench-model"
_CREATED = 1_700_000_000
_PIECES = ["Hello", "!", " How", " can", " I", " help", "?"]
_USAGE = {
    "prompt_tokens": 9,
    "completion_tokens": len(_PIECES),
    "total_tokens": 9 + len(_PIECES),
}


def _response(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: {content_type.decode()}\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


_COMPLETION = _response(
    "200 OK",
    orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": _CREATED,
            "model": _MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(_PIECES)},
                    "finish_reason": "stop",
                }
            ],
            "usage": _USAGE,
        }
    ),
)
_NOT_FOUND = _response("404 Not Found", b'{"error":{"message":"not found","type":"not_found"}}')
_BAD_REQUEST = _response(
    "400 Bad Request",
    b'{"error":{"message":"invalid JSON body","type":"invalid_request_error"}}',
)
_HEALTH = _response("200 OK", b'{"status":"ok"}')
_STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


def _chunk(event: dict[str, Any] | str) -> bytes:
    data = event if isinstance(event, str) else orjson.dumps(event).decode()
    payload = f"data: {data}\n\n".encode()
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _stream_chunks(include_usage: bool) -> list[bytes]:
    base: dict[str, Any] = {"id": "chatcmpl-bench", "object": "chat.completion.chunk"}
    base |= {"created": _CREATED, "model": _MODEL}
    chunks = []
    for i, piece in enumerate(_PIECES):
        delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
        last = i == len(_PIECES) - 1
        choice = {"index": 0, "delta": delta, "finish_reason": "stop" if last else None}
        chunks.append(_chunk({**base, "choices": [choice]}))
    if include_usage:
        chunks.append(_chunk({**base, "choices": [], "usage": _USAGE}))
    chunks.append(_chunk("[DONE]"))
    chunks.append(b"0\r\n\r\n")
    return chunks


_STREAM = {flag: _stream_chunks(flag) for flag in (False, True)}


class _Connection(asyncio.Protocol):
    """One client connection; httptools calls the ``on_*`` methods while it parses."""

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but have its methods.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            assert self._transport is not None
            self._transport.write(_BAD_REQUEST)
            self._transport.close()

    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        transport = self._transport
        assert transport is not None
        method = self._parser.get_method()
        if method == b"POST" and self._url == b"/v1/chat/completions":
            self._chat(transport)
        elif method == b"GET" and self._url == b"/health":
            transport.write(_HEALTH)
        else:
            transport.write(_NOT_FOUND)
        if not self._parser.should_keep_alive():
            transport.close()

    def _chat(self, transport: asyncio.Transport) -> None:
        try:
            request = orjson.loads(b"".join(self._body))
        except orjson.JSONDecodeError:
            transport.write(_BAD_REQUEST)
            return
        if not isinstance(request, dict) or not request.get("stream"):
            transport.write(_COMPLETION)
            return
        options = request.get("stream_options") or {}
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        # One write per event, as a real streaming server flushes each as it is produced.
        transport.write(_STREAM_HEAD)
        for chunk in _STREAM[include_usage]:
            transport.write(chunk)


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0))
    server = await loop.create_server(_Connection, sock=sock, backlog=4096)
    print(sock.getsockname()[1], flush=True)
    async with server:
        await _orphaned(loop)


def _orphaned(loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
    """Done once our parent is gone, so a benchmark killed with SIGKILL leaves no server."""
    done: asyncio.Future[None] = loop.create_future()
    parent = os.getppid()

    def check() -> None:
        if os.getppid() != parent:
            done.set_result(None)
        else:
            loop.call_later(1.0, check)

    check()
    return done


if __name__ == "__main__":
    uvloop.run(_serve())
