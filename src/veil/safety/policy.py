"""Per-tenant safety policy: for each category a threshold and an action.

A category's rule is the first found of: the tenant's rule for it, the tenant's ``*``, the
global rule for it, the global ``*``, and the default — block at the local classifier's own
threshold for the category (0.5 for a category only a remote moderator judges).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from veil.config import CategoryRule, SafetyConfig, SafetyPolicyConfig, TenantConfig
from veil.safety import ALL_CATEGORIES, Verdict

Action = Literal["block", "flag", "allow"]
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy makes of a verdict: the categories that block and those flagged."""

    blocked: tuple[str, ...] = ()
    flagged: tuple[str, ...] = ()

    @property
    def action(self) -> Action:
        return "block" if self.blocked else "flag" if self.flagged else "allow"

    def summary(self, stage: str) -> str | None:
        """For the usage row and the ``x-veil-moderation`` header: no text, categories only."""
        if self.blocked:
            return f"{stage}:block:{','.join(self.blocked)}"
        if self.flagged:
            return f"{stage}:flag:{','.join(self.flagged)}"
        return None


ALLOWED = Decision()


class SafetyPolicy:
    def __init__(
        self,
        config: SafetyConfig,
        tenants: list[TenantConfig],
        thresholds: Mapping[str, float] | None = None,
    ) -> None:
        own = dict(thresholds or {})
        block: Action = "block"
        self._default = {c: (own.get(c, DEFAULT_THRESHOLD), block) for c in ALL_CATEGORIES}
        self._global = self._resolve(config.policy, self._default)
        self._tenants = {
            t.name: self._resolve(t.safety, self._global) for t in tenants if t.safety is not None
        }

    @staticmethod
    def _resolve(
        policy: SafetyPolicyConfig | None, base: dict[str, tuple[float, Action]]
    ) -> dict[str, tuple[float, Action]]:
        if policy is None:
            return base
        rules = dict(base)
        star = policy.categories.get("*")
        for category in ALL_CATEGORIES:
            rule: CategoryRule | None = policy.categories.get(category) or star  # type: ignore[call-overload]
            if rule is not None:
                threshold = rule.threshold if rule.threshold is not None else base[category][0]
                rules[category] = (threshold, rule.action)
        return rules

    def rules(self, tenant: str) -> dict[str, tuple[float, Action]]:
        return self._tenants.get(tenant, self._global)

    def decide(self, tenant: str, verdict: Verdict) -> Decision:
        rules = self.rules(tenant)
        blocked: list[str] = []
        flagged: list[str] = []
        for category, score in verdict.scores.items():
            rule = rules.get(category)
            if rule is None or score < rule[0]:
                continue
            if rule[1] == "block":
                blocked.append(category)
            elif rule[1] == "flag":
                flagged.append(category)
        if not blocked and not flagged:
            return ALLOWED
        return Decision(tuple(blocked), tuple(flagged))
