"""The store on PostgreSQL, and the Redis fixture, against real throwaway servers.

The gateway runs as ``veil serve`` with ``database: {url: postgresql+psycopg://…}``; every
row it writes is read back from PostgreSQL itself.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.pool import NullPool

from tests.support.cli import run
from tests.support.server import ADMIN_KEY, VeilServer, key_for, start_server, usage_row
from tests.support.services import PostgresServer, RedisServer
from veil.store import db
from veil.store.models import Base

HEAD = ScriptDirectory.from_config(
    AlembicConfig(str(Path(db.__file__).with_name("alembic.ini")))
).get_current_head()
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


def config_for(url: str) -> str:
    # key_cache_seconds 0: a key revoked through one front is refused at once by the server.
    return f"""
server: {{key_cache_seconds: 0}}
database: {{url: "{url}"}}
providers: [{{name: fake, type: fake}}]
models: [{{name: echo, deployments: [{{provider: fake, model: echo}}]}}]
"""


def scalar_rows(url: str, sql: str, **params: object) -> list[tuple[object, ...]]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params)]
    finally:
        engine.dispose()


@pytest.fixture
def engine(pg_url: str) -> Iterator[Engine]:
    eng = db.make_engine(pg_url)
    yield eng
    eng.dispose()


# ------------------------------------------------------------------ migrations


def test_migrate_builds_every_table_at_head_and_is_idempotent(engine: Engine, pg_url: str) -> None:
    assert engine.dialect.name == "postgresql"
    db.migrate(engine)
    db.set_meta(engine, "probe", "kept")
    db.migrate(engine)  # a second run must change nothing and drop nothing
    with engine.connect() as conn:
        versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        tables = set(inspect(conn).get_table_names())
        created = inspect(conn).get_columns("usage")
    assert versions == [HEAD]
    assert tables == set(Base.metadata.tables) | {"alembic_version"}
    assert db.get_meta(engine, "probe") == "kept"
    # Each model column exists on PostgreSQL, timestamps keep their zone.
    assert {c["name"] for c in created} == set(Base.metadata.tables["usage"].columns.keys())
    zoned = scalar_rows(
        pg_url,
        "SELECT DISTINCT data_type FROM information_schema.columns"
        " WHERE table_schema = 'public' AND data_type LIKE 'timestamp%'",
    )
    assert zoned == [("timestamp with time zone",)]


def test_replicas_migrating_together_take_turns(pg_url: str) -> None:
    # Replicas' first starts, made to migrate at the same moment: without the migration lock
    # they race to create the same tables and all but one fail.
    code = (
        "import sys; from veil.store import db; engine = db.make_engine(sys.argv[1]); "
        "db.ping(engine); print('ready', flush=True); sys.stdin.readline(); "
        "db.migrate(engine); engine.dispose()"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, pg_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    for p in procs:  # each one has imported and connected: now all start at once
        assert p.stdout is not None
        with p.stdout:
            assert p.stdout.readline() == "ready\n"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.close()
    errors = []
    for p in procs:
        assert p.stderr is not None
        with p.stderr:
            errors.append(p.stderr.read()[-2000:])
        p.wait(120)
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    assert scalar_rows(pg_url, "SELECT version_num FROM alembic_version") == [(HEAD,)]


def test_install_salt_is_made_once_and_kept(engine: Engine) -> None:
    db.migrate(engine)
    salt = db.install_salt(engine)
    assert len(salt) == 64
    assert db.install_salt(engine) == salt


def test_postgres_engine_pools_and_survives_dropped_connections(
    engine: Engine, postgres_server: PostgresServer
) -> None:
    assert engine.pool.size() == 10  # type: ignore[attr-defined]
    db.ping(engine)  # leaves one connection in the pool
    # PostgreSQL restarting or a proxy closing idle connections: the pooled one is dead.
    admin = create_engine(postgres_server.url("postgres"), poolclass=NullPool)
    try:
        with admin.connect() as conn:
            ended = conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": engine.url.database},
            ).all()
    finally:
        admin.dispose()
    assert ended == [(True,)]
    db.ping(engine)  # pre-ping notices and reconnects instead of failing the caller


# ------------------------------------------------------------------ the gateway on PostgreSQL


@pytest.fixture(scope="module")
def pg_gateway(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[VeilServer, str]]:
    """One gateway on its own PostgreSQL database, for the end-to-end tests below."""
    name = postgres_server.create_database()
    url = postgres_server.url(name)
    server = start_server(tmp_path_factory.mktemp("pg") / "home", config_for(url))
    yield server, url
    server.stop()
    postgres_server.drop_database(name)


def test_the_gateway_migrates_postgres_and_keeps_no_sqlite_file(
    pg_gateway: tuple[VeilServer, str],
) -> None:
    server, url = pg_gateway
    ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["database"] is True
    assert scalar_rows(url, "SELECT version_num FROM alembic_version") == [(HEAD,)]
    assert [r[0] for r in scalar_rows(url, "SELECT key FROM meta WHERE key = 'user_salt'")] == [
        "user_salt"
    ]
    assert not (server.home / "veil.db").exists()


def test_keys_from_the_cli_and_the_admin_api_share_postgres(
    pg_gateway: tuple[VeilServer, str], tmp_path: Path
) -> None:
    server, url = pg_gateway
    config = tmp_path / "veil.yaml"
    config.write_text(config_for(url))
    # The CLI runs with a home of its own: the only thing it shares with the server is PG.
    made = run(
        tmp_path / "cli-home", "keys", "create", "--tenant", "pg-cli", "--config", str(config)
    )
    assert made.returncode == 0, made.stderr
    cli_key = made.stdout.strip()
    assert httpx.get(server.url + "/v1/models", headers=bearer(cli_key)).status_code == 200

    r = httpx.post(server.url + "/admin/keys", headers=ADMIN, json={"tenant": "pg-api"})
    assert r.status_code == 201, r.text
    api_key, api_id = r.json()["key"], r.json()["id"]
    listed = httpx.get(server.url + "/admin/keys", headers=ADMIN, params={"tenant": "pg-cli"})
    assert [k["tenant"] for k in listed.json()["data"]] == ["pg-cli"]
    shown = run(
        tmp_path / "cli-home", "keys", "list", "--tenant", "pg-api", "--config", str(config)
    )
    assert shown.returncode == 0, shown.stderr
    assert api_id in shown.stdout
    assert api_key not in shown.stdout
    assert not (tmp_path / "cli-home" / "veil.db").exists()

    assert httpx.delete(f"{server.url}/admin/keys/{api_id}", headers=ADMIN).status_code == 200
    assert httpx.get(server.url + "/v1/models", headers=bearer(api_key)).status_code == 401
    rows = scalar_rows(
        url,
        "SELECT tenant, key_hash, revoked_at IS NOT NULL FROM api_keys WHERE id = :id",
        id=api_id,
    )
    assert len(rows) == 1
    tenant, key_hash, revoked = rows[0]
    assert (tenant, revoked) == ("pg-api", True)
    assert key_hash != api_key  # the hash, never the key
    assert len(str(key_hash)) == 64


def test_a_chat_request_writes_its_usage_row_to_postgres(
    pg_gateway: tuple[VeilServer, str],
) -> None:
    server, url = pg_gateway
    key = key_for(server, "pg-chat", user="carol")
    body = {"model": "echo", "messages": [{"role": "user", "content": "three little words"}]}
    r = httpx.post(server.url + "/v1/chat/completions", headers=bearer(key), json=body)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "three little words"
    row = usage_row(server, r.headers["x-request-id"], url=url)
    assert (row["tenant"], row["provider"], row["model"], row["tier"]) == (
        "pg-chat",
        "fake",
        "echo",
        "private",
    )
    assert (row["status"], row["stream"], row["completion_tokens"]) == (200, False, 3)
    assert row["user_hash"] not in (None, "carol")
    assert row["created_at"].tzinfo is not None

    with httpx.stream(
        "POST",
        server.url + "/v1/chat/completions",
        headers=bearer(key),
        json=body | {"stream": True},
    ) as streamed:
        assert streamed.status_code == 200
        streamed.read()
    row = usage_row(server, streamed.headers["x-request-id"], url=url)
    assert (row["stream"], row["status"], row["completion_tokens"]) == (True, 200, 3)


def test_consents_are_granted_listed_revoked_and_audited_on_postgres(
    pg_gateway: tuple[VeilServer, str],
) -> None:
    server, url = pg_gateway
    user = bearer(key_for(server, "pg-consent", user="dave-42"))
    with httpx.Client(base_url=server.url, headers=user) as http:
        assert http.post("/v1/consents", json={"partner": "acme-ai"}).status_code == 201
        assert http.post("/v1/consents", json={"partner": "other-ai"}).status_code == 201
        listed = http.get("/v1/consents").json()["data"]
        assert [c["partner"] for c in listed] == ["acme-ai", "other-ai"]
        left = http.delete("/v1/consents/acme-ai")
        assert left.status_code == 200, left.text
        assert [c["partner"] for c in left.json()["data"]] == ["other-ai"]
        assert http.delete("/v1/consents/acme-ai").status_code == 404

    events = httpx.get(
        server.url + "/admin/consent-events", headers=ADMIN, params={"tenant": "pg-consent"}
    ).json()["data"]
    assert [(e["action"], e["partner"]) for e in events] == [
        ("grant", "acme-ai"),
        ("grant", "other-ai"),
        ("revoke", "acme-ai"),
    ]
    stored = scalar_rows(
        url,
        "SELECT partner, user_hash, revoked_at IS NOT NULL FROM consents"
        " WHERE tenant = 'pg-consent' ORDER BY id",
    )
    assert [(p, revoked) for p, _, revoked in stored] == [("acme-ai", True), ("other-ai", False)]
    assert all(h != "dave-42" for _, h, _ in stored)


def test_preferences_are_replaced_and_read_back_on_postgres(
    pg_gateway: tuple[VeilServer, str],
) -> None:
    server, url = pg_gateway
    user = bearer(key_for(server, "pg-prefs", user="erin"))
    with httpx.Client(base_url=server.url, headers=user) as http:
        assert http.get("/v1/preferences").json()["preferences"] == {}
        r = http.put("/v1/preferences", json={"preferences": {"code": "echo", "chat": "fake/echo"}})
        assert r.status_code == 200, r.text
        assert http.get("/v1/preferences").json()["preferences"] == {
            "chat": "fake/echo",
            "code": "echo",
        }
        r = http.put("/v1/preferences", json={"preferences": {"code": "fake/echo"}})
        assert r.status_code == 200, r.text
    assert scalar_rows(
        url, "SELECT category, model FROM preferences WHERE tenant = 'pg-prefs'"
    ) == [("code", "fake/echo")]


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


# ------------------------------------------------------------------ Redis


def test_redis_fixture_serves_redis_asyncio_without_persistence(
    fresh_redis_url: str, redis_server: RedisServer
) -> None:
    async def exercise() -> None:
        client = redis.asyncio.Redis.from_url(fresh_redis_url)
        try:
            assert await client.dbsize() == 0  # emptied for this test
            assert await client.incrby("veil:rate:t1", 5) == 5
            assert await client.incrby("veil:rate:t1", 2) == 7
            assert await client.expire("veil:rate:t1", 60)
            assert 0 < await client.ttl("veil:rate:t1") <= 60
            assert await client.config_get("save") == {"save": ""}
            assert await client.config_get("appendonly") == {"appendonly": "no"}
            redis_server.flushdb()
            assert await client.exists("veil:rate:t1") == 0
        finally:
            await client.aclose()

    asyncio.run(exercise())
