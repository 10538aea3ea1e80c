"""The FastAPI application over a ``Gateway``."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp

import veil
from veil.api import admin, chat, consents, health, moderations, preferences, reports
from veil.api import errors as api_errors
from veil.api.middleware import RequestMiddleware
from veil.dashboard import routes as dashboard
from veil.gateway import Gateway


def create_app(gw: Gateway) -> ASGIApp:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await gw.start()
        # Everything alive now (modules, pydantic schemas, the model's Python objects) lives
        # as long as the process; moving it out of the collector's view stops gen-2
        # collections from walking it, which stalled every request in flight for ~80 ms
        # several times a second under load (bench/overhead.py, p99).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            await gw.close()

    app = FastAPI(
        title="Veil",
        version=veil.__version__,
        summary="A private, multi-model AI gateway with an OpenAI-compatible API.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.gateway = gw
    app.include_router(chat.router)
    app.include_router(moderations.router)
    app.include_router(consents.router)
    app.include_router(preferences.router)
    app.include_router(admin.router)
    app.include_router(reports.router)
    app.include_router(health.router)
    app.include_router(dashboard.router)
    api_errors.install(app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(
                chat.chat_schemas()
            )
            schema["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}
            }
            schema["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    # Outermost, so that the chat fast path skips every FastAPI and Starlette layer.
    server = gw.config.server
    return RequestMiddleware(app, gw, server.max_body_bytes, server.max_header_bytes)
