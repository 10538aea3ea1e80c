"""Rate limits and budgets per tenant, user and API key, checked before dispatch.

Three measures per *scope* (a tenant, one user of a tenant, one API key):

* requests per minute — requests admitted in the last 60 seconds;
* tokens per minute — prompt and completion tokens metered in the last 60 seconds;
* a budget — money billed in the current calendar day or month (UTC).

A minute is sixty one-second buckets, so "the last 60 seconds" is exact to the second and a
limit never resets all at once at a minute boundary. A request is admitted only if every
scope it belongs to has room; then (atomically with the check) it is counted against each.
Tokens and money are known only once a request is metered; they are added then, and the
checks compare what has been used so far — so a token limit or a budget can be overshot by
the requests admitted before it was reached and still being answered (at most one each,
per request in flight).

``LocalLimiter`` keeps the counters in the process (one replica). ``RedisLimiter`` keeps
them in Redis, checked and counted in one Lua script, so five replicas enforce the same
limit one would. Budgets start from what the database says was spent in the period (the
first time a scope is seen, or when Redis has lost its counter).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from veil.config import Config, Limit, LimitsConfig
from veil.errors import BudgetExceeded, RateLimited
from veil.ledger.money import format_amount, units

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("veil.limits")

WINDOW = 60


@dataclass(frozen=True, slots=True)
class Scope:
    """One caller a limit applies to."""

    #: ``tenant``, ``user`` or ``key``.
    kind: str
    #: The tenant's name, ``tenant/user-pseudonym`` or the key id.
    ident: str
    #: How messages name it.
    label: str
    limit: Limit
    tenant: str
    #: The budget in units (``veil.ledger.money``), if any.
    budget: int | None = None

    @property
    def key(self) -> str:
        """Where its counters are kept (a tenant and a key id may share a name)."""
        return f"{self.kind}:{self.ident}"


def period_bounds(period: str, now: datetime) -> tuple[datetime, datetime]:
    """The calendar day or month (UTC) containing ``now``: [start, end)."""
    if period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return start, start + timedelta(days=1)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


class _Periods:
    """The current day and month, recomputed only when one ends (checked on every request)."""

    def __init__(self) -> None:
        self._current: dict[str, tuple[datetime, datetime, float]] = {}

    def bounds(self, period: str, now: float) -> tuple[datetime, datetime]:
        found = self._current.get(period)
        if found is None or now >= found[2] or now < found[0].timestamp():
            start, end = period_bounds(period, datetime.fromtimestamp(now, UTC))
            found = self._current[period] = (start, end, end.timestamp())
        return found[0], found[1]


#: Seeds a budget: (scope, period start, period end) → units billed in that period.
Spent = Callable[[Scope, datetime, datetime], Awaitable[int]]


class Limits:
    """Which scopes (with which limits) a request belongs to, from the config."""

    def __init__(self, config: Config) -> None:
        self._global = config.limits
        self._tenants: dict[str, LimitsConfig] = {
            t.name: t.limits for t in config.tenants if t.limits is not None
        }
        self.currency = config.metering.currency
        self.active = any(
            lim is not None and lim.any()
            for cfg in (self._global, *self._tenants.values())
            for lim in (cfg.tenant, cfg.user, cfg.key)
        )
        self._cache: dict[tuple[str, str | None, str | None], list[Scope]] = {}

    def _limit(self, tenant: str, kind: str) -> Limit | None:
        own = self._tenants.get(tenant)
        limit: Limit | None = getattr(own, kind) if own is not None else None
        if limit is None:
            limit = getattr(self._global, kind)
        return limit if limit is not None and limit.any() else None

    def scopes(self, tenant: str, user_hash: str | None, key_id: str | None) -> list[Scope]:
        key = (tenant, user_hash, key_id)
        found = self._cache.get(key)
        if found is None:
            if len(self._cache) >= 100_000:
                self._cache.clear()
            found = self._cache[key] = self._scopes(tenant, user_hash, key_id)
        return found

    def _scopes(self, tenant: str, user_hash: str | None, key_id: str | None) -> list[Scope]:
        found: list[Scope] = []
        for kind, ident, label in (
            ("tenant", tenant, f"tenant {tenant}"),
            ("user", f"{tenant}/{user_hash}" if user_hash else None, "this user"),
            ("key", key_id, f"key {key_id}"),
        ):
            if ident is None:
                continue
            limit = self._limit(tenant, kind)
            if limit is not None:
                budget = units(limit.budget.amount) if limit.budget else None
                found.append(Scope(kind, ident, label, limit, tenant, budget))
        return found


def _rate_error(scope: Scope, what: str, limit: int, wait: float) -> RateLimited:
    return RateLimited(
        f"rate limit reached: {scope.label} may use {limit} {what} per minute; "
        f"retry in {max(1, round(wait))} s",
        retry_after=wait,
    )


def _budget_error(scope: Scope, currency: str, spent: int, end: datetime) -> BudgetExceeded:
    assert scope.limit.budget is not None
    assert scope.budget is not None
    budget = scope.limit.budget
    wait = (end - datetime.now(UTC)).total_seconds()
    return BudgetExceeded(
        f"budget spent: {scope.label} may spend {format_amount(scope.budget)} {currency} per "
        f"{budget.period} and has spent {format_amount(spent)}; it renews at "
        f"{end:%Y-%m-%dT%H:%MZ}",
        retry_after=max(1.0, wait),
    )


# ------------------------------------------------------------------ in one process


@dataclass(slots=True)
class _Window:
    """Counts in one-second buckets over the last ``WINDOW`` seconds."""

    buckets: dict[int, int] = field(default_factory=dict)
    total: int = 0
    #: The oldest second with a bucket (nothing to expire while it is in the window).
    first: int = 0

    def _expire(self, now: int) -> None:
        oldest = now - WINDOW
        if self.first > oldest or not self.buckets:
            return
        stale = [s for s in self.buckets if s <= oldest]
        for s in stale:
            self.total -= self.buckets.pop(s)
        self.first = min(self.buckets, default=now)

    def used(self, now: int) -> int:
        self._expire(now)
        return self.total

    def add(self, now: int, n: int) -> None:
        if not self.buckets:
            self.first = now
        self.buckets[now] = self.buckets.get(now, 0) + n
        self.total += n

    def wait(self, now: int, room: int) -> float:
        """Seconds until the window's total is at most ``room``."""
        freed = 0
        for second in sorted(self.buckets):
            freed += self.buckets[second]
            if self.total - freed <= room:
                return float(second + WINDOW - now)
        return float(WINDOW)


