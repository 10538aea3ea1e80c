"""``/v1``: the OpenAI-compatible routes. They convert, call the pipeline, convert back."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from veil.api.deps import authenticate, gateway
from veil.api.errors import log_bug
from veil.chat import ChatRequest, parse_chat_request
from veil.errors import ModelNotFound, VeilError
from veil.gateway import Gateway
from veil.pipeline import ChatResult, RequestContext
from veil.policy import parse_consent_header
from veil.routing import Router

router = APIRouter(prefix="/v1", tags=["openai"])

_CHAT_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ChatRequest"}}},
    }
}


@router.post("/chat/completions", openapi_extra=_CHAT_OPENAPI, summary="Create a chat completion")
async def chat_completions(request: Request) -> Response:
    # Normally answered by RequestMiddleware's fast path before FastAPI sees it; this route
    # documents the endpoint in /openapi.json and serves the same function if reached.
    return await chat_response(
        gateway(request),
        request.scope["state"]["request_id"],
        request.headers.get("authorization"),
        request.headers.get("x-veil-consent"),
        request.body,
        request.headers.get("traceparent"),
    )


async def chat_response(
    gw: Gateway,
    request_id: str,
    authorization: str | None,
    consent: str | None,
    read_body: Callable[[], Awaitable[bytes]],
    traceparent: str | None = None,
) -> Response:
    """authenticate → parse → pipeline → HTTP response. The body is read only once the
    caller is known; it is parsed by hand, in one pydantic-core pass straight from bytes,
    with errors that never echo the request's content."""
    principal = await gw.pipeline.authenticate(authorization)
    ctx = RequestContext(request_id, principal, parse_consent_header(consent))
    ctx.traceparent = traceparent
    try:
        chat = parse_chat_request(await read_body())
    except VeilError as exc:
        gw.pipeline.reject(ctx, exc)
        raise
    result = await gw.pipeline.chat(ctx, chat)
    headers = result.headers
    if isinstance(result, ChatResult):
        return Response(orjson.dumps(result.body), media_type="application/json", headers=headers)
    headers["cache-control"] = "no-cache"
    headers["x-accel-buffering"] = "no"
    return StreamingResponse(
        _sse(result.chunks, request_id), media_type="text/event-stream", headers=headers
    )


async def _sse(chunks: AsyncIterator[dict[str, Any]], request_id: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
        yield b"data: [DONE]\n\n"
    except VeilError as exc:
        # Headers are gone; OpenAI's clients raise on an error event in the stream.
        yield b"data: " + orjson.dumps(exc.to_dict()) + b"\n\n"
    except Exception as exc:  # a bug mid-stream: say so in the stream, log it without content
        log_bug(exc, request_id)
        error = VeilError(f"internal error (request id {request_id})")
        yield b"data: " + orjson.dumps(error.to_dict()) + b"\n\n"
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]


@router.get("/models", summary="List models")
async def list_models(request: Request) -> Response:
    await authenticate(request)
    router_ = gateway(request).router
    names = [m.name for m in router_.listed()] + [a for a in ("auto", "device") if router_.knows(a)]
    data = [_model_card(router_, name) for name in names]
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")


@router.get("/models/{model_id:path}", summary="Retrieve a model")
async def get_model(model_id: str, request: Request) -> Response:
    await authenticate(request)
    card = _model_card(gateway(request).router, model_id)
    return Response(orjson.dumps(card), media_type="application/json")


def _model_card(router_: Router, name: str) -> dict[str, Any]:
    if name == "auto":
        if not router_.knows("auto"):
            raise ModelNotFound("no model is configured to serve 'auto'", param="model")
        owner = "veil (routed by task)"
    else:
        entry = router_.released(name)
        owner = entry.owned_by if name == entry.name else f"veil ({entry.name})"
    return {"id": name, "object": "model", "created": 0, "owned_by": owner}


def chat_schemas() -> dict[str, Any]:
    """Components for /openapi.json: the chat request and the models it refers to."""
    schema = ChatRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    return {"ChatRequest": schema, **defs}
