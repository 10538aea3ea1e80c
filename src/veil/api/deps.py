"""What every route needs from the request: the gateway and the caller."""

from __future__ import annotations

from fastapi import Request

from veil.auth import Principal
from veil.errors import InvalidRequest, PermissionDenied
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


def acting_user(principal: Principal, user: str | None, missing: str) -> str:
    """The user a per-user route acts for: the key's own user, or — for a tenant's app key
    that serves many users — the ``user`` the app names. ``missing`` says what needs one."""
    if principal.user is not None:
        if user is not None and user != principal.user:
            raise PermissionDenied("this key acts for one user only", param="user")
        return principal.user
    if user is None:
        raise InvalidRequest(f"{missing}: name the user, or use a key issued for one", param="user")
    return user


def scoped_tenant(principal: Principal, tenant: str | None) -> str | None:
    """The tenant a report covers: the admin's choice (``None``: every tenant), else the
    caller's own tenant; a tenant's key naming another tenant is refused, never answered."""
    if principal.admin:
        return tenant
    if tenant is not None and tenant != principal.tenant:
        raise PermissionDenied("a tenant's key sees its own tenant only", param="tenant")
    return principal.tenant
