"""The private compute node: attested, sealed, stateless.

Three routes and nothing else — no admin, debug or shell interface:

``GET /node/v1/attestation``
    The current signed attestation document (see ``veil.attestation.document``).
``POST /node/v1/chat``
    A request sealed to this boot's key (``veil.attestation.envelope``), naming the
    document it was sealed under in ``x-veil-attestation`` (its SHA-256, hex). The reply is
    a stream of sealed frames; once a request has opened, every outcome (an answer, a
    stream, an error) travels inside them, so nothing between gateway and node learns
    even whether it failed. Before that, a refusal is plain JSON with a code only: 400
    ``malformed``, ``unknown_attestation``, ``key_rejected``, ``stale`` or ``replayed``;
    401 ``unauthorized`` (a token is set and was not sent); 413 ``too_large``.
``GET /node/v1/health``
    ``{"status": "ok"}`` once the model is loaded.

Stateless: the node writes no file. Requests, answers and keys live in memory for as long
as they are used; logs carry counts and error codes, never content; the replay cache holds
digests of ciphertexts for two clock windows only. Requests carry no user identity: the
gateway sends none, and the node drops ``user``, ``metadata`` and ``safety_identifier``
should any arrive.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from veil.attestation.document import Attestation, BootKeys, SignedAttestation, sign
from veil.attestation.envelope import (
    CONTENT_TYPE,
    EnvelopeError,
    ResponseSealer,
    open_request,
    request_info,
)
from veil.chat import ChatRequest
from veil.errors import VeilError
from veil.providers.base import Provider, StreamState

log = logging.getLogger("veil.node")

MAX_BODY = 8 * 1024 * 1024
#: Fields a node never needs and never keeps: who the user is.
IDENTITY_FIELDS = ("user", "metadata", "safety_identifier")


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    name: str
    model: str
    measurement: str
    key: Ed25519PrivateKey


class Node:
    """One boot of a node: its keys, its current attestation, its replay window."""

    def __init__(
        self,
        identity: NodeIdentity,
        provider: Provider,
        upstream_model: str,
        *,
        lifetime: float = 3600.0,
        max_skew: float = 60.0,
        token: str | None = None,
    ) -> None:
        self.identity = identity
        self.provider = provider
        self._upstream_model = upstream_model
        self._lifetime_ms = int(lifetime * 1000)
        self._skew_ms = int(max_skew * 1000)
        self._token = token.encode() if token else None
        self._keys = BootKeys()
        self._private = {kem: self._keys.private(kem) for kem in self._keys.public()}
        self.boot_ms = _now_ms()
        #: Unexpired documents by the hex SHA-256 of their bytes: the current one and the
        #: one before it, so a request sealed just before a re-issue still opens.
        self._documents: dict[str, tuple[SignedAttestation, Attestation, bytes]] = {}
        self._current: SignedAttestation | None = None
        #: Digests of the requests opened, oldest first, with when they were opened.
        self._seen: OrderedDict[bytes, int] = OrderedDict()
        self.served = 0
        self.refused: dict[str, int] = {}

    # ----------------------------------------------------------- attestation

    def attestation(self) -> SignedAttestation:
        """The current document, re-issued (same boot keys) once half its life is gone."""
        now = _now_ms()
        current = self._current
        if current is not None:
            _, doc, _ = self._documents[hashlib.sha256(current.document).hexdigest()]
            if now < doc.issued_ms + self._lifetime_ms // 2:
                return current
        doc = Attestation(
            node=self.identity.name,
            model=self.identity.model,
            measurement=self.identity.measurement,
            keys=self._keys.public(),
            boot_ms=self.boot_ms,
            issued_ms=now,
            expires_ms=now + self._lifetime_ms,
            identity=self.identity.key.public_key().public_bytes_raw().hex(),
        )
        signed = sign(doc, self.identity.key)
        self._documents = {
            h: entry for h, entry in self._documents.items() if entry[1].expires_ms > now
        }
        self._documents[hashlib.sha256(signed.document).hexdigest()] = (
            signed,
            doc,
            request_info(signed.document),
        )
        self._current = signed
        return signed

    # ----------------------------------------------------------- requests

    def _refuse(self, code: str, message: str, status: int = 400) -> JSONResponse:
        self.refused[code] = self.refused.get(code, 0) + 1
        log.info("refused a request: %s", code)
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)

    def _authorized(self, request: Request) -> bool:
        if self._token is None:
            return True
        header = request.headers.get("authorization", "")
        return header.startswith("Bearer ") and hmac.compare_digest(
            header[7:].encode(), self._token
        )

    def _fresh(self, issued_ms: int, tag: bytes) -> str | None:
        """Why a correctly sealed request must still be refused, or None."""
        now = _now_ms()
        if abs(now - issued_ms) > self._skew_ms:
            return "stale"
        # A request opened at t had issued_ms within the window of t, so a replay of it is
        # stale from t + 2 windows on: only digests younger than that need keeping. Oldest
        # first, so forgetting costs O(1) per request however busy the node is.
        seen, horizon = self._seen, now - 2 * self._skew_ms
        while seen:
            oldest, opened = next(iter(seen.items()))
            if opened >= horizon:
                break
            del seen[oldest]
        if tag in seen:
            return "replayed"
        seen[tag] = now
        return None

    async def chat(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._refuse("unauthorized", "a valid bearer token is required", 401)
        entry = self._documents.get(request.headers.get("x-veil-attestation", ""))
        if entry is None or entry[1].expires_ms <= _now_ms():
            return self._refuse(
                "unknown_attestation", "sealed under a document this boot does not hold"
            )
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > MAX_BODY:
                return self._refuse(
                    "too_large", f"a sealed request is at most {MAX_BODY} bytes", 413
                )
        try:
            opened = open_request(bytes(body), self._private, entry[2])
        except EnvelopeError as e:
            return self._refuse(e.code, str(e))
        del body
        why = self._fresh(opened.issued_ms, opened.tag)
        if why is not None:
            return self._refuse(why, f"the request is {why}")
        payload = opened.payload
        for name in IDENTITY_FIELDS:
            payload.pop(name, None)
        return StreamingResponse(self._answer(payload, opened.sealer), media_type=CONTENT_TYPE)

    async def _answer(
        self, payload: dict[str, Any], sealer: ResponseSealer
    ) -> AsyncIterator[bytes]:
        try:
            chat = ChatRequest.model_validate(payload)
        except ValidationError as e:
            # Field locations and error kinds only: pydantic's messages may quote input.
            where = ", ".join(".".join(str(p) for p in err["loc"]) for err in e.errors()[:3])
            yield sealer.frame(_error(400, "invalid_request", f"invalid request: {where}"), True)
            return
        try:
            if chat.stream:
                state = StreamState()
                async for chunk in self.provider.stream(chat, self._upstream_model, state):
                    yield sealer.frame({"chunk": chunk})
                yield sealer.frame({"end": True, "usage": _usage(state.usage)}, True)
            else:
                completion = await self.provider.complete(chat, self._upstream_model)
                yield sealer.frame(
                    {"completion": completion.body, "usage": _usage(completion.usage)}, True
                )
            self.served += 1
        except VeilError as e:
            log.info("a request failed: %s", e.code)
            yield sealer.frame(_error(e.status, e.code, e.message, e.retry_after), True)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # never the message: it may quote the request
            log.error("a request failed with %s", type(e).__name__)
            yield sealer.frame(_error(500, "node_error", "the node failed"), True)

    # ----------------------------------------------------------- app

    def app(self) -> Starlette:
        async def attestation(request: Request) -> JSONResponse:
            return JSONResponse(self.attestation().to_json())

        async def health(request: Request) -> JSONResponse:
            ready = self.provider.ready()
            return JSONResponse(
                {"status": "ok" if ready else "loading", "served": self.served},
                status_code=200 if ready else 503,
            )

        return Starlette(
            routes=[
                Route("/node/v1/attestation", attestation, methods=["GET"]),
                Route("/node/v1/chat", self.chat, methods=["POST"]),
                Route("/node/v1/health", health, methods=["GET"]),
            ],
            lifespan=self._lifespan,
        )

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.provider.start()
        try:
            yield
        finally:
            await self.provider.close()


def _now_ms() -> int:
    return int(time.time() * 1000)


def _usage(usage: Any) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "method": usage.method,
    }


def _error(
    status: int, code: str | None, message: str, retry_after: float | None = None
) -> dict[str, Any]:
    return {
        "error": {"status": status, "code": code, "message": message, "retry_after": retry_after}
    }