class LocalLimiter:
    """Counters in this process: right for one replica (the embedded default)."""

    def __init__(self, limits: Limits, spent: Spent) -> None:
        self.limits = limits
        self._spent = spent
        self._requests: dict[str, _Window] = {}
        self._tokens: dict[str, _Window] = {}
        #: Scope key → (the current period's start, units billed in it).
        self._budgets: dict[str, tuple[datetime, int]] = {}
        self._periods = _Periods()

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def admit(self, scopes: Sequence[Scope]) -> None:
        clock = time.time()
        periods: list[tuple[datetime, datetime] | None] = []
        for scope in scopes:
            if scope.limit.budget is None:
                periods.append(None)
                continue
            start, end = self._periods.bounds(scope.limit.budget.period, clock)
            periods.append((start, end))
            known = self._budgets.get(scope.key)
            if known is None or known[0] != start:  # first seen, or a new period began
                seeded = await self._spent(scope, start, end)
                known = self._budgets.get(scope.key)
                if known is None or known[0] != start:
                    self._budgets[scope.key] = (start, seeded)
        # From here to the end nothing awaits: checking and counting are one step.
        now = int(clock)
        for scope, bounds in zip(scopes, periods, strict=True):
            rpm = scope.limit.requests_per_minute
            if rpm is not None:
                window = self._window(self._requests, scope.key)
                if window.used(now) + 1 > rpm:
                    raise _rate_error(scope, "requests", rpm, window.wait(now, rpm - 1))
            tpm = scope.limit.tokens_per_minute
            if tpm is not None:
                window = self._window(self._tokens, scope.key)
                if window.used(now) >= tpm:
                    raise _rate_error(scope, "tokens", tpm, window.wait(now, tpm - 1))
            if bounds is not None and scope.budget is not None:
                spent = self._budgets[scope.key][1]
                if spent >= scope.budget:
                    raise _budget_error(scope, self.limits.currency, spent, bounds[1])
        for scope in scopes:
            if scope.limit.requests_per_minute is not None:
                self._requests[scope.key].add(now, 1)

    @staticmethod
    def _window(windows: dict[str, _Window], key: str) -> _Window:
        window = windows.get(key)
        if window is None:
            if len(windows) >= 50_000:  # forget callers idle for a minute
                now = int(time.time())
                for idle in [k for k, w in windows.items() if not w.used(now)]:
                    del windows[idle]
            window = windows[key] = _Window()
        return window

    def used(self, scopes: Sequence[Scope], tokens: int, billed: int) -> None:
        """A request was metered: count its tokens and what it was billed."""
        clock = time.time()
        now = int(clock)
        for scope in scopes:
            if tokens and scope.limit.tokens_per_minute is not None:
                self._window(self._tokens, scope.key).add(now, tokens)
            if billed and scope.limit.budget is not None:
                start, _ = self._periods.bounds(scope.limit.budget.period, clock)
                known = self._budgets.get(scope.key)
                # Not seeded for this period yet: the database will have it when it is.
                if known is not None and known[0] == start:
                    self._budgets[scope.key] = (start, known[1] + billed)


