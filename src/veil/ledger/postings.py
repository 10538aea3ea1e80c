"""Prices and revenue-share contracts: what a request costs, and how that money moves.

``Tariff`` turns tokens into two amounts at meter time: what the tenant is billed and what
the upstream charges. ``Book`` turns a metered request into balanced ledger lines:

* the charge — the tenant owes the platform what it is billed;
* the cost — the platform owes the deployment's host (its cloud, else its partner) what the
  upstream charges, for partner-tier requests;
* each share of each matching contract — its payer owes its party a percentage of the
  request's revenue (the charge) or of its cost.

Every line is posted with its counter-line, so each request's lines sum to zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from veil.config import Config, ContractConfig, Names, Price
from veil.ledger.money import per_token, share

PLATFORM = "platform"


def tenant_account(tenant: str) -> str:
    return f"tenant:{tenant}"


def party_account(party: str) -> str:
    return PLATFORM if party == PLATFORM else f"party:{party}"


@dataclass(frozen=True, slots=True)
class Rates:
    """Units per token: billed to the tenant, and charged by the upstream."""

    billed_input: int = 0
    billed_output: int = 0
    cost_input: int = 0
    cost_output: int = 0


_FREE = Rates()


def _rates(price: Price | None, cost: Price | None) -> Rates:
    billed = price or cost
    return Rates(
        per_token(billed.input) if billed else 0,
        per_token(billed.output) if billed else 0,
        per_token(cost.input) if cost else 0,
        per_token(cost.output) if cost else 0,
    )


class Tariff:
    """Each model's rates, with each tenant's own prices where it has them."""

    def __init__(self, config: Config) -> None:
        self._models: dict[str, Rates] = {}
        costs: dict[str, Price | None] = {}
        #: Every name a model answers to → its name (usage rows record the name).
        canonical: dict[str, str] = {}
        for m in config.models:
            self._models[m.name] = _rates(m.price, m.cost)
            costs[m.name] = m.cost
            canonical.update({alias: m.name for alias in [m.name, *m.aliases]})
        self._tenants: dict[tuple[str, str], Rates] = {}
        for t in config.tenants:
            for model, price in t.prices.items():
                name = canonical.get(model, model)
                self._tenants[(t.name, name)] = _rates(price, costs.get(name))

    def rates(self, tenant: str, model: str | None) -> Rates:
        if model is None:
            return _FREE
        return self._tenants.get((tenant, model)) or self._models.get(model) or _FREE

    def charge(
        self, tenant: str, model: str | None, prompt: int, completion: int
    ) -> tuple[int, int]:
        """(billed, cost) in units for these tokens."""
        r = self.rates(tenant, model)
        return (
            prompt * r.billed_input + completion * r.billed_output,
            prompt * r.cost_input + completion * r.cost_output,
        )


@dataclass(frozen=True, slots=True)
class Line:
    account: str
    #: Units: positive a debit, negative a credit.
    amount: int
    kind: str
    counterparty: str
    contract: str | None = None


@dataclass(frozen=True, slots=True)
class Posting:
    """What ``Book.post`` needs to know about a metered request."""

    tenant: str
    model: str | None
    tier: str | None
    partner: str | None
    cloud: str | None
    billed: int
    cost: int


def _matches(value: str | None, wanted: Names | Sequence[str] | None) -> bool:
    if wanted is None:
        return True
    if value is None:
        return False
    return value == wanted if isinstance(wanted, str) else value in wanted


class Book:
    """The contracts, applied to each metered request."""

    def __init__(self, contracts: Iterable[ContractConfig]) -> None:
        self._contracts = tuple(contracts)
        self._matching: dict[tuple[str | None, ...], list[ContractConfig]] = {}

    def matching(self, p: Posting) -> list[ContractConfig]:
        key = (p.tenant, p.model, p.tier, p.partner, p.cloud)
        found = self._matching.get(key)
        if found is None:
            if len(self._matching) > 100_000:
                self._matching.clear()
            found = self._matching[key] = self._match(p)
        return found

    def _match(self, p: Posting) -> list[ContractConfig]:
        return [
            c
            for c in self._contracts
            if _matches(p.partner, c.match.partner)
            and _matches(p.cloud, c.match.cloud)
            and _matches(p.tenant, c.match.tenant)
            and _matches(p.model, c.match.model)
            and _matches(p.tier, c.match.tier)
        ]

    def post(self, p: Posting) -> list[Line]:
        lines: list[Line] = []

        def pay(payer: str, payee: str, amount: int, kind: str, contract: str | None) -> None:
            if amount:
                lines.append(Line(payer, amount, kind, payee, contract))
                lines.append(Line(payee, -amount, kind, payer, contract))

        tenant = tenant_account(p.tenant)
        pay(tenant, PLATFORM, p.billed, "charge", None)
        host = p.cloud or p.partner
        if p.tier == "partner" and host:
            pay(PLATFORM, party_account(host), p.cost, "cost", None)
        for contract in self.matching(p):
            for s in contract.shares:
                base = p.billed if s.of == "revenue" else p.cost
                pay(
                    party_account(s.payer),
                    party_account(s.party),
                    share(base, s.percent),
                    "share",
                    contract.name,
                )
        return lines
