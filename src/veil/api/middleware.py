"""One plain ASGI middleware for what every request needs, and the chat fast path.

- ``x-request-id`` on every response (Veil's own id, never taken from the caller: it keys
  the usage row). Ids are a random per-process prefix and a counter: unique across
  replicas, and far cheaper than a uuid4 per request.
- Bodies over ``max_body_bytes`` get 413 — at once from ``Content-Length``, or as soon as a
  chunked body crosses the limit. Headers over ``max_header_bytes`` (all of them together)
  get 431 before anything reads them.
- ``/v1`` responses that were not routed anywhere still say so: ``x-veil-tier: none``.
- ``POST /v1/chat/completions`` is answered here, without FastAPI's routing, dependency and
  exception layers, which cost more per request than the rest of the gateway together
  (measured with py-spy under bench/overhead.py). It calls the very function the FastAPI
  route calls, so there is one implementation of the endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from veil.api.chat import chat_response
from veil.api.errors import error_response, internal_error, log_bug
from veil.errors import BodyTooLarge, HeadersTooLarge, VeilError
from veil.gateway import Gateway

CHAT_PATH = "/v1/chat/completions"
_UNROUTED = [
    (b"x-veil-tier", b"none"),
    (b"x-veil-provider", b"none"),
    (b"x-veil-model", b"none"),
    (b"x-veil-route-reason", b"not routed"),
]


class RequestIds:
    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


class ClientDisconnected(Exception):
    pass


class RequestMiddleware:
    def __init__(
        self, app: ASGIApp, gateway: Gateway, max_body_bytes: int, max_header_bytes: int = 32768
    ) -> None:
        self.app = app
        self.gateway = gateway
        self.max_body = max_body_bytes
        self.max_headers = max_header_bytes
        self.ids = RequestIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = self.ids.next()
        scope.setdefault("state", {})["request_id"] = request_id
        rid = request_id.encode()
        api = scope["path"].startswith("/v1/")

        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers: list[Any] = list(message.get("headers", ()))
                headers.append((b"x-request-id", rid))
                if api and not any(k == b"x-veil-tier" for k, _ in headers):
                    headers.extend(_UNROUTED)
                message["headers"] = headers
            await send(message)

        try:
            await self._dispatch(scope, receive, send_with_headers, request_id)
        except Exception as exc:
            # Nothing may escape to the server: uvicorn would log the exception's message,
            # and a message can quote request content. Answer 500 if nothing was sent yet.
            if started:
                log_bug(exc, request_id)
                with contextlib.suppress(
                    Exception
                ):  # end the body so the client is not left hanging
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                await internal_error(exc, request_id)(scope, receive, send_with_headers)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        length = None
        authorization = consent = traceparent = None
        size = 0
        for key, value in scope["headers"]:
            size += len(key) + len(value)
            if key == b"content-length":
                length = int(value) if value.isdigit() else None
            elif key == b"authorization":
                authorization = value.decode("latin-1")
            elif key == b"x-veil-consent":
                consent = value.decode("latin-1")
            elif key == b"traceparent":
                traceparent = value.decode("latin-1")
        if size > self.max_headers:
            error = HeadersTooLarge(
                f"the request headers are larger than the limit of {self.max_headers} bytes"
            )
            await _refuse(error, send)
            return
        if length is not None and length > self.max_body:
            await _refuse(BodyTooLarge(_limit_message(self.max_body)), send)
            return
        if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
            receive = _limited(receive, self.max_body)
        if scope["path"] == CHAT_PATH and scope["method"] == "POST":
            await self._chat(scope, receive, send, request_id, authorization, consent, traceparent)
            return
        await self.app(scope, receive, send)

    async def _chat(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        request_id: str,
        authorization: str | None,
        consent: str | None,
        traceparent: str | None,
    ) -> None:
        handler = asyncio.current_task()
        watcher: asyncio.Task[None] | None = None
        hung_up = False

        async def watch() -> None:
            # The body is read: the next message can only be the caller hanging up. Then
            # stop waiting for the upstream at once (the pipeline meters it as 499).
            nonlocal hung_up
            message = await receive()
            if message["type"] == "http.disconnect" and handler is not None:
                hung_up = True
                handler.cancel()

        async def read_body() -> bytes:
            nonlocal watcher
            parts = []
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnected
                parts.append(message.get("body", b""))
                if not message.get("more_body"):
                    watcher = asyncio.get_running_loop().create_task(watch())
                    return b"".join(parts)

        try:
            response = await chat_response(
                self.gateway, request_id, authorization, consent, read_body, traceparent
            )
        except VeilError as exc:
            response = error_response(exc)
        except ClientDisconnected:
            return
        except asyncio.CancelledError:
            if not hung_up or handler is None:
                raise  # not the caller leaving: a real cancellation (shutdown)
            handler.uncancel()
            return
        except Exception as exc:  # a bug: answer 500 and keep serving
            response = internal_error(exc, request_id)
        finally:
            if watcher is not None and not watcher.done():
                watcher.cancel()
        if hung_up and handler is not None and handler.cancelling():
            # The caller left just as the answer was ready: send it anyway (it goes nowhere)
            # so that a stream is closed, and metered, the usual way.
            handler.uncancel()
        await response(scope, receive, send)


def _limited(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def receive_limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(_limit_message(limit))
        return message

    return receive_limited


def _limit_message(limit: int) -> str:
    return f"the request body is larger than the limit of {limit} bytes"


async def _refuse(error: VeilError, send: Send) -> None:
    """Answer before reading the body, and close the connection (the rest is not read)."""
    body = orjson.dumps(error.to_dict())
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
