"""Which of a model's deployments may serve this tenant, and which rule says no.

Every rule has a name, and every refusal names its rule: the caller's 403, the
``x-veil-route-reason`` header and the usage row all say which contract applied.

- hosting: a partner's traffic only from the clouds its contract allows (OpenAI on Azure),
  however the request reached Veil;
- residency: a tenant in a region only reaches deployments in the allowed regions (a
  deployment that declares no region cannot prove where it is, so it is refused);
- entitlements: a model reserved for named tenants;
- a tenant's own partner list (``tenants[].partners``), named ``partners:<tenant>``.

Device deployments are exempt from hosting and residency: nothing leaves the machine.
"""

from __future__ import annotations

from dataclasses import dataclass

from veil.config import Config, PrivacyConfig, TenantConfig
from veil.errors import PolicyDenied
from veil.routing import Deployment, ModelEntry


@dataclass(frozen=True, slots=True)
class Denial:
    deployment: Deployment
    rule: str
    why: str


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    allowed: tuple[Deployment, ...]
    denials: tuple[Denial, ...]

    def summary(self) -> str:
        """Short, for headers and usage rows: which rules skipped which providers."""
        if not self.denials:
            return "policy ok"
        skipped = ", ".join(f"{d.deployment.provider.name} by {d.rule}" for d in self.denials)
        return f"policy skipped {skipped}"


class PolicyEngine:
    def __init__(self, config: Config) -> None:
        self._tenants = {t.name: t for t in config.tenants}
        self._privacy = config.privacy
        self._hosting = config.policy.hosting
        self._residency = config.policy.residency
        self._entitlements = config.policy.entitlements

    def tenant(self, name: str) -> TenantConfig | None:
        return self._tenants.get(name)

    def privacy(self, tenant: str) -> PrivacyConfig:
        own = self._tenants.get(tenant)
        return own.privacy if own is not None and own.privacy is not None else self._privacy

    def decide(self, tenant: str, model: ModelEntry) -> PolicyDecision:
        allowed: list[Deployment] = []
        denials: list[Denial] = []
        for deployment in model.deployments:
            denial = self._first_denial(tenant, model, deployment)
            if denial is None:
                allowed.append(deployment)
            else:
                denials.append(denial)
        return PolicyDecision(tuple(allowed), tuple(denials))

    def check(self, tenant: str, model: ModelEntry) -> PolicyDecision:
        """``decide``, raising 403 ``policy_denied`` naming the rules if nothing is left."""
        decision = self.decide(tenant, model)
        if not decision.allowed:
            reasons = "; ".join(sorted({f"{d.rule} ({d.why})" for d in decision.denials}))
            raise PolicyDenied(
                f"the model {model.name!r} cannot serve tenant {tenant!r}: {reasons}",
                param="model",
            )
        return decision

    def _first_denial(
        self, tenant: str, model: ModelEntry, deployment: Deployment
    ) -> Denial | None:
        provider = deployment.provider
        for rule in self._entitlements:
            if rule.model == model.name and tenant not in rule.tenants:
                return Denial(deployment, rule.name, f"{model.name} is reserved for other tenants")
        own = self._tenants.get(tenant)
        if (
            provider.tier == "partner"
            and own is not None
            and own.partners is not None
            and (provider.partner or "").lower() not in {p.lower() for p in own.partners}
        ):
            return Denial(
                deployment, f"partners:{tenant}", f"{provider.partner} is not in the tenant's list"
            )
        if provider.tier == "device":
            return None
        for hosting in self._hosting:
            if (provider.partner or "").lower() == hosting.partner.lower() and (
                provider.cloud or ""
            ).lower() not in {c.lower() for c in hosting.allowed_clouds}:
                return Denial(
                    deployment,
                    hosting.name,
                    f"{hosting.partner} only from {', '.join(hosting.allowed_clouds)}, "
                    f"not {provider.cloud or 'an undeclared cloud'}",
                )
        region = own.region if own is not None else None
        for residency in self._residency:
            if (
                region == residency.tenant_region
                and provider.region not in residency.allowed_regions
            ):
                return Denial(
                    deployment,
                    residency.name,
                    f"{region} data stays in {', '.join(residency.allowed_regions)}, "
                    f"not {provider.region or 'an undeclared region'}",
                )
        return None
