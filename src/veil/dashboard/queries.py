"""What the dashboard shows, read from the usage rows, the ledger and the consents.

Pure functions over an ``Engine``. Every figure is metadata: counts, bytes, tokens, timings,
amounts and the names of tiers, models, partners, clouds, rules and categories. A scope is
one tenant (a tenant's key) or every tenant (the admin key); nothing here can widen it.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson
from sqlalchemy import ColumnElement, Engine, Integer, case, cast, func, select

from veil.errors import InvalidRequest
from veil.ledger.money import format_amount
from veil.ledger.reports import join_sum, split_sum
from veil.store.models import Consent, LedgerEntry, Usage

#: Window name → (length, bucket width) of the time series.
WINDOWS: Final[dict[str, tuple[timedelta, timedelta]]] = {
    "1h": (timedelta(hours=1), timedelta(minutes=1)),
    "24h": (timedelta(hours=24), timedelta(minutes=30)),
    "7d": (timedelta(days=7), timedelta(hours=6)),
    "30d": (timedelta(days=30), timedelta(days=1)),
}
TIERS: Final = ("device", "private", "partner")
#: Latency percentiles are read from at most this many of the window's newest requests.
LATENCY_SAMPLE: Final = 20_000


@dataclass(frozen=True, slots=True)
class Window:
    name: str
    start: datetime
    end: datetime
    bucket: timedelta

    @property
    def buckets(self) -> int:
        return int((self.end - self.start) / self.bucket)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "bucket_seconds": int(self.bucket.total_seconds()),
        }


def window(name: str, now: datetime | None = None) -> Window:
    """The window ending now (its last bucket holds now), bucket edges on whole buckets."""
    if name not in WINDOWS:
        raise InvalidRequest(
            f"unknown window {name[:20]!r}: use one of {', '.join(WINDOWS)}",
            param="window",
            code="invalid_window",
        )
    length, bucket = WINDOWS[name]
    now = now or datetime.now(UTC)
    step = int(bucket.total_seconds())
    end = datetime.fromtimestamp((int(now.timestamp()) // step + 1) * step, UTC)
    return Window(name, end - length, end, bucket)


def _epoch(engine: Engine) -> ColumnElement[Any]:
    """``usage.created_at`` as whole seconds since the epoch, on either database."""
    if engine.dialect.name == "sqlite":
        return cast(func.strftime("%s", Usage.created_at), Integer)
    return cast(func.floor(func.extract("epoch", Usage.created_at)), Integer)


def _scope(tenant: str | None, w: Window) -> list[ColumnElement[bool]]:
    conditions = [Usage.created_at >= w.start, Usage.created_at < w.end]
    if tenant is not None:
        conditions.append(Usage.tenant == tenant)
    return conditions


# ------------------------------------------------------------------------ overview


def overview(engine: Engine, tenant: str | None, w: Window, currency: str) -> dict[str, Any]:
    """Everything the dashboard's main view shows for one scope and window.

    The window's rows are read once, grouped by bucket, tier, model, provider, tenant,
    partner and cloud; the few distinct policy, moderation and redaction summaries are
    grouped in SQL too. Python only adds the groups up."""
    where = _scope(tenant, w)
    step = int(w.bucket.total_seconds())
    bucket = (_epoch(engine) - int(w.start.timestamp())) // step
    billed_hi, billed_lo = split_sum(Usage.billed)
    cost_hi, cost_lo = split_sum(Usage.cost)
    keys = (
        bucket,
        Usage.tier,
        Usage.model,
        Usage.provider,
        Usage.tenant,
        Usage.partner,
        Usage.cloud,
    )
    with engine.connect() as conn:
        groups = conn.execute(
            select(
                *keys,
                func.count(),
                func.sum(case((Usage.status >= 400, 1), else_=0)),
                func.sum(Usage.prompt_tokens),
                func.sum(Usage.completion_tokens),
                func.sum(Usage.bytes_out),
                billed_hi,
                billed_lo,
                cost_hi,
                cost_lo,
            )
            .where(*where)
            .group_by(*keys)
        ).all()
        replaced = conn.execute(
            select(Usage.partner, Usage.redactions, func.count())
            .where(*where, Usage.tier == "partner", Usage.redactions.is_not(None))
            .group_by(Usage.partner, Usage.redactions)
        ).all()
        policies = conn.execute(
            select(Usage.policy, func.count())
            .where(*where, Usage.policy.is_not(None), Usage.policy != "policy ok")
            .group_by(Usage.policy)
        ).all()
        moderation = conn.execute(
            select(Usage.moderation, func.count())
            .where(*where, Usage.moderation.is_not(None))
            .group_by(Usage.moderation)
        ).all()
        latency = _latency(conn, where)
        consents = _consents_in_force(conn, tenant)
        parties = _parties(conn, w) if tenant is None else []

    series: dict[str, list[int]] = {t: [0] * w.buckets for t in (*TIERS, "refused")}
    totals: Counter[str] = Counter()
    models: dict[tuple[str, str | None, str | None], list[int]] = {}
    partners: dict[str, dict[str, Any]] = {}
    clouds: Counter[str] = Counter()
    spend: dict[str, list[int]] = {}
    for row in groups:
        index, tier, model, provider, owner, partner, cloud, n, errors = row[:9]
        prompt, completion, sent, b_hi, b_lo, c_hi, c_lo = row[9:]
        kind = tier if tier in TIERS else "refused"
        if 0 <= int(index) < w.buckets:
            series[kind][int(index)] += n
        totals.update(
            {
                "requests": n,
                "errors": int(errors or 0),
                "prompt_tokens": int(prompt or 0),
                "completion_tokens": int(completion or 0),
                kind: n,
            }
        )
        if model is not None:
            counts = models.setdefault((model, tier, provider), [0, 0])
            counts[0] += n
            counts[1] += int(errors or 0)
        if tier == "partner":
            name = partner or "unknown"
            entry = partners.setdefault(name, _partner_row(name))
            entry["requests"] += n
            entry["bytes_out"] += int(sent or 0)
            if cloud is not None:
                clouds[cloud] += n
        elif tier == "private":
            totals["private_bytes_out"] += int(sent or 0)
        name = model if tenant is not None else owner
        if name is not None:
            amounts = spend.setdefault(name, [0, 0])
            amounts[0] += join_sum(b_hi, b_lo)
            amounts[1] += join_sum(c_hi, c_lo)

    by_type: dict[str, Counter[str]] = defaultdict(Counter)
    for partner, text, n in replaced:
        for kind, count in _counts(str(text)).items():
            by_type[partner or "unknown"][kind] += count * n
    for name, counted in by_type.items():
        if name in partners:
            partners[name]["redactions"] = dict(counted.most_common())
    for name, n in consents:
        partners.setdefault(name, _partner_row(name))["consents"] = n
    partner_rows = sorted(partners.values(), key=lambda r: (-r["requests"], r["partner"]))
    return {
        "object": "dashboard.overview",
        "tenant": tenant,
        "window": w.to_dict(),
        "currency": currency,
        "totals": {
            "requests": totals["requests"],
            "errors": totals["errors"],
            "prompt_tokens": totals["prompt_tokens"],
            "completion_tokens": totals["completion_tokens"],
            "on_device": totals["device"],
            "private": totals["private"],
            "partner": totals["partner"],
            "refused": totals["refused"],
            "left_device": totals["private"] + totals["partner"],
            "bytes_out": sum(p["bytes_out"] for p in partner_rows),
            "private_bytes_out": totals["private_bytes_out"],
            "redactions": sum(sum(p["redactions"].values()) for p in partner_rows),
        },
        "series": series,
        "by_model": [
            {"model": m, "tier": t, "provider": p, "requests": n, "errors": e}
            for (m, t, p), (n, e) in sorted(models.items(), key=lambda kv: -kv[1][0])
        ],
        "partners": partner_rows,
        "clouds": [{"cloud": c, "requests": n} for c, n in clouds.most_common()],
        "policy_denials": policy_denials((str(text), int(n)) for text, n in policies),
        "moderation": moderation_events((str(text), int(n)) for text, n in moderation),
        "latency": latency,
        "money": {
            "spend_by": "model" if tenant is not None else "tenant",
            "spend": [
                {"name": name, "billed": format_amount(b), "cost": format_amount(c)}
                for name, (b, c) in sorted(spend.items(), key=lambda kv: (-kv[1][0], kv[0]))
            ],
            "parties": parties,
        },
    }


def _partner_row(name: str) -> dict[str, Any]:
    return {"partner": name, "requests": 0, "bytes_out": 0, "redactions": {}, "consents": 0}


def _counts(text: str) -> dict[str, int]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, int)}


def _consents_in_force(conn: Any, tenant: str | None) -> list[tuple[str, int]]:
    """Standing consents not revoked, per partner (a consent comes before anything is sent,
    so a partner may have consents and no requests yet)."""
    where: list[ColumnElement[bool]] = [Consent.revoked_at.is_(None)]
    if tenant is not None:
        where.append(Consent.tenant == tenant)
    rows = conn.execute(
        select(Consent.partner, func.count()).where(*where).group_by(Consent.partner)
    )
    return [(str(partner), int(n)) for partner, n in rows]


_SKIPPED = re.compile(r"(?:policy skipped |, )\S+ by ([^\s,;]+)")
_DENIED = re.compile(r"(?:: |; )([^\s;:(][^\s;(]*) \(")


def policy_denials(summaries: Iterable[tuple[str, int]]) -> list[dict[str, Any]]:
    """Count the requests each rule decided, from the usage rows' policy summaries (each
    with how many rows have it): ``denied`` (the request was refused) and ``skipped`` (a
    deployment was passed over and another served). A rule counts once per request
    however many deployments it named."""
    denied: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    for summary, n in summaries:
        if summary.startswith("policy denied: "):
            # "policy denied: the model 'm' cannot serve tenant 't': rule (why); rule (why)"
            reasons = summary.rsplit("': ", 1)[-1]
            denied.update(dict.fromkeys(set(_DENIED.findall(": " + reasons)), n))
        else:
            named = {r for part in summary.split("; ") for r in _SKIPPED.findall(part)}
            skipped.update(dict.fromkeys(named, n))
    rules = sorted(set(denied) | set(skipped), key=lambda r: (-denied[r] - skipped[r], r))
    return [{"rule": r, "denied": denied[r], "skipped": skipped[r]} for r in rules]


def moderation_events(summaries: Iterable[tuple[str, int]]) -> list[dict[str, Any]]:
    """``input:flag:violence,hate;output:block:sexual`` summaries (each with how many rows
    have it) → counts per category, stage and action."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for summary, n in summaries:
        for part in summary.split(";"):
            pieces = part.split(":", 2)
            if len(pieces) != 3:
                continue
            stage, action, categories = pieces
            for category in categories.split(","):
                if category:
                    counts[(category, stage, action)] += n
    return [
        {"category": c, "stage": s, "action": a, "count": n}
        for (c, s, a), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    ]


