"""What the dashboard shows, read from the usage rows, the ledger and the consents.

Pure functions over an ``Engine``. Every figure is metadata: counts, bytes, tokens, timings,
amounts and the names of tiers, models, partners, clouds, rules and categories. A scope is
one tenant (a tenant's key) or every tenant (the admin key); nothing here can widen it.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson
from sqlalchemy import ColumnElement, Engine, Integer, case, cast, func, select

from veil.errors import InvalidRequest
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
LATENCY_SAMPLE: Final = 50_000


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
    """Everything the dashboard's main view shows for one scope and window."""
    where = _scope(tenant, w)
    with engine.connect() as conn:
        step = int(w.bucket.total_seconds())
        bucket = (_epoch(engine) - int(w.start.timestamp())) / step
        series: dict[str, list[int]] = {t: [0] * w.buckets for t in (*TIERS, "refused")}
        for index, tier, count in conn.execute(
            select(bucket.label("b"), Usage.tier, func.count())
            .where(*where)
            .group_by("b", Usage.tier)
        ):
            i = int(index)
            if 0 <= i < w.buckets:
                series[tier if tier in TIERS else "refused"][i] += count

        errors = func.sum(case((Usage.status >= 400, 1), else_=0))
        by_model = [
            {"model": model, "tier": tier, "provider": provider, "requests": n, "errors": int(e)}
            for model, tier, provider, n, e in conn.execute(
                select(Usage.model, Usage.tier, Usage.provider, func.count(), errors)
                .where(*where, Usage.model.is_not(None))
                .group_by(Usage.model, Usage.tier, Usage.provider)
                .order_by(func.count().desc())
            )
        ]
        totals_row = conn.execute(
            select(
                func.count(),
                errors,
                func.coalesce(func.sum(Usage.prompt_tokens), 0),
                func.coalesce(func.sum(Usage.completion_tokens), 0),
            ).where(*where)
        ).one()
        partners = _partners(conn, where)
        clouds = [
            {"cloud": cloud, "requests": n}
            for cloud, n in conn.execute(
                select(Usage.cloud, func.count())
                .where(*where, Usage.tier == "partner", Usage.cloud.is_not(None))
                .group_by(Usage.cloud)
                .order_by(func.count().desc())
            )
        ]
        _consents_in_force(conn, tenant, partners)
        denials = policy_denials(
            str(policy)
            for (policy,) in conn.execute(
                select(Usage.policy).where(
                    *where, Usage.policy.is_not(None), Usage.policy != "policy ok"
                )
            )
        )
        moderation = moderation_events(
            str(text)
            for (text,) in conn.execute(
                select(Usage.moderation).where(*where, Usage.moderation.is_not(None))
            )
        )
        latency = _latency(conn, where)
        money = _money(conn, tenant, w, where)
    left = sum(p["requests"] for p in partners)
    return {
        "object": "dashboard.overview",
        "tenant": tenant,
        "window": w.to_dict(),
        "currency": currency,
        "totals": {
            "requests": totals_row[0],
            "errors": int(totals_row[1] or 0),
            "prompt_tokens": int(totals_row[2]),
            "completion_tokens": int(totals_row[3]),
            "on_device": sum(series["device"]),
            "private": sum(series["private"]),
            "partner": sum(series["partner"]),
            "refused": sum(series["refused"]),
            "left_device": sum(series["private"]) + left,
            "bytes_out": sum(p["bytes_out"] for p in partners),
            "redactions": sum(sum(p["redactions"].values()) for p in partners),
        },
        "series": series,
        "by_model": by_model,
        "partners": partners,
        "clouds": clouds,
        "policy_denials": denials,
        "moderation": moderation,
        "latency": latency,
        "money": money,
    }


def _partners(conn: Any, where: list[ColumnElement[bool]]) -> list[dict[str, Any]]:
    """What left the device for each partner: requests, bytes and values replaced."""
    rows: dict[str, dict[str, Any]] = {}
    for partner, n, sent in conn.execute(
        select(Usage.partner, func.count(), func.coalesce(func.sum(Usage.bytes_out), 0))
        .where(*where, Usage.tier == "partner")
        .group_by(Usage.partner)
    ):
        name = partner or "unknown"
        rows[name] = {
            "partner": name,
            "requests": n,
            "bytes_out": int(sent),
            "redactions": {},
            "consents": 0,
        }
    replaced: dict[str, Counter[str]] = defaultdict(Counter)
    for partner, text in conn.execute(
        select(Usage.partner, Usage.redactions).where(
            *where, Usage.tier == "partner", Usage.redactions.is_not(None)
        )
    ):
        replaced[partner or "unknown"].update(_counts(text))
    for name, counts in replaced.items():
        if name in rows:
            rows[name]["redactions"] = dict(counts.most_common())
    return sorted(rows.values(), key=lambda r: -r["requests"])


