"""``/admin/usage`` and ``/admin/statements``: the reports of ``veil.ledger.reports``.

The admin key sees every tenant's usage and may filter by one; a tenant's key sees its own
tenant's usage only, and naming another tenant is refused, never answered. Statements are
for the admin key alone. Amounts are exact decimal strings in ``currency``.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from veil.api.deps import authenticate, gateway, require_admin, scoped_tenant
from veil.auth import Principal
from veil.ledger import reports

router = APIRouter(prefix="/admin", tags=["reports"])
Caller = Annotated[Principal, Depends(authenticate)]
Admin = Annotated[Principal, Depends(require_admin)]
PeriodQuery = Annotated[
    str,
    Query(
        description="YYYY-MM, YYYY-MM-DD or YYYY-MM-DD..YYYY-MM-DD (UTC, both days included).",
        max_length=64,
    ),
]
Amount = Annotated[
    str, Field(description="An exact decimal amount in `currency`.", examples=["0.00015"])
]


class PeriodOut(BaseModel):
    label: str
    start: str
    end: str


class UsageRowOut(BaseModel):
    group: str | None
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    billed: Amount
    cost: Amount


class UsageOut(BaseModel):
    object: str = "usage_report"
    by: str
    period: PeriodOut
    tenant: str | None
    currency: str
    data: list[UsageRowOut]
    total: UsageRowOut


class StatementLineOut(BaseModel):
    kind: str
    contract: str | None
    counterparty: str
    model: str | None
    tenant: str
    requests: int
    debits: Amount
    credits: Amount
    net: Amount


class StatementOut(BaseModel):
    object: str = "statement"
    account: str
    period: PeriodOut
    currency: str
    requests: int
    debits: Amount
    credits: Amount
    net: Amount
    lines: list[StatementLineOut]


@router.get("/usage", response_model=UsageOut, summary="Usage and amounts per group")
async def get_usage(
    request: Request,
    caller: Caller,
    period: PeriodQuery,
    by: Annotated[
        reports.UsageBy, Query(description="What to group the usage rows by.")
    ] = "tenant",
    tenant: Annotated[str | None, Query(max_length=128)] = None,
) -> UsageOut:
    tenant = scoped_tenant(caller, tenant)
    span = reports.parse_period(period)
    gw = gateway(request)
    report = await asyncio.to_thread(reports.usage_report, gw.engine, by, span, tenant)
    return UsageOut.model_validate(report.to_dict(gw.config.metering.currency))


@router.get("/statements", response_model=StatementOut, summary="A party's ledger lines and totals")
async def get_statement(
    request: Request,
    _admin: Admin,
    party: Annotated[
        str,
        Query(
            description="A party (openai), platform, or an account (tenant:acme).", max_length=160
        ),
    ],
    period: PeriodQuery,
) -> StatementOut:
    reports.account_for(party)
    span = reports.parse_period(period)
    gw = gateway(request)
    st = await asyncio.to_thread(reports.statement, gw.engine, party, span)
    return StatementOut.model_validate(st.to_dict(gw.config.metering.currency))