def _latency(conn: Any, where: list[ColumnElement[bool]]) -> list[dict[str, Any]]:
    samples: dict[str, list[float]] = defaultdict(list)
    for tier, ms in conn.execute(
        select(Usage.tier, Usage.latency_ms)
        .where(*where, Usage.tier.is_not(None))
        .order_by(Usage.created_at.desc())
        .limit(LATENCY_SAMPLE)
    ):
        samples[tier].append(ms)
    out = []
    for tier in sorted(samples, key=lambda t: TIERS.index(t) if t in TIERS else len(TIERS)):
        values = sorted(samples[tier])
        out.append(
            {
                "tier": tier,
                "count": len(values),
                "p50_ms": _percentile(values, 0.50),
                "p90_ms": _percentile(values, 0.90),
                "p99_ms": _percentile(values, 0.99),
            }
        )
    return out


def _percentile(values: list[float], q: float) -> float:
    """Nearest rank on sorted values."""
    index = max(0, min(len(values) - 1, math.ceil(q * len(values)) - 1))
    return round(values[index], 3)


def _parties(conn: Any, w: Window) -> list[dict[str, Any]]:
    """What each party (not a tenant) earned in the window's ledger lines: the negation of
    its lines, which are credits. The operator's to see, never a tenant's."""
    hi, lo = split_sum(LedgerEntry.amount)
    earned = [
        (account.removeprefix("party:"), -join_sum(a_hi, a_lo))
        for account, a_hi, a_lo in conn.execute(
            select(LedgerEntry.account, hi, lo)
            .where(LedgerEntry.at >= w.start, LedgerEntry.at < w.end)
            .group_by(LedgerEntry.account)
        )
        if not account.startswith("tenant:")
    ]
    earned.sort(key=lambda p: (-p[1], p[0]))
    return [{"party": party, "earned": format_amount(amount)} for party, amount in earned]


