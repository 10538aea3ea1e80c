"""API keys: issuing, hashing, verifying, revoking; and the admin key.

Keys are random 256-bit secrets shown once; only their SHA-256 is stored. A slow hash would
buy nothing for keys of that entropy and would cost on every request. Verified keys are
cached for ``server.key_cache_seconds`` so the hot path rarely touches the database; a key
revoked through the admin API is dropped from the cache at once, one revoked from the CLI of
another process stops working within that many seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from veil.errors import (
    AuthenticationFailed,
    ConfigError,
    ConfigProblem,
    InvalidRequest,
    NotFound,
)
from veil.store import db
from veil.store.models import ApiKey

KEY_PREFIX = "veil-"
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
ADMIN_KEY_MIN_LENGTH = 32


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling."""

    tenant: str
    user: str | None = None
    key_id: str | None = None
    admin: bool = False


@dataclass(frozen=True, slots=True)
class IssuedKey:
    id: str
    key: str
    tenant: str
    user: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: str
    prefix: str
    tenant: str
    user: str | None
    created_at: datetime
    revoked_at: datetime | None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


ADMIN_PRINCIPAL = Principal(tenant="admin", admin=True)
DEV_PRINCIPAL = Principal(tenant="dev", user=None)


class KeyStore:
    def __init__(self, engine: Engine, cache_seconds: float = 5.0) -> None:
        self._engine = engine
        self._cache_seconds = cache_seconds
        # key hash -> (principal, expiry on the monotonic clock)
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._admin_hash: str | None = None

    # ---------------------------------------------------------------- admin key

    def setup_admin_key(self, home: Path) -> str | None:
        """Decide the admin key. Returns the new key if one was generated (show it once).

        ``VEIL_ADMIN_KEY`` wins; otherwise the hash stored at the first start is used;
        otherwise a key is generated, its hash stored and the key written to
        ``$VEIL_HOME/admin_key`` with mode 0600.
        """
        env_key = os.environ.get("VEIL_ADMIN_KEY")
        if env_key is not None:
            if len(env_key) < ADMIN_KEY_MIN_LENGTH:
                raise ConfigError(
                    [
                        ConfigProblem(
                            "environment",
                            None,
                            "VEIL_ADMIN_KEY",
                            f"must be at least {ADMIN_KEY_MIN_LENGTH} characters",
                        )
                    ]
                )
            self._admin_hash = hash_key(env_key)
            return None
        stored = db.get_meta(self._engine, "admin_key_hash")
        if stored is not None:
            self._admin_hash = stored
            return None
        key = KEY_PREFIX + "admin-" + secrets.token_urlsafe(32)
        # Replicas starting together on a new database race here: the first hash stored
        # wins, and a replica that lost uses it (the key is in the winner's admin_key file).
        stored = db.add_meta(self._engine, "admin_key_hash", hash_key(key))
        self._admin_hash = stored
        if stored != hash_key(key):
            return None
        path = home / "admin_key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        os.chmod(path, 0o600)
        return key

    # ---------------------------------------------------------------- verifying

    async def authenticate(self, authorization: str | None) -> Principal:
        """Map an ``Authorization`` header to a principal, or raise 401."""
        if not authorization:
            raise AuthenticationFailed(
                "missing API key: send 'Authorization: Bearer <key>'", code="missing_api_key"
            )
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationFailed("the Authorization header must be 'Bearer <key>'")
        digest = hash_key(token)
        if self._admin_hash is not None and hmac.compare_digest(digest, self._admin_hash):
            return ADMIN_PRINCIPAL
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[1] > now:
            return hit[0]
        principal = await asyncio.to_thread(self._lookup, digest)
        if principal is None:
            self._cache.pop(digest, None)
            raise AuthenticationFailed("invalid or revoked API key")
        if self._cache_seconds > 0:
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[digest] = (principal, now + self._cache_seconds)
        return principal

    def _lookup(self, digest: str) -> Principal | None:
        with Session(self._engine) as s:
            row = s.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
        # The indexed lookup is by hash, so the database never compares the secret itself;
        # compare_digest keeps the final check constant-time all the same.
        if (
            row is None
            or row.revoked_at is not None
            or not hmac.compare_digest(row.key_hash, digest)
        ):
            return None
        return Principal(tenant=row.tenant, user=row.user, key_id=row.id)

    # ---------------------------------------------------------------- managing

    def create(self, tenant: str, user: str | None = None) -> IssuedKey:
        if not re.fullmatch(TENANT_PATTERN, tenant):
            raise InvalidRequest(
                "a tenant is 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
                param="tenant",
            )
        if user is not None and not 0 < len(user) <= 256:
            raise InvalidRequest("a user id is 1-256 characters", param="user")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        row = ApiKey(
            id="key_" + secrets.token_hex(6),
            key_hash=hash_key(key),
            prefix=key[:12],
            tenant=tenant,
            user=user,
            created_at=datetime.now(UTC),
        )
        with Session(self._engine, expire_on_commit=False) as s, s.begin():
            s.add(row)
        return IssuedKey(row.id, key, tenant, user, row.created_at)

    def list(self, tenant: str | None = None, include_revoked: bool = True) -> list[KeyInfo]:
        query = select(ApiKey).order_by(ApiKey.created_at)
        if tenant is not None:
            query = query.where(ApiKey.tenant == tenant)
        if not include_revoked:
            query = query.where(ApiKey.revoked_at.is_(None))
        with Session(self._engine) as s:
            rows = s.scalars(query).all()
        return [_info(r) for r in rows]

    def revoke(self, key_id: str) -> KeyInfo:
        with Session(self._engine, expire_on_commit=False) as s, s.begin():
            row = s.get(ApiKey, key_id)
            if row is None:
                raise NotFound(f"no API key with id {key_id!r}", param="key_id")
            if row.revoked_at is None:
                s.execute(
                    update(ApiKey).where(ApiKey.id == key_id).values(revoked_at=datetime.now(UTC))
                )
            s.refresh(row)
            info = _info(row)
            digest = row.key_hash
        self._cache.pop(digest, None)
        return info


def _info(row: ApiKey) -> KeyInfo:
    revoked = db.as_utc(row.revoked_at) if row.revoked_at is not None else None
    return KeyInfo(row.id, row.prefix, row.tenant, row.user, db.as_utc(row.created_at), revoked)


def pseudonym(salt: str, user: str | None) -> str | None:
    """A stable, salted, one-way pseudonym for a user id (for usage rows)."""
    if user is None:
        return None
    return hmac.new(salt.encode(), user.encode(), hashlib.sha256).hexdigest()[:32]
