"""What every route needs from the request: the gateway and the caller."""

from __future__ import annotations

from fastapi import Request

from veil.auth import Principal
from veil.errors import PermissionDenied
from veil.gateway import Gateway


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


async def authenticate(request: Request) -> Principal:
    return await gateway(request).pipeline.authenticate(request.headers.get("authorization"))


async def require_admin(request: Request) -> Principal:
    principal = await authenticate(request)
    if not principal.admin:
        raise PermissionDenied("this route needs the admin key", code="admin_required")
    return principal