# ------------------------------------------------------------------ shared in Redis

# KEYS: per scope, its request window, token window and budget counter.
# ARGV: now (s), scope count, then per scope: rpm, tpm, budget (0 = none).
# Returns {} when admitted, else {scope index, measure, seconds to wait (or spent)}.
_ADMIT = """
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local function window(key)
  local vals = redis.call('HGETALL', key)
  local total, entries, stale = 0, {}, {}
  for i = 1, #vals, 2 do
    local sec, c = tonumber(vals[i]), tonumber(vals[i + 1])
    if sec <= now - 60 then
      stale[#stale + 1] = vals[i]
    else
      total = total + c
      entries[#entries + 1] = {sec, c}
    end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  return total, entries
end
local function wait(entries, total, room)
  table.sort(entries, function(a, b) return a[1] < b[1] end)
  local freed = 0
  for _, e in ipairs(entries) do
    freed = freed + e[2]
    if total - freed <= room then return e[1] + 60 - now end
  end
  return 60
end
for i = 0, n - 1 do
  local rpm, tpm = tonumber(ARGV[3 + i * 3]), tonumber(ARGV[4 + i * 3])
  local budget = tonumber(ARGV[5 + i * 3])
  if rpm > 0 then
    local total, entries = window(KEYS[1 + i * 3])
    if total + 1 > rpm then return {i, 'requests', wait(entries, total, rpm - 1)} end
  end
  if tpm > 0 then
    local total, entries = window(KEYS[2 + i * 3])
    if total >= tpm then return {i, 'tokens', wait(entries, total, tpm - 1)} end
  end
  if budget > 0 then
    local spent = redis.call('GET', KEYS[3 + i * 3])
    if not spent then return {i, 'seed', 0} end
    if tonumber(spent) >= budget then return {i, 'budget', spent} end
  end
end
for i = 0, n - 1 do
  if tonumber(ARGV[3 + i * 3]) > 0 then
    redis.call('HINCRBY', KEYS[1 + i * 3], ARGV[1], 1)
    redis.call('EXPIRE', KEYS[1 + i * 3], 120)
  end
end
return {}
"""

# KEYS: token windows then budget counters; ARGV: now, count of token windows, then the
# amounts in the same order. A budget counter Redis has lost is left to be seeded again.
_USED = """
local now = ARGV[1]
local windows = tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  local n = ARGV[2 + i]
  if i <= windows then
    redis.call('HINCRBY', key, now, n)
    redis.call('EXPIRE', key, 120)
  elseif redis.call('EXISTS', key) == 1 then
    redis.call('INCRBY', key, n)
  end
end
return 0
"""

#: Budget counters in Redis are in thousands of units (10⁻⁹ currency), rounded up, so
#: that Lua's doubles compare them exactly up to 9 million currency units per period.
_BUDGET_SCALE = 1000


