"""Preferences: the model a user wants for each task category, used by ``model: "auto"``.

"Claude for coding, GPT for creative writing" is ``{"code": "claude-sonnet",
"creative_writing": "gpt-4o"}``; the key ``*`` stands for every category without a preference
of its own, as in the config's routing defaults. A preference only picks the model: policy
and consent still decide whether that model may serve the request. Users are known only by
their salted pseudonym here, as for consents.

Preferences are cached per user for ``cache_seconds``; a change made through this store (the
API, in-process) drops the cache entry at once, one made by another process (the CLI) is seen
within that time — as for API keys and standing consents.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from sqlalchemy import Engine, delete, select
from sqlalchemy.orm import Session

from veil.auth import TENANT_PATTERN, pseudonym
from veil.errors import InvalidRequest
from veil.store.models import Preference
from veil.tasks import CATEGORIES

MAX_MODEL_LENGTH = 256
ANY_CATEGORY = "*"
_ORDER: dict[str, int] = {c: i for i, c in enumerate((*CATEGORIES, ANY_CATEGORY))}


def check_category(category: str) -> str:
    """``category`` if it is one of ``CATEGORIES`` or ``*``; else an error that lists them."""
    if category not in _ORDER:
        raise InvalidRequest(
            f"{str(category)[:64]!r} is not a task category; the categories are "
            + ", ".join(CATEGORIES)
            + ", and '*' for every other one",
            param="preferences",
        )
    return category


class PreferenceStore:
    def __init__(
        self,
        engine: Engine,
        salt: str,
        cache_seconds: float = 5.0,
        *,
        known_model: Callable[[str], bool] | None = None,
    ) -> None:
        """``known_model`` says whether a model name can be served; without it, any name is
        accepted (it fails at request time, as a named model would)."""
        self._engine = engine
        self._salt = salt
        self._cache_seconds = cache_seconds
        self._known_model = known_model
        self._cache: dict[tuple[str, str], tuple[dict[str, str], float]] = {}

    def _user(self, user: str) -> str:
        hashed = pseudonym(self._salt, user)
        assert hashed is not None
        return hashed

    def _key(self, tenant: str, user: str) -> tuple[str, str]:
        if not re.fullmatch(TENANT_PATTERN, tenant):
            raise InvalidRequest("not a valid tenant name", param="tenant")
        if not 0 < len(user) <= 256:
            raise InvalidRequest("a user id is 1-256 characters", param="user")
        return tenant, self._user(user)

    # ------------------------------------------------------------ the hot path

    async def cached(self, tenant: str, user: str | None) -> dict[str, str]:
        """The user's category → model mapping (cached); empty without a user."""
        if user is None:
            return {}
        key = (tenant, self._user(user))
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[1] > now:
            return dict(hit[0])
        prefs = await asyncio.to_thread(self._load, *key)
        if self._cache_seconds > 0:
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[key] = (prefs, now + self._cache_seconds)
        return dict(prefs)

    def _load(self, tenant: str, user_hash: str) -> dict[str, str]:
        with Session(self._engine) as s:
            rows = s.execute(
                select(Preference.category, Preference.model).where(
                    Preference.tenant == tenant, Preference.user_hash == user_hash
                )
            ).all()
        # A category dropped from CATEGORIES since the row was written can never match: skip it.
        known = sorted((r for r in rows if r[0] in _ORDER), key=lambda r: _ORDER[r[0]])
        return {category: model for category, model in known}

    # ------------------------------------------------------------ managing

    def get(self, tenant: str, user: str) -> dict[str, str]:
        """The user's category → model mapping, in ``CATEGORIES`` order, ``*`` last."""
        return self._load(*self._key(tenant, user))

    def replace(self, tenant: str, user: str, prefs: Mapping[str, str]) -> dict[str, str]:
        """Make ``prefs`` the user's whole mapping (categories not in it are dropped)."""
        tenant, user_hash = self._key(tenant, user)
        checked = self._check(prefs)
        now = datetime.now(UTC)
        with Session(self._engine) as s, s.begin():
            s.execute(
                delete(Preference).where(
                    Preference.tenant == tenant, Preference.user_hash == user_hash
                )
            )
            s.add_all(
                Preference(tenant=tenant, user_hash=user_hash, category=c, model=m, updated_at=now)
                for c, m in checked.items()
            )
        self._cache.pop((tenant, user_hash), None)
        return checked

    def clear(self, tenant: str, user: str) -> int:
        """Drop all of the user's preferences; how many there were."""
        tenant, user_hash = self._key(tenant, user)
        with Session(self._engine) as s, s.begin():
            result = s.execute(
                delete(Preference).where(
                    Preference.tenant == tenant, Preference.user_hash == user_hash
                )
            )
            count = int(getattr(result, "rowcount", 0) or 0)
        self._cache.pop((tenant, user_hash), None)
        return count

    def _check(self, prefs: Mapping[str, str]) -> dict[str, str]:
        for category, model in prefs.items():
            check_category(category)
            if not isinstance(model, str) or not model.strip() or len(model) > MAX_MODEL_LENGTH:
                raise InvalidRequest(
                    f"the model for {category!r} must be a name of 1-{MAX_MODEL_LENGTH} characters",
                    param="preferences",
                )
            # "auto" would send the request back to the router that asked; "device" names a
            # tier, and a preference picks a model within the partner tier (docs/routing.md).
            if model in ("auto", "device"):
                raise InvalidRequest(
                    f"the model for {category!r} cannot be {model!r}: name a model",
                    param="preferences",
                )
            if self._known_model is not None and not self._known_model(model):
                raise InvalidRequest(
                    f"the model {model[:100]!r} (for {category!r}) does not exist; "
                    "GET /v1/models lists the models",
                    param="preferences",
                )
        return {c: prefs[c] for c in sorted(prefs, key=_ORDER.__getitem__)}
