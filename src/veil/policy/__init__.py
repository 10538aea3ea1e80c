"""Policy: hosting contracts, residency, entitlements, tenants' partner lists — and consent."""

from veil.policy.consent import ConsentStore, parse_consent_header
from veil.policy.rules import Denial, PolicyDecision, PolicyEngine

__all__ = ["ConsentStore", "Denial", "PolicyDecision", "PolicyEngine", "parse_consent_header"]
