"""``/v1/consents``: a user's standing consents to partners; ``/admin/consent-events``: the audit.

A consent belongs to a user: the key's own user, or — for a tenant's app key that serves
many users — the ``user`` the app names (as in chat requests). Users are stored only as
salted pseudonyms.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from veil.api.deps import acting_user, authenticate, gateway, require_admin
from veil.auth import Principal
from veil.errors import NotFound

router = APIRouter(tags=["consent"])
Caller = Annotated[Principal, Depends(authenticate)]
Admin = Annotated[Principal, Depends(require_admin)]


class ConsentGrant(BaseModel):
    model_config = ConfigDict(extra="forbid")
    partner: str = Field(min_length=1, max_length=64, description="A partner, or '*' for all.")
    user: str | None = Field(None, min_length=1, max_length=256)


class ConsentOut(BaseModel):
    partner: str
    granted_at: datetime


class ConsentList(BaseModel):
    object: str = "list"
    data: list[ConsentOut]


class ConsentEventOut(BaseModel):
    at: datetime
    tenant: str
    user_hash: str = Field(description="The user's salted pseudonym, never the user id.")
    partner: str
    action: str
    scope: str
    via: str


class ConsentEventList(BaseModel):
    object: str = "list"
    data: list[ConsentEventOut]


def _user(principal: Principal, user: str | None) -> str:
    return acting_user(principal, user, "a consent belongs to a user")


def _via(principal: Principal) -> str:
    return f"api:{principal.key_id or ('admin' if principal.admin else 'dev')}"


@router.post(
    "/v1/consents", status_code=201, response_model=ConsentOut, summary="Grant a standing consent"
)
async def grant(body: ConsentGrant, request: Request, caller: Caller) -> ConsentOut:
    user = _user(caller, body.user)
    store = gateway(request).consents
    info = await asyncio.to_thread(store.grant, caller.tenant, user, body.partner, _via(caller))
    return ConsentOut(partner=info.partner, granted_at=info.granted_at)


@router.get("/v1/consents", response_model=ConsentList, summary="List a user's consents")
async def list_consents(
    request: Request, caller: Caller, user: Annotated[str | None, Query()] = None
) -> ConsentList:
    store = gateway(request).consents
    infos = await asyncio.to_thread(store.active, caller.tenant, _user(caller, user))
    return ConsentList(data=[ConsentOut(partner=i.partner, granted_at=i.granted_at) for i in infos])


@router.delete(
    "/v1/consents/{partner}", response_model=ConsentList, summary="Revoke a standing consent"
)
async def revoke(
    partner: str, request: Request, caller: Caller, user: Annotated[str | None, Query()] = None
) -> ConsentList:
    who = _user(caller, user)
    store = gateway(request).consents
    if not await asyncio.to_thread(store.revoke, caller.tenant, who, partner, _via(caller)):
        raise NotFound(f"no standing consent for {partner[:64]!r}", param="partner")
    infos = await asyncio.to_thread(store.active, caller.tenant, who)
    return ConsentList(data=[ConsentOut(partner=i.partner, granted_at=i.granted_at) for i in infos])


@router.get(
    "/admin/consent-events",
    response_model=ConsentEventList,
    summary="The consent audit trail (grants and revocations)",
)
async def events(
    request: Request,
    _admin: Admin,
    tenant: Annotated[str | None, Query()] = None,
    user: Annotated[str | None, Query()] = None,
) -> ConsentEventList:
    rows = await asyncio.to_thread(gateway(request).consents.events, tenant, user)
    return ConsentEventList(
        data=[ConsentEventOut.model_validate(r, from_attributes=True) for r in rows]
    )