def _counts(text: str) -> dict[str, int]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, int)}


def _consents_in_force(conn: Any, tenant: str | None, partners: list[dict[str, Any]]) -> None:
    """Add each partner's standing consents in force now (partners with none but consents
    are listed too: a consent is given before anything is sent)."""
    where: list[ColumnElement[bool]] = [Consent.revoked_at.is_(None)]
    if tenant is not None:
        where.append(Consent.tenant == tenant)
    by_name = {p["partner"]: p for p in partners}
    for partner, n in conn.execute(
        select(Consent.partner, func.count()).where(*where).group_by(Consent.partner)
    ):
        row = by_name.get(partner)
        if row is None:
            row = {"partner": partner, "requests": 0, "bytes_out": 0, "redactions": {}}
            partners.append(row)
            by_name[partner] = row
        row["consents"] = n


_SKIPPED = re.compile(r"(?:policy skipped |, )\S+ by ([^\s,;]+)")
_DENIED = re.compile(r"(?:: |; )([^\s;:(][^\s;(]*) \(")


def policy_denials(summaries: Iterable[str]) -> list[dict[str, Any]]:
    """Count the requests each rule decided, from the usage rows' policy summaries:
    ``denied`` (the request was refused) and ``skipped`` (a deployment was passed over and
    another served). A rule counts once per request however many deployments it named."""
    denied: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    for summary in summaries:
        if summary.startswith("policy denied: "):
            # "policy denied: the model 'm' cannot serve tenant 't': rule (why); rule (why)"
            reasons = summary.rsplit("': ", 1)[-1]
            denied.update(set(_DENIED.findall(": " + reasons)))
        else:
            skipped.update({r for part in summary.split("; ") for r in _SKIPPED.findall(part)})
    rules = sorted(set(denied) | set(skipped), key=lambda r: (-denied[r] - skipped[r], r))
    return [{"rule": r, "denied": denied[r], "skipped": skipped[r]} for r in rules]


def moderation_events(summaries: Iterable[str]) -> list[dict[str, Any]]:
    """``input:flag:violence,hate;output:block:sexual`` rows → counts per category, stage
    and action."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for summary in summaries:
        for part in summary.split(";"):
            pieces = part.split(":", 2)
            if len(pieces) != 3:
                continue
            stage, action, categories = pieces
            for category in categories.split(","):
                if category:
                    counts[(category, stage, action)] += 1
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
    index = max(0, min(len(values) - 1, int(q * len(values) + 0.999999) - 1))
    return round(values[index], 3)


def _money(
    conn: Any, tenant: str | None, w: Window, where: list[ColumnElement[bool]]
) -> dict[str, Any]:
    """Spend per model (and per tenant, for the admin); the ledger's net per party."""
    from veil.ledger.money import format_amount

    billed_hi, billed_lo = split_sum(Usage.billed)
    cost_hi, cost_lo = split_sum(Usage.cost)
    group = Usage.model if tenant is not None else Usage.tenant
    spend = [
        {
            "name": name,
            "billed": format_amount(join_sum(b_hi, b_lo)),
            "cost": format_amount(join_sum(c_hi, c_lo)),
        }
        for name, b_hi, b_lo, c_hi, c_lo in conn.execute(
            select(group, billed_hi, billed_lo, cost_hi, cost_lo)
            .where(*where, group.is_not(None))
            .group_by(group)
        )
    ]
    spend.sort(key=lambda r: -float(r["billed"]))
    parties: list[dict[str, Any]] = []
    if tenant is None:  # the revenue share between parties is the operator's to see
        hi, lo = split_sum(LedgerEntry.amount)
        for account, a_hi, a_lo in conn.execute(
            select(LedgerEntry.account, hi, lo)
            .where(LedgerEntry.at >= w.start, LedgerEntry.at < w.end)
            .group_by(LedgerEntry.account)
        ):
            if account.startswith("tenant:"):
                continue
            # A party's lines are credits (negative): what it earns is their negation.
            parties.append(
                {"party": account.removeprefix("party:"), "earned": -join_sum(a_hi, a_lo)}
            )
        parties.sort(key=lambda p: -p["earned"])
        for p in parties:
            p["earned"] = format_amount(p["earned"])
    return {
        "spend_by": "model" if tenant is not None else "tenant",
        "spend": spend,
        "parties": parties,
    }


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