def tenants(engine: Engine, w: Window) -> list[str]:
    """The tenants with requests in the window (for the admin's filter)."""
    with engine.connect() as conn:
        return [
            t
            for (t,) in conn.execute(
                select(Usage.tenant)
                .where(Usage.created_at >= w.start, Usage.created_at < w.end)
                .group_by(Usage.tenant)
                .order_by(Usage.tenant)
            )
        ]


# ------------------------------------------------------------------------ privacy report

#: The most rows one privacy report returns (newest first; ``has_more`` says if cut).
REPORT_LIMIT: Final = 5_000


def privacy_report(
    engine: Engine, tenant: str, user_hash: str, since: datetime, until: datetime, limit: int
) -> dict[str, Any]:
    """Every request of one user that left the device, newest first: when, which tier,
    partner, provider, model and cloud, how consent was given, how many values were
    replaced and how many bytes left. Never the content: no row holds any."""
    where = [
        Usage.tenant == tenant,
        Usage.user_hash == user_hash,
        Usage.created_at >= since,
        Usage.created_at < until,
    ]
    with engine.connect() as conn:
        counts = dict(
            conn.execute(
                select(func.coalesce(Usage.tier, "refused"), func.count())
                .where(*where)
                .group_by(func.coalesce(Usage.tier, "refused"))
            ).all()
        )
        rows = conn.execute(
            select(
                Usage.id,
                Usage.created_at,
                Usage.tier,
                Usage.partner,
                Usage.provider,
                Usage.model,
                Usage.cloud,
                Usage.consent,
                Usage.redactions,
                Usage.bytes_out,
                Usage.status,
                Usage.served_by,
            )
            .where(*where, Usage.tier.in_(("private", "partner")))
            .order_by(Usage.created_at.desc(), Usage.id)
            .limit(limit + 1)
        ).all()
    data = []
    for row in rows[:limit]:
        redactions = _counts(row.redactions) if row.redactions else {}
        at = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
        data.append(
            {
                "id": row.id,
                "at": at.isoformat(),
                "tier": row.tier,
                "partner": row.partner,
                "provider": row.provider,
                "model": row.model,
                "cloud": row.cloud,
                "consent": row.consent,
                "values_replaced": sum(redactions.values()),
                "redactions": redactions,
                "bytes_out": row.bytes_out,
                "status": row.status,
                "node_measurement": row.served_by,
            }
        )
    return {
        "summary": {
            "requests": sum(counts.values()),
            "on_device": counts.get("device", 0),
            "private": counts.get("private", 0),
            "partner": counts.get("partner", 0),
            "refused": counts.get("refused", 0),
            "values_replaced": sum(r["values_replaced"] for r in data),
            "bytes_out": sum(r["bytes_out"] for r in data),
        },
        "data": data,
        "has_more": len(rows) > limit,
    }
