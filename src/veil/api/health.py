"""Liveness, readiness and Prometheus metrics. No authentication; no content."""

from __future__ import annotations

import asyncio

import orjson
from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from veil.api.deps import gateway

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


@router.get("/readyz", summary="Models loaded and database reachable")
async def readyz(request: Request) -> Response:
    checks = await asyncio.to_thread(gateway(request).ready)
    ok = all(checks.values())
    body = {"status": "ready" if ok else "not ready", "checks": checks}
    return Response(
        orjson.dumps(body), status_code=200 if ok else 503, media_type="application/json"
    )


@router.get("/metrics", summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    return Response(gateway(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
