"""The engine and schema migrations.

The gateway uses a synchronous SQLAlchemy engine and calls it from worker threads
(``asyncio.to_thread``): the hot path never waits on the database except on a key-cache
miss, and usage rows are written in batches in the background.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Engine, create_engine, event, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from veil.store.models import Meta

_ALEMBIC_INI = Path(__file__).with_name("alembic.ini")
#: PostgreSQL advisory lock key held while migrating (any fixed 64-bit number; "veil.mig").
_MIGRATION_LOCK = 0x7665696C2E6D6967


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            # WAL lets `veil keys create` write while the server reads and writes.
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    # A server shares the engine between its worker threads (usage writer, key lookups, the
    # admin API); the pool bounds the connections each replica holds open.
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, pool_recycle=1800)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    cfg = AlembicConfig(str(_ALEMBIC_INI))
    logging.getLogger("alembic").setLevel(logging.WARNING)
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Replicas starting together would each create the same tables; the lock makes
            # them take turns, and those after the first find the schema already at head.
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def restrict_file(engine: Engine) -> None:
    """Make a SQLite database (and its WAL) readable by its owner only: it holds the
    pseudonym salt and key hashes."""
    path = engine.url.database
    if engine.dialect.name != "sqlite" or not path or path == ":memory:":
        return
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path + suffix, 0o600)


def sessions(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def get_meta(engine: Engine, key: str) -> str | None:
    with Session(engine) as s:
        return s.scalar(select(Meta.value).where(Meta.key == key))


def set_meta(engine: Engine, key: str, value: str) -> None:
    with Session(engine) as s, s.begin():
        s.merge(Meta(key=key, value=value))


def add_meta(engine: Engine, key: str, value: str) -> str:
    """Store ``value`` under ``key`` unless a value is there already; return what is
    stored (another process may have been first)."""
    try:
        with Session(engine) as s, s.begin():
            if s.get(Meta, key) is None:
                s.add(Meta(key=key, value=value))
    except IntegrityError:
        pass  # another process inserted it between our read and our write
    stored = get_meta(engine, key)
    assert stored is not None
    return stored


def install_salt(engine: Engine) -> str:
    """The install's secret salt for user pseudonyms, made on first use."""
    salt = get_meta(engine, "user_salt")
    if salt is None:
        # Another replica may make it at the same moment: whichever commits first wins.
        with contextlib.suppress(IntegrityError), Session(engine) as s, s.begin():
            s.add(Meta(key="user_salt", value=secrets.token_hex(32)))
        salt = get_meta(engine, "user_salt")
        assert salt is not None
    return salt


def as_utc(moment: datetime) -> datetime:
    """SQLite hands datetimes back without their zone; Veil writes them in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
