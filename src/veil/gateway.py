"""The runtime: everything built from the config once, started and stopped together.

The HTTP app, the CLI and Python callers all hold a ``Gateway`` and call its pipeline.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from veil.auth import KeyStore
from veil.config import Config
from veil.gate import Gate
from veil.home import default_database_url
from veil.ledger import journal
from veil.ledger.limits import Limiter, Limits, LocalLimiter, RedisLimiter, Scope
from veil.ledger.postings import Book, Tariff
from veil.ledger.tokens import TokenCounter
from veil.ledger.usage import Sink, ThreadSink, UsageRecorder, write_records
from veil.ledger.writer import ProcessSink
from veil.metrics import Metrics
from veil.pipeline import Pipeline
from veil.policy import ConsentStore, PolicyEngine
from veil.providers import Provider, build_provider
from veil.providers.private_node import PrivateNodeProvider
from veil.providers.resilience import Breakers
from veil.routing import PreferenceStore, Router
from veil.safety.release import ReleaseGate
from veil.safety.stage import Moderation
from veil.store import db
from veil.store.models import Usage
from veil.tracing import Tracing

if TYPE_CHECKING:
    from veil.privacy import PiiDetector

log = logging.getLogger("veil")


#: Seconds between reads of the release gate's results (``veil redteam`` writes them).
RELEASE_GATE_REFRESH = 5.0


class Gateway:
    def __init__(self, config: Config, home: Path, writer: str = "thread") -> None:
        """``writer``: where metering is written to the database — ``thread`` (a worker
        thread; for short-lived gateways) or ``process`` (a writer process; what ``veil
        serve`` uses, see ``veil.ledger.writer``)."""
        self.config = config
        self.home = home
        self.engine = db.make_engine(config.database.url or default_database_url(home))
        db.migrate(self.engine)
        db.restrict_file(self.engine)
        self.keys = KeyStore(self.engine, config.server.key_cache_seconds)
        self.providers: dict[str, Provider] = {p.name: build_provider(p) for p in config.providers}
        self.router = Router(config, self.providers)
        self.metrics = Metrics()
        metering = config.metering
        self.tariff = Tariff(config)
        self.book = Book(config.contracts)
        self.journal_dir = Path(metering.journal) if metering.journal else home / "journal"
        self.recorder: UsageRecorder | None = None
        if metering.enabled:
            sink: Sink
            if writer == "process":
                sink = ProcessSink(
                    self.engine.url.render_as_string(hide_password=False), config.contracts
                )
            else:
                sink = ThreadSink(self.engine, self.book)
            self.recorder = UsageRecorder(
                journal.Journal(self.journal_dir, metering.fsync),
                sink,
                metering.flush_interval,
                metering.batch,
            )
        limits = Limits(config)
        self.limiter: Limiter
        if config.redis is not None:
            self.limiter = RedisLimiter(
                limits, self._spent, config.redis.url.get_secret_value(), config.redis.prefix
            )
        else:
            self.limiter = LocalLimiter(limits, self._spent)
        self.counter = TokenCounter()
        salt = db.install_salt(self.engine)
        self.policy = PolicyEngine(config)
        self.consents = ConsentStore(self.engine, salt, config.server.key_cache_seconds)
        self.preferences = PreferenceStore(
            self.engine, salt, config.server.key_cache_seconds, known_model=self.router.knows
        )
        self.detector: PiiDetector | None = None
        third_party_moderators = config.safety.enabled and any(
            m.type != "llama_guard" for m in config.safety.moderators
        )
        if third_party_moderators or any(p.tier == "partner" for p in self.providers.values()):
            from veil.privacy import PiiDetector

            self.detector = PiiDetector()
        self.moderation: Moderation | None = None
        if config.safety.enabled:
            self.moderation = Moderation(config, self.providers, self.detector)
        self.release_gate: ReleaseGate | None = None
        if config.safety.release_gate is not None:
            self.release_gate = ReleaseGate(config, lambda name: self.router.entry(name).tier)
            self.router.pending = set(self.release_gate.pending)
        self._gate_task: asyncio.Task[None] | None = None
        self.tracing: Tracing | None = None
        if config.tracing.enabled:
            self.tracing = Tracing(config.tracing)
        self.pipeline = Pipeline(
            self.keys,
            self.router,
            self.policy,
            Gate(self.policy, self.consents, self.detector, salt),
            self.recorder,
            self.metrics,
            salt,
            auth_required=config.server.auth == "required",
            preferences=self.preferences,
            retries=config.routing.retries,
            breakers=Breakers(config.routing.breaker, self.metrics.breaker_changed),
            tariff=self.tariff,
            limiter=self.limiter,
            counter=self.counter,
            moderation=self.moderation,
            tracer=self.tracing.tracer if self.tracing is not None else None,
        )
        for name, provider in self.providers.items():
            if provider.queue_depth is not None:
                self.metrics.watch_queue(name, provider.queue_depth)
            if isinstance(provider, PrivateNodeProvider):
                provider.bind_state(home / "attestation")
                provider.on_refusal = self.metrics.node_refused
        self.started = False

    def prepare(self) -> None:
        """Load models before serving, so a bad model file is a clear error, not a crash."""
        for provider in self.providers.values():
            provider.prepare()
        self.router.classifier  # noqa: B018 - load the task classifier now, not on a request
        if self.detector is not None:
            self.detector.warm()
        if self.moderation is not None:
            self.moderation.warm()
        if self._counts_tokens():
            self.counter.load()

    def _counts_tokens(self) -> bool:
        return any(p.tier != "device" for p in self.providers.values())

    async def start(self) -> None:
        await asyncio.gather(*(p.start() for p in self.providers.values()))
        await asyncio.to_thread(lambda: self.router.classifier)
        if self.detector is not None:
            await asyncio.to_thread(self.detector.warm)
        if self._counts_tokens():
            await asyncio.to_thread(self.counter.load)
        await self.limiter.start()
        if self.moderation is not None:
            await asyncio.to_thread(self.moderation.warm)
            await self.moderation.start()
        if self.release_gate is not None:
            await self.refresh_release_gate()
            self._gate_task = asyncio.create_task(self._watch_release_gate())
        if self.recorder is not None:
            await asyncio.to_thread(self.recover)
            self.recorder.journal.open()
            await self.recorder.start()
        self.started = True

    def recover(self) -> int:
        """Post what a process that died left in the journal (idempotently)."""
        found = journal.recover(self.journal_dir)
        if not found.paths:
            return 0
        try:
            if found.records:
                write_records(self.engine, self.book, found.records)
        except Exception:
            found.abandon()
            raise
        found.release()
        if found.records:
            log.warning(
                "recovered %d metered and %d interrupted requests from the journal",
                found.metered,
                found.interrupted,
            )
        return len(found.records)

    async def _spent(self, scope: Scope, start: datetime, end: datetime) -> int:
        """Units billed to a scope in [start, end), from the usage table (budgets' seed)."""

        def query() -> int:
            where = [Usage.created_at >= start, Usage.created_at < end]
            if scope.kind == "tenant":
                where.append(Usage.tenant == scope.ident)
            elif scope.kind == "user":
                where += [
                    Usage.tenant == scope.tenant,
                    Usage.user_hash == scope.ident.split("/")[-1],
                ]
            else:
                where.append(Usage.key_id == scope.ident)
            with self.engine.connect() as conn:
                return int(
                    conn.scalar(select(func.coalesce(func.sum(Usage.billed), 0)).where(*where)) or 0
                )

        return await asyncio.to_thread(query)

    async def refresh_release_gate(self) -> None:
        """Re-read the red-team results: which gated models may be routed now."""
        assert self.release_gate is not None
        self.router.pending = await asyncio.to_thread(self.release_gate.refresh, self.engine)

    async def _watch_release_gate(self) -> None:
        while True:
            await asyncio.sleep(RELEASE_GATE_REFRESH)
            try:
                await self.refresh_release_gate()
            except Exception:  # the database may be away; the last state stands
                log.exception("reading the release gate's results failed")

    async def close(self) -> None:
        self.started = False
        if self._gate_task is not None:
            self._gate_task.cancel()
            await asyncio.gather(self._gate_task, return_exceptions=True)
        if self.moderation is not None:
            await self.moderation.close()
        if self.recorder is not None:
            await self.recorder.close()
        await self.limiter.close()
        await asyncio.gather(*(p.close() for p in self.providers.values()), return_exceptions=True)
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)
        self.engine.dispose()

    def ready(self) -> dict[str, bool]:
        """What /readyz reports: each provider, and the database."""
        checks = {f"provider:{n}": p.ready() for n, p in self.providers.items()}
        try:
            db.ping(self.engine)
            checks["database"] = True
        except Exception:  # any failure to reach the database means "not ready"
            checks["database"] = False
        checks["started"] = self.started
        return checks
