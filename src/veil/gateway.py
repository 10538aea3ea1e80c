"""The runtime: everything built from the config once, started and stopped together.

The HTTP app, the CLI and Python callers all hold a ``Gateway`` and call its pipeline.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from veil.auth import KeyStore
from veil.config import Config
from veil.home import default_database_url
from veil.ledger.usage import UsageRecorder
from veil.metrics import Metrics
from veil.pipeline import Pipeline
from veil.providers import Provider, build_provider
from veil.routing import Router
from veil.store import db

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
        self.pipeline = Pipeline(
            self.keys,
            self.router,
            self.recorder,
            self.metrics,
            db.install_salt(self.engine),
            auth_required=config.server.auth == "required",
        )
        for name, provider in self.providers.items():
            if provider.queue_depth is not None:
                self.metrics.watch_queue(name, provider.queue_depth)
        self.started = False

    def prepare(self) -> None:
        """Load models before serving, so a bad model file is a clear error, not a crash."""
        for provider in self.providers.values():
            provider.prepare()

    async def start(self) -> None:
        await asyncio.gather(*(p.start() for p in self.providers.values()))
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
