"""``/dashboard``: the transparency dashboard's page, its assets and the JSON it reads;
``/v1/privacy/report``: what of one user's requests left the device.

The page itself holds no data and needs no key; every ``/dashboard/api`` route does. The
admin key sees every tenant (and may pick one); a tenant's key sees its own tenant only.
Assets are shipped in the package (no CDN): the page works offline.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from veil.api.deps import acting_user, authenticate, gateway, require_admin, scoped_tenant
from veil.auth import Principal, pseudonym
from veil.dashboard import queries
from veil.errors import InvalidRequest, NotFound, PermissionDenied
from veil.store import db

STATIC = Path(__file__).with_name("static")
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
#: Only the page's own files, from the package: no inline script, no other origin.
_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}

router = APIRouter(tags=["dashboard"])
Caller = Annotated[Principal, Depends(authenticate)]
Admin = Annotated[Principal, Depends(require_admin)]
WindowQuery = Annotated[
    str, Query(description="The time window: 1h, 24h, 7d or 30d.", max_length=8)
]
TenantQuery = Annotated[
    str | None,
    Query(description="Admin only: one tenant (default: all).", max_length=128),
]


@cache
def _asset(name: str) -> tuple[bytes, str]:
    path = STATIC / name
    return path.read_bytes(), _TYPES[path.suffix]


def _assets() -> frozenset[str]:
    return frozenset(p.name for p in STATIC.iterdir() if p.suffix in _TYPES)


def _json(body: Any) -> Response:
    return Response(
        orjson.dumps(body), media_type="application/json", headers={"cache-control": "no-store"}
    )


@router.get("/dashboard", include_in_schema=False)
@router.get("/dashboard/", include_in_schema=False)
async def page() -> Response:
    body, media = _asset("index.html")
    return Response(body, media_type=media, headers=_HEADERS)


@router.get("/dashboard/assets/{name}", include_in_schema=False)
async def asset(name: str) -> Response:
    if name not in _assets() or name == "index.html":
        raise NotFound(f"no dashboard asset {name[:60]!r}")
    body, media = _asset(name)
    return Response(body, media_type=media, headers=_HEADERS)


@router.get("/dashboard/api/session", summary="Who the key belongs to, and what it may see")
async def session(request: Request, caller: Caller) -> Response:
    gw = gateway(request)
    return _json(
        {
            "admin": caller.admin,
            "tenant": None if caller.admin else caller.tenant,
            "user": caller.user,
            "windows": list(queries.WINDOWS),
            "currency": gw.config.metering.currency,
        }
    )


@router.get("/dashboard/api/overview", summary="Requests, what left the device, spend, events")
async def overview(
    request: Request, caller: Caller, window: WindowQuery = "24h", tenant: TenantQuery = None
) -> Response:
    scope = scoped_tenant(caller, tenant)
    w = queries.window(window)
    gw = gateway(request)
    body = await asyncio.to_thread(
        queries.overview, gw.engine, scope, w, gw.config.metering.currency
    )
    if caller.admin:
        body["tenants"] = await asyncio.to_thread(queries.tenants, gw.engine, w)
        body["breakers"] = gw.pipeline.breakers.states()
    return _json(body)


@router.get("/dashboard/api/nodes", summary="Private nodes, their attestation and log heads")
async def nodes(request: Request, _caller: Caller) -> Response:
    """Shown to every key: where requests may be sent is what the privacy promise is about."""
    from veil.attestation.log import sth_to_json
    from veil.providers.private_node import PrivateNodeProvider

    out = []
    for name, provider in gateway(request).providers.items():
        if isinstance(provider, PrivateNodeProvider):
            head = provider.log.monitor.latest
            out.append(
                {
                    "provider": name,
                    "log_head": sth_to_json(head) if head is not None else None,
                    "nodes": provider.status(),
                }
            )
    return _json({"object": "list", "data": out})


# ------------------------------------------------------------------------ privacy report


@cache
def _salt(engine: Any) -> str:
    return db.install_salt(engine)


@router.get("/v1/privacy/report", summary="A user's requests that left the device (no content)")
async def privacy_report(
    request: Request,
    caller: Caller,
    user: Annotated[
        str | None,
        Query(
            description="The user (for a tenant's app key; a user's own key needs none).",
            min_length=1,
            max_length=256,
        ),
    ] = None,
    tenant: TenantQuery = None,
    days: Annotated[int, Query(ge=1, le=366, description="How many days back.")] = 90,
    limit: Annotated[int, Query(ge=1, le=queries.REPORT_LIMIT)] = 1000,
    download: Annotated[bool, Query(description="As a file to save.")] = False,
) -> Response:
    if caller.admin:
        if tenant is None or user is None:
            raise InvalidRequest(
                "the admin key names the tenant and the user",
                param="tenant" if not tenant else "user",
            )
        scope, who = tenant, user
    else:
        if tenant is not None and tenant != caller.tenant:
            raise PermissionDenied("a tenant's key sees its own tenant only", param="tenant")
        scope, who = caller.tenant, acting_user(caller, user, "a privacy report is per user")
    gw = gateway(request)
    until = datetime.now(UTC)
    since = until - timedelta(days=days)
    user_hash = pseudonym(_salt(gw.engine), who)
    assert user_hash is not None
    report = await asyncio.to_thread(
        queries.privacy_report, gw.engine, scope, user_hash, since, until, limit
    )
    body = {
        "object": "privacy_report",
        "tenant": scope,
        "user": who,
        "generated_at": until.isoformat(),
        "period": {"start": since.isoformat(), "end": until.isoformat()},
        **report,
    }
    response = _json(body)
    if download:
        stamp = until.strftime("%Y%m%d")
        response.headers["content-disposition"] = (
            f'attachment; filename="veil-privacy-report-{stamp}.json"'
        )
    return response
