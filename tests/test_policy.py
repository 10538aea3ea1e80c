"""Hosting contracts, residency, entitlements and tenants' partner lists, each rule named."""

from __future__ import annotations

import pytest

from veil.config import FakeProviderConfig, parse_config
from veil.errors import PolicyDenied
from veil.policy import PolicyEngine
from veil.providers.fake import FakeProvider
from veil.routing import Deployment, ModelEntry

POLICY = """
tenants:
  - {name: acme-eu, region: eu}
  - {name: picky, partners: [anthropic]}
  - {name: contoso}
policy:
  hosting:
    - {name: openai-only-on-azure, partner: openai, allowed_clouds: [azure]}
  residency:
    - {name: eu-stays-in-eu, tenant_region: eu, allowed_regions: [eu]}
  entitlements:
    - {name: contoso-exclusive, model: gpt-contoso, tenants: [contoso]}
"""


def provider(
    name: str,
    tier: str = "partner",
    partner: str | None = "openai",
    cloud: str | None = None,
    region: str | None = None,
) -> FakeProvider:
    return FakeProvider(
        FakeProviderConfig(
            type="fake", name=name, tier=tier, partner=partner, cloud=cloud, region=region
        )  # type: ignore[arg-type]
    )


OPENAI_DIRECT = Deployment(provider("openai-direct", cloud="openai", region="us"), "gpt-4o")
AZURE_US = Deployment(provider("azure-us", cloud="azure", region="us"), "gpt-4o")
AZURE_EU = Deployment(provider("azure-eu", cloud="azure", region="eu"), "gpt-4o")
CLAUDE = Deployment(
    provider("claude", partner="anthropic", cloud="anthropic", region="us"), "claude"
)
DEVICE = Deployment(provider("device", tier="device", partner=None), "smollm")


@pytest.fixture
def engine() -> PolicyEngine:
    return PolicyEngine(parse_config(POLICY))


def model(name: str, *deployments: Deployment) -> ModelEntry:
    return ModelEntry(name, deployments)


def test_hosting_contract_skips_openai_outside_azure(engine: PolicyEngine) -> None:
    decision = engine.decide("anyone", model("gpt-4o", OPENAI_DIRECT, AZURE_US))
    assert decision.allowed == (AZURE_US,)
    [denial] = decision.denials
    assert (denial.deployment, denial.rule) == (OPENAI_DIRECT, "openai-only-on-azure")
    assert decision.summary() == "policy skipped openai-direct by openai-only-on-azure"


def test_hosting_contract_with_nothing_left_is_403_naming_the_rule(engine: PolicyEngine) -> None:
    with pytest.raises(PolicyDenied) as info:
        engine.check("anyone", model("gpt-4o", OPENAI_DIRECT))
    assert info.value.status == 403
    assert info.value.code == "policy_denied"
    assert "openai-only-on-azure" in info.value.message
    assert "not openai" in info.value.message


def test_residency_keeps_eu_tenants_in_eu(engine: PolicyEngine) -> None:
    decision = engine.decide("acme-eu", model("gpt-4o", AZURE_US, AZURE_EU))
    assert decision.allowed == (AZURE_EU,)
    assert decision.denials[0].rule == "eu-stays-in-eu"
    # Other tenants are not bound by it.
    assert engine.decide("contoso", model("gpt-4o", AZURE_US, AZURE_EU)).allowed == (
        AZURE_US,
        AZURE_EU,
    )


def test_residency_refuses_deployments_without_a_region(engine: PolicyEngine) -> None:
    nowhere = Deployment(provider("azure-nowhere", cloud="azure", region=None), "gpt-4o")
    with pytest.raises(PolicyDenied) as info:
        engine.check("acme-eu", model("gpt-4o", nowhere))
    assert "undeclared region" in info.value.message


def test_device_is_exempt_from_hosting_and_residency(engine: PolicyEngine) -> None:
    assert engine.decide("acme-eu", model("small", DEVICE)).allowed == (DEVICE,)


def test_entitlement_reserves_a_model_for_named_tenants(engine: PolicyEngine) -> None:
    exclusive = model("gpt-contoso", AZURE_US)
    assert engine.check("contoso", exclusive).allowed == (AZURE_US,)
    with pytest.raises(PolicyDenied) as info:
        engine.check("acme-eu", exclusive)
    assert "contoso-exclusive" in info.value.message


def test_tenant_partner_allowlist(engine: PolicyEngine) -> None:
    decision = engine.decide("picky", model("mixed", AZURE_US, CLAUDE))
    assert decision.allowed == (CLAUDE,)
    assert decision.denials[0].rule == "partners:picky"


def test_rule_names_must_be_unique() -> None:
    from veil.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        parse_config(
            "policy:\n  hosting:\n    - {name: r, partner: openai, allowed_clouds: [azure]}\n"
            "  entitlements:\n    - {name: r, model: m, tenants: [t]}\n"
        )
    assert "rule name 'r' is used twice" in str(info.value)


def test_partner_provider_types_must_be_partner_tier() -> None:
    from veil.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        parse_config("providers:\n  - {name: o, type: openai, tier: private, api_key: x}\n")
    assert "providers[0].tier" in str(info.value)
