"""Circuit breakers and retry backoff: how dispatch treats upstreams that fail.

One breaker per deployment (provider and upstream model). ``closed``: calls go through and
consecutive failures are counted. After ``failures`` in a row it opens: calls are refused
at once, without touching the upstream, for ``cooldown`` seconds. Then it is half-open:
exactly one call (the probe) goes through; its success closes the breaker, its failure opens
it for another cooldown. Only the upstream's own failures count (5xx, 429, timeouts,
dropped connections), never a caller's bad request.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from veil.config import BreakerConfig, RetryConfig
from veil.errors import VeilError

State = Literal["closed", "open", "half_open"]
STATE_VALUES: dict[State, int] = {"closed": 0, "half_open": 1, "open": 2}
#: Upstream failures worth another try: at the next deployment, and (except timeouts, 504)
#: at the same one after a backoff.
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})


def retryable(error: VeilError) -> bool:
    return error.status in RETRYABLE_STATUSES


def is_timeout(error: VeilError) -> bool:
    return error.status == 504


@dataclass(slots=True)
class Breaker:
    config: BreakerConfig
    on_change: Callable[[State], None] | None = None
    clock: Callable[[], float] = time.monotonic
    state: State = "closed"
    failures: int = 0
    opened_at: float = 0.0
    probing: bool = False

    def allow(self) -> bool:
        """May a call go through now? In half-open state, only one at a time."""
        if self.state == "closed":
            return True
        if self.state == "open":
            if self.clock() - self.opened_at < self.config.cooldown:
                return False
            self._set("half_open")
        if self.probing:
            return False
        self.probing = True
        return True

    def retry_after(self) -> float:
        """Seconds until an open breaker lets a probe through."""
        if self.state != "open":
            return 0.0
        return max(0.0, self.config.cooldown - (self.clock() - self.opened_at))

    def success(self) -> None:
        self.failures = 0
        self.probing = False
        if self.state != "closed":
            self._set("closed")

    def failure(self) -> None:
        self.probing = False
        self.failures += 1
        if self.state == "half_open" or self.failures >= self.config.failures:
            self.opened_at = self.clock()
            if self.state != "open":
                self._set("open")

    def release(self) -> None:
        """A call that ended neither way (the caller left, a bad request): free the probe."""
        self.probing = False

    def _set(self, state: State) -> None:
        self.state = state
        if self.on_change is not None:
            self.on_change(state)


class Breakers:
    """The breakers of every deployment, created on first use."""

    def __init__(
        self,
        config: BreakerConfig,
        on_change: Callable[[str, str, State], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._on_change = on_change
        self._clock = clock
        self._breakers: dict[tuple[str, str], Breaker] = {}

    def get(self, provider: str, model: str) -> Breaker:
        key = (provider, model)
        breaker = self._breakers.get(key)
        if breaker is None:
            notify = None
            if self._on_change is not None:
                on_change = self._on_change

                def notify(state: State) -> None:
                    on_change(provider, model, state)

            breaker = Breaker(self._config, notify, self._clock)
            self._breakers[key] = breaker
            if notify is not None:  # so that /metrics shows closed breakers too
                notify("closed")
        return breaker

    def states(self) -> list[dict[str, object]]:
        """Every breaker used so far: its deployment, state, failures and wait (this process's)."""
        return [
            {
                "provider": provider,
                "model": model,
                "state": b.state,
                "failures": b.failures,
                "retry_after": round(b.retry_after(), 3),
            }
            for (provider, model), b in sorted(self._breakers.items())
        ]


def backoff(config: RetryConfig, attempt: int, retry_after: float | None = None) -> float | None:
    """Seconds to wait before retry ``attempt`` (1-based), full jitter; ``None`` when the
    upstream asked for a longer wait than retrying here is worth (try elsewhere)."""
    if retry_after is not None and retry_after > config.backoff_max:
        return None
    ceiling = min(config.backoff_max, config.backoff * (2 ** (attempt - 1)))
    wait = random.uniform(0, ceiling)
    return max(wait, retry_after or 0.0)
