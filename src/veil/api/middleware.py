"""One plain ASGI middleware for what every request needs: an id, a body limit, headers.

- ``x-request-id`` on every response (the id is Veil's own, never taken from the caller:
  it keys the usage row).
- Bodies over ``max_body_bytes`` get 413 — at once from ``Content-Length``, or as soon as a
  chunked body crosses the limit.
- ``/v1`` responses that were not routed anywhere still say so: ``x-veil-tier: none``.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from veil.errors import BodyTooLarge

_UNROUTED = [
    (b"x-veil-tier", b"none"),
    (b"x-veil-provider", b"none"),
    (b"x-veil-model", b"none"),
    (b"x-veil-route-reason", b"not routed"),
]


class RequestMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        rid = request_id.encode()
        api = scope["path"].startswith("/v1/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[Any] = list(message.get("headers", ()))
                headers.append((b"x-request-id", rid))
                if api and not any(k == b"x-veil-tier" for k, _ in headers):
                    headers.extend(_UNROUTED)
                message["headers"] = headers
            await send(message)

        length = _content_length(scope)
        if length is not None and length > self.max_body:
            await _too_large(self.max_body, send_with_headers)
            return
        if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
            receive = _limited(receive, self.max_body)
        await self.app(scope, receive, send_with_headers)


def _content_length(scope: Scope) -> int | None:
    for key, value in scope["headers"]:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


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


async def _too_large(limit: int, send: Send) -> None:
    body = orjson.dumps(BodyTooLarge(_limit_message(limit)).to_dict())
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
