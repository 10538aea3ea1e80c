"""``/admin``: key management and private-node status. Every route needs the admin key."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from veil.api.deps import gateway, require_admin
from veil.auth import TENANT_PATTERN, KeyInfo, Principal

router = APIRouter(prefix="/admin", tags=["admin"])
Admin = Annotated[Principal, Depends(require_admin)]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant: str = Field(min_length=1, max_length=128, pattern=TENANT_PATTERN)
    user: str | None = Field(None, min_length=1, max_length=256)


class KeyCreated(BaseModel):
    id: str
    key: str = Field(description="The API key. Shown only in this answer; Veil keeps its hash.")
    tenant: str
    user: str | None
    created_at: datetime


class KeyOut(BaseModel):
    id: str
    prefix: str
    tenant: str
    user: str | None
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, info: KeyInfo) -> KeyOut:
        return cls.model_validate(info, from_attributes=True)


class KeyList(BaseModel):
    object: str = "list"
    data: list[KeyOut]


@router.post("/keys", status_code=201, response_model=KeyCreated, summary="Issue an API key")
async def create_key(body: KeyCreate, request: Request, _admin: Admin) -> KeyCreated:
    issued = await asyncio.to_thread(gateway(request).keys.create, body.tenant, body.user)
    return KeyCreated.model_validate(issued, from_attributes=True)


@router.get("/keys", response_model=KeyList, summary="List API keys (never the keys themselves)")
async def list_keys(request: Request, _admin: Admin, tenant: str | None = None) -> KeyList:
    infos = await asyncio.to_thread(gateway(request).keys.list, tenant)
    return KeyList(data=[KeyOut.of(i) for i in infos])


@router.delete("/keys/{key_id}", response_model=KeyOut, summary="Revoke an API key")
async def revoke_key(key_id: str, request: Request, _admin: Admin) -> KeyOut:
    return KeyOut.of(await asyncio.to_thread(gateway(request).keys.revoke, key_id))


class NodeOut(BaseModel):
    provider: str
    url: str
    state: str = Field(description="attested or refused")
    reason: str | None = Field(description="Why it is refused: not_in_log, expired, fork, …")
    detail: str | None
    measurement: str | None
    model: str | None
    release: dict[str, Any] | None = Field(
        description="The log entry the measurement was proven in: index, name, version"
    )
    expires_ms: int | None
    checked_ms: int | None = Field(description="When it was last checked, ms since the epoch")


class NodeList(BaseModel):
    object: str = "list"
    data: list[NodeOut]


@router.get(
    "/nodes", response_model=NodeList, summary="Private nodes: attested or refused, and why"
)
async def list_nodes(request: Request, _admin: Admin) -> NodeList:
    from veil.providers.private_node import PrivateNodeProvider

    data = [
        NodeOut(provider=name, **node)
        for name, provider in gateway(request).providers.items()
        if isinstance(provider, PrivateNodeProvider)
        for node in provider.status()
    ]
    return NodeList(data=data)


class ReleaseList(BaseModel):
    object: str = "list"
    #: Gated models that may not be routed now (no passing red-team run for their version).
    pending: list[str]
    data: list[dict[str, Any]] = Field(
        description="Each red-team result: model, version, status, rates, counts, run_at"
    )


@router.get(
    "/releases",
    response_model=ReleaseList,
    summary="The release gate: red-team results and the models still pending",
)
async def list_releases(request: Request, _admin: Admin) -> ReleaseList:
    from veil.safety.release import releases

    gw = gateway(request)
    data = await asyncio.to_thread(releases, gw.engine)
    return ReleaseList(pending=sorted(gw.router.pending), data=data)
