"""Consent: nothing goes to a partner unless the user said yes to that partner.

Per request, the app sends ``x-veil-consent: openai`` (or ``*``) — as a phone asks each time
before handing a request to a partner. Or the user gives a standing consent, kept until
revoked. Users are known only by their salted pseudonym here; every grant and revocation is
appended to ``consent_events`` (time, tenant, user pseudonym, partner, scope, who did it).

Standing consents are cached per user for ``cache_seconds``; a change made through this
store (the API, in-process) drops the cache entry at once, one made by another process
(the CLI) is seen within that time — as for API keys.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from veil.auth import TENANT_PATTERN, pseudonym
from veil.errors import InvalidRequest
from veil.store.db import as_utc
from veil.store.models import Consent, ConsentEvent

ALL_PARTNERS = "*"
_PARTNER = re.compile(r"^(\*|[A-Za-z0-9][A-Za-z0-9_.\-]{0,63})$")


def parse_consent_header(value: str | None) -> frozenset[str]:
    """``x-veil-consent: openai, anthropic`` → {"openai", "anthropic"}; ``*`` → {"*"}."""
    if not value:
        return frozenset()
    return frozenset(p.strip().lower() for p in value.split(",") if p.strip())


def covers(partners: frozenset[str], partner: str | None) -> bool:
    return partner is not None and (ALL_PARTNERS in partners or partner.lower() in partners)


@dataclass(frozen=True, slots=True)
class ConsentInfo:
    partner: str
    granted_at: datetime


@dataclass(frozen=True, slots=True)
class ConsentEventInfo:
    at: datetime
    tenant: str
    user_hash: str
    partner: str
    action: str
    scope: str
    via: str


class ConsentStore:
    def __init__(self, engine: Engine, salt: str, cache_seconds: float = 5.0) -> None:
        self._engine = engine
        self._salt = salt
        self._cache_seconds = cache_seconds
        self._cache: dict[tuple[str, str], tuple[frozenset[str], float]] = {}

    def _user(self, user: str) -> str:
        hashed = pseudonym(self._salt, user)
        assert hashed is not None
        return hashed

    @staticmethod
    def _partner(partner: str) -> str:
        partner = partner.strip().lower()
        if not _PARTNER.match(partner):
            raise InvalidRequest("a partner is a name like 'openai', or '*'", param="partner")
        return partner

    # ------------------------------------------------------------ the hot path

    async def standing(self, tenant: str, user: str | None) -> frozenset[str]:
        """Partners the user has a standing consent for (cached)."""
        if user is None:
            return frozenset()
        key = (tenant, self._user(user))
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        partners = await asyncio.to_thread(self._load, *key)
        if self._cache_seconds > 0:
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[key] = (partners, now + self._cache_seconds)
        return partners

    def _load(self, tenant: str, user_hash: str) -> frozenset[str]:
        with Session(self._engine) as s:
            rows = s.scalars(
                select(Consent.partner).where(
                    Consent.tenant == tenant,
                    Consent.user_hash == user_hash,
                    Consent.revoked_at.is_(None),
                )
            ).all()
        return frozenset(rows)

    # ------------------------------------------------------------ managing

    def grant(self, tenant: str, user: str, partner: str, via: str) -> ConsentInfo:
        if not re.fullmatch(TENANT_PATTERN, tenant):
            raise InvalidRequest("not a valid tenant name", param="tenant")
        if not 0 < len(user) <= 256:
            raise InvalidRequest("a user id is 1-256 characters", param="user")
        partner, user_hash = self._partner(partner), self._user(user)
        now = datetime.now(UTC)
        with Session(self._engine, expire_on_commit=False) as s, s.begin():
            existing = s.scalar(
                select(Consent).where(
                    Consent.tenant == tenant,
                    Consent.user_hash == user_hash,
                    Consent.partner == partner,
                    Consent.revoked_at.is_(None),
                )
            )
            if existing is not None:
                return ConsentInfo(partner, as_utc(existing.granted_at))
            s.add(Consent(tenant=tenant, user_hash=user_hash, partner=partner, granted_at=now))
            s.add(_event(tenant, user_hash, partner, "grant", via, now))
        self._cache.pop((tenant, user_hash), None)
        return ConsentInfo(partner, now)

    def revoke(self, tenant: str, user: str, partner: str, via: str) -> bool:
        """Revoke a standing consent; False if there was none."""
        partner, user_hash = self._partner(partner), self._user(user)
        now = datetime.now(UTC)
        with Session(self._engine) as s, s.begin():
            result = s.execute(
                update(Consent)
                .where(
                    Consent.tenant == tenant,
                    Consent.user_hash == user_hash,
                    Consent.partner == partner,
                    Consent.revoked_at.is_(None),
                )
                .values(revoked_at=now)
            )
            found = bool(getattr(result, "rowcount", 0))
            if found:
                s.add(_event(tenant, user_hash, partner, "revoke", via, now))
        self._cache.pop((tenant, user_hash), None)
        return found

    def active(self, tenant: str, user: str) -> list[ConsentInfo]:
        user_hash = self._user(user)
        with Session(self._engine) as s:
            rows = s.scalars(
                select(Consent)
                .where(
                    Consent.tenant == tenant,
                    Consent.user_hash == user_hash,
                    Consent.revoked_at.is_(None),
                )
                .order_by(Consent.granted_at)
            ).all()
        return [ConsentInfo(r.partner, as_utc(r.granted_at)) for r in rows]

    def events(self, tenant: str | None = None, user: str | None = None) -> list[ConsentEventInfo]:
        query = select(ConsentEvent).order_by(ConsentEvent.at, ConsentEvent.id)
        if tenant is not None:
            query = query.where(ConsentEvent.tenant == tenant)
        if user is not None:
            query = query.where(ConsentEvent.user_hash == self._user(user))
        with Session(self._engine) as s:
            rows = s.scalars(query).all()
        return [
            ConsentEventInfo(
                as_utc(r.at), r.tenant, r.user_hash, r.partner, r.action, r.scope, r.via
            )
            for r in rows
        ]


def _event(
    tenant: str, user_hash: str, partner: str, action: str, via: str, at: datetime
) -> ConsentEvent:
    return ConsentEvent(
        at=at,
        tenant=tenant,
        user_hash=user_hash,
        partner=partner,
        action=action,
        scope="standing",
        via=via,
    )