def _scaled(amount: int) -> int:
    return -(-amount // _BUDGET_SCALE)


class RedisLimiter:
    """Counters in Redis, shared by every replica. Token and money counts are sent in
    batches (every ``interval`` seconds); admission is one round trip."""

    def __init__(
        self, limits: Limits, spent: Spent, url: str, prefix: str, interval: float = 0.05
    ) -> None:
        from redis.asyncio import Redis

        self.limits = limits
        self._spent = spent
        self._redis: Redis = Redis.from_url(url)
        self._prefix = prefix
        self._interval = interval
        self._admit = self._redis.register_script(_ADMIT)
        self._used = self._redis.register_script(_USED)
        self._tokens: dict[tuple[str, int], int] = {}
        self._money: dict[tuple[str, datetime], tuple[int, datetime]] = {}
        self._task: asyncio.Task[None] | None = None
        #: Requests admitted unchecked because Redis could not be reached.
        self.unavailable = 0

    def _key(self, what: str, ident: str, extra: str = "") -> str:
        return f"{self._prefix}{what}:{ident}{extra}"

    def _budget_key(self, scope: Scope, start: datetime) -> str:
        assert scope.limit.budget is not None
        return self._key("spent", scope.key, f":{scope.limit.budget.period}:{start:%Y-%m-%d}")

    async def start(self) -> None:
        from redis.exceptions import RedisError

        try:
            await self._redis.ping()  # type: ignore[misc]
        except RedisError as exc:
            # Same rule as for a request: the gateway serves, limits fail open, and it says so.
            log.error(
                "rate-limit store unreachable at start (%s): limits are not enforced until "
                "it answers",
                type(exc).__name__,
            )
        self._task = asyncio.create_task(self._run(), name="veil-limits-writer")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self._flush()
        await self._redis.aclose()

    async def admit(self, scopes: Sequence[Scope]) -> None:
        """Check and count in Redis. If Redis cannot be reached the request is let through
        (fail open: a limit store outage must not take the gateway down) and it is logged."""
        from redis.exceptions import RedisError

        try:
            await self._admit_in_redis(scopes)
        except RedisError as exc:
            self.unavailable += 1
            if self.unavailable % 1000 == 1:
                log.error(
                    "rate-limit store unreachable (%s): admitting without limits (%d so far)",
                    type(exc).__name__,
                    self.unavailable,
                )

    async def _admit_in_redis(self, scopes: Sequence[Scope]) -> None:
        now_dt = datetime.now(UTC)
        keys: list[str] = []
        args: list[Any] = [int(time.time()), len(scopes)]
        ends: list[tuple[datetime, datetime] | None] = []
        for scope in scopes:
            bounds = None
            budget = 0
            if scope.limit.budget is not None and scope.budget is not None:
                bounds = period_bounds(scope.limit.budget.period, now_dt)
                budget = _scaled(scope.budget)
            ends.append(bounds)
            keys += [
                self._key("req", scope.key),
                self._key("tok", scope.key),
                self._budget_key(scope, bounds[0]) if bounds else self._key("none", ""),
            ]
            args += [
                scope.limit.requests_per_minute or 0,
                scope.limit.tokens_per_minute or 0,
                budget,
            ]
        for _ in range(len(scopes) + 1):
            answer = await self._admit(keys=keys, args=args)
            if not answer:
                return
            index, measure, value = int(answer[0]), answer[1].decode(), answer[2]
            scope = scopes[index]
            if measure == "seed":
                bounds = ends[index]
                assert bounds is not None
                seeded = await self._spent(scope, *bounds)
                await self._redis.set(
                    keys[3 * index + 2],
                    _scaled(seeded),
                    nx=True,
                    exat=int(bounds[1].timestamp()) + 86_400,
                )
                continue
            if measure == "budget":
                bounds = ends[index]
                assert bounds is not None
                raise _budget_error(
                    scope, self.limits.currency, int(value) * _BUDGET_SCALE, bounds[1]
                )
            limit = (
                scope.limit.requests_per_minute
                if measure == "requests"
                else scope.limit.tokens_per_minute
            )
            assert limit is not None
            raise _rate_error(scope, measure, limit, float(value))
        raise RuntimeError("budget counters could not be seeded")

    def used(self, scopes: Sequence[Scope], tokens: int, billed: int) -> None:
        now = int(time.time())
        now_dt = datetime.now(UTC)
        for scope in scopes:
            if tokens and scope.limit.tokens_per_minute is not None:
                key = (self._key("tok", scope.key), now)
                self._tokens[key] = self._tokens.get(key, 0) + tokens
            if billed and scope.limit.budget is not None:
                start, _ = period_bounds(scope.limit.budget.period, now_dt)
                bkey = (self._budget_key(scope, start), start)
                so_far = self._money.get(bkey, (0, start))[0]
                self._money[bkey] = (so_far + billed, start)

    async def _flush(self) -> None:
        if not self._tokens and not self._money:
            return
        tokens, self._tokens = self._tokens, {}
        money, self._money = self._money, {}
        # One call per second of token buckets (rarely more than one).
        by_second: dict[int, list[tuple[str, int]]] = {}
        for (key, second), n in tokens.items():
            by_second.setdefault(second, []).append((key, n))
        seconds = sorted(by_second) or [int(time.time())]
        for n_call, second in enumerate(seconds):
            windows = by_second.get(second, [])
            budgets = [(k, _scaled(v)) for (k, _), (v, _) in money.items()] if n_call == 0 else []
            keys = [k for k, _ in windows] + [k for k, _ in budgets]
            if not keys:
                continue
            amounts = [n for _, n in windows] + [n for _, n in budgets]
            await self._used(keys=keys, args=[second, len(windows), *amounts])

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._flush()
            except Exception as exc:  # Redis down: limits lag, requests go on
                log.error("updating shared limit counters failed: %s", type(exc).__name__)


Limiter = LocalLimiter | RedisLimiter
