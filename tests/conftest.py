from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from tests.support.partner import close_clients
from tests.support.server import ADMIN_KEY, VeilServer, start_server
from tests.support.services import (
    PG_MISSING,
    REDIS_MISSING,
    PostgresServer,
    RedisServer,
    postgres_bin_dir,
    redis_binary,
    start_postgres,
    start_redis,
)
from tests.support.upstream import Upstream, free_port

REQUIRE_ALL = os.environ.get("VEIL_REQUIRE_ALL") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    # With VEIL_REQUIRE_ALL=1 (CI), a test skipped for a missing service is a failure.
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under VEIL_REQUIRE_ALL=1: {report.longrepr}"


@pytest.fixture(autouse=True)
def _close_sdk_clients() -> Iterator[None]:
    yield
    close_clients()


@pytest.fixture(scope="session")
def upstream() -> Iterator[Upstream]:
    up = Upstream().start()
    yield up
    up.stop()


def main_config(upstream: Upstream) -> str:
    dead = free_port()  # nothing listens there: connection refused
    return f"""
providers:
  - {{name: device, type: llama_cpp, model_path: bundled, n_ctx: 1024}}
  - {{name: fake, type: fake, token_delay: 0.2}}
  - name: upstream
    type: openai_compatible
    tier: private
    base_url: {upstream.base_url}
    api_key: env:TEST_UPSTREAM_KEY
    timeout: {{connect: 2, read: 1.5, total: 30}}
  - {{name: down, type: openai_compatible, base_url: "http://127.0.0.1:{dead}/v1"}}
  - name: upstream-headers
    type: openai_compatible
    base_url: {upstream.base_url}
    api_key: env:TEST_UPSTREAM_KEY
    headers: {{X-Team: env:TEST_UPSTREAM_KEY, Authorization: "Bearer must-not-be-sent"}}
models:
  - {{name: private-ok, aliases: [private], deployments: [{{provider: upstream, model: ok}}]}}
  - {{name: private-echo, deployments: [{{provider: upstream, model: echo}}]}}
  - {{name: private-no-usage, deployments: [{{provider: upstream, model: no-usage}}]}}
  - {{name: private-400, deployments: [{{provider: upstream, model: error-400}}]}}
  - {{name: private-401, deployments: [{{provider: upstream, model: error-401}}]}}
  - {{name: private-429, deployments: [{{provider: upstream, model: error-429}}]}}
  - {{name: private-500, deployments: [{{provider: upstream, model: error-500}}]}}
  - {{name: private-503, deployments: [{{provider: upstream, model: error-503}}]}}
  - {{name: private-slow, deployments: [{{provider: upstream, model: slow}}]}}
  - {{name: private-bad-json, deployments: [{{provider: upstream, model: invalid-json}}]}}
  - {{name: private-cut, deployments: [{{provider: upstream, model: cut}}]}}
  - {{name: unreachable, deployments: [{{provider: down, model: anything}}]}}
  - {{name: private-headers, deployments: [{{provider: upstream-headers, model: ok}}]}}
"""


UPSTREAM_KEY = "sk-upstream-secret-for-tests-0000"


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[VeilServer]:
    """One gateway for the read-mostly end-to-end tests."""
    home = tmp_path_factory.mktemp("veil") / "home"
    srv = start_server(home, main_config(upstream), env={"TEST_UPSTREAM_KEY": UPSTREAM_KEY})
    yield srv
    srv.stop()


@pytest.fixture
def client(server: VeilServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=server.url + "/v1", api_key=ADMIN_KEY, max_retries=0, timeout=60
    ) as sdk:
        yield sdk


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"authorization": f"Bearer {ADMIN_KEY}"}


def db_path(home: Path) -> Path:
    return home / "veil.db"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for the session (initdb in a temporary directory)."""
    if postgres_bin_dir() is None:
        pytest.skip(PG_MISSING)
    pg = start_postgres()
    yield pg
    pg.stop()


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The SQLAlchemy URL of a new, empty database, dropped after the test."""
    name = postgres_server.create_database()
    yield postgres_server.url(name)
    postgres_server.drop_database(name)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A throwaway Redis server for the session (no snapshots, no append-only file)."""
    if redis_binary() is None:
        pytest.skip(REDIS_MISSING)
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def fresh_redis_url(redis_server: RedisServer) -> str:
    """``redis_url`` with its database emptied (FLUSHDB) before the test."""
    redis_server.flushdb()
    return redis_server.url
