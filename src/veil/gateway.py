"""The runtime: everything built from the config once, started and stopped together.

The HTTP app, the CLI and Python callers all hold a ``Gateway`` and call its pipeline.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from veil.auth import KeyStore
from veil.config import Config
from veil.gate import Gate
from veil.home import default_database_url
from veil.ledger.usage import UsageRecorder
from veil.metrics import Metrics
from veil.pipeline import Pipeline
from veil.policy import ConsentStore, PolicyEngine
from veil.providers import Provider, build_provider
from veil.providers.resilience import Breakers
from veil.routing import PreferenceStore, Router
from veil.store import db

if TYPE_CHECKING:
    from veil.privacy import PiiDetector

log = logging.getLogger("veil")


class Gateway:
    def __init__(self, config: Config, home: Path) -> None:
        self.config = config
        self.home = home
        self.engine = db.make_engine(config.database.url or default_database_url(home))
        db.migrate(self.engine)
        db.restrict_file(self.engine)
        self.keys = KeyStore(self.engine, config.server.key_cache_seconds)
        self.providers: dict[str, Provider] = {p.name: build_provider(p) for p in config.providers}
        self.router = Router(config, self.providers)
        self.metrics = Metrics()
        self.recorder = UsageRecorder(self.engine)
        salt = db.install_salt(self.engine)
        self.policy = PolicyEngine(config)
        self.consents = ConsentStore(self.engine, salt, config.server.key_cache_seconds)
        self.preferences = PreferenceStore(
            self.engine, salt, config.server.key_cache_seconds, known_model=self.router.knows
        )
        self.detector: PiiDetector | None = None
        if any(p.tier == "partner" for p in self.providers.values()):
            from veil.privacy import PiiDetector

            self.detector = PiiDetector()
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
        )
        for name, provider in self.providers.items():
            if provider.queue_depth is not None:
                self.metrics.watch_queue(name, provider.queue_depth)
        self.started = False

    def prepare(self) -> None:
        """Load models before serving, so a bad model file is a clear error, not a crash."""
        for provider in self.providers.values():
            provider.prepare()
        self.router.classifier  # noqa: B018 - load the task classifier now, not on a request
        if self.detector is not None:
            self.detector.warm()

    async def start(self) -> None:
        await asyncio.gather(*(p.start() for p in self.providers.values()))
        await asyncio.to_thread(lambda: self.router.classifier)
        if self.detector is not None:
            await asyncio.to_thread(self.detector.warm)
        await self.recorder.start()
        self.started = True

    async def close(self) -> None:
        self.started = False
        await self.recorder.close()
        await asyncio.gather(*(p.close() for p in self.providers.values()), return_exceptions=True)
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
