"""``/v1/preferences``: the model a user wants for each task category (``model: "auto"``).

Preferences belong to a user: the key's own user, or — for a tenant's app key that serves
many users — the ``user`` the app names in the query. Users are stored only as salted
pseudonyms.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from veil.api.deps import acting_user, authenticate, gateway
from veil.auth import Principal

router = APIRouter(tags=["preferences"])
Caller = Annotated[Principal, Depends(authenticate)]
User = Annotated[str | None, Query(description="The user, for a key that serves many users.")]


class PreferencesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    preferences: dict[str, str] = Field(
        description='Task category → model, e.g. {"code": "claude-sonnet"}; replaces all.'
    )


class PreferencesOut(BaseModel):
    object: str = "preferences"
    preferences: dict[str, str]


def _user(principal: Principal, user: str | None) -> str:
    return acting_user(principal, user, "preferences belong to a user")


@router.get("/v1/preferences", response_model=PreferencesOut, summary="A user's model preferences")
async def get_preferences(request: Request, caller: Caller, user: User = None) -> PreferencesOut:
    store = gateway(request).preferences
    prefs = await asyncio.to_thread(store.get, caller.tenant, _user(caller, user))
    return PreferencesOut(preferences=prefs)


@router.put(
    "/v1/preferences",
    response_model=PreferencesOut,
    summary="Replace a user's model preferences",
)
async def put_preferences(
    body: PreferencesIn, request: Request, caller: Caller, user: User = None
) -> PreferencesOut:
    who = _user(caller, user)
    store = gateway(request).preferences
    prefs = await asyncio.to_thread(store.replace, caller.tenant, who, body.preferences)
    return PreferencesOut(preferences=prefs)
