"""How long the dashboard's queries take over many usage rows.

Run from the repository root::

    .venv/bin/python bench/dashboard.py [--rows N]

Writes N usage rows (default 300,000) spread over 30 days, five tenants, three tiers and
a thousand users into a fresh SQLite database, the way the usage writer does, then times
``veil.dashboard.queries.overview`` for each window, for all tenants (the admin) and for
one tenant, and the privacy report of one user. Each figure is the best of three.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from veil.dashboard import queries
from veil.ledger.postings import Book
from veil.ledger.usage import UsageRecord, write_records
from veil.store import db

TIERS = (
    ("device", "phone", "small", None, None),
    ("private", "pcc", "big", None, None),
    ("partner", "openai-azure", "gpt-4o", "openai", "azure"),
)


def rows(n: int, now: datetime) -> list[UsageRecord]:
    rng = random.Random(7)
    out = []
    for i in range(n):
        tier, provider, model, partner, cloud = TIERS[i % 3]
        out.append(
            UsageRecord(
                id=f"r{i}",
                created_at=now - timedelta(seconds=rng.random() * 30 * 86400),
                tenant=f"t{i % 5}",
                user_hash=f"u{i % 1000}",
                key_id=None,
                tier=tier,
                provider=provider,
                model=model,
                stream=False,
                prompt_tokens=10,
                completion_tokens=20,
                token_method="reported",
                latency_ms=rng.random() * 100,
                status=200 if i % 50 else 500,
                error_code=None,
                partner=partner,
                cloud=cloud,
                policy="policy ok" if i % 7 else "policy skipped openai-direct by openai-on-azure",
                redactions='{"EMAIL_ADDRESS": 1}' if partner else None,
                moderation="input:flag:violence" if i % 97 == 0 else None,
                billed=1000,
                cost=500,
                bytes_out=0 if tier == "device" else 120,
            )
        )
    return out


def best(call: object, repeat: int = 3) -> float:
    assert callable(call)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=300_000)
    args = parser.parse_args()
    engine = db.make_engine(f"sqlite:///{tempfile.mkdtemp()}/veil.db")
    db.migrate(engine)
    now = datetime.now(UTC)
    data = rows(args.rows, now)
    start = time.perf_counter()
    for k in range(0, len(data), 10_000):
        write_records(engine, Book([]), data[k : k + 10_000])
    print(f"{args.rows:,} usage rows written in {time.perf_counter() - start:.1f} s")
    print(f"{'window':<8}{'rows in it':>12}{'all tenants (ms)':>20}{'one tenant (ms)':>18}")
    for name in queries.WINDOWS:
        w = queries.window(name)
        seen = queries.overview(engine, None, w, "USD")["totals"]["requests"]
        every = best(lambda w=w: queries.overview(engine, None, w, "USD"))
        one = best(lambda w=w: queries.overview(engine, "t1", w, "USD"))
        print(f"{name:<8}{seen:>12,}{every:>20.1f}{one:>18.1f}")
    report = best(
        lambda: queries.privacy_report(engine, "t1", "u1", now - timedelta(days=90), now, 1000)
    )
    print(f"privacy report of one user (90 days): {report:.1f} ms")
    Path(str(engine.url.database)).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
