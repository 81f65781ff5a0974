"""Engines and schema upgrades for SQLite (the embedded default) and PostgreSQL."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from anode.errors import ConfigError

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


_SQLITE_WRITE_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_LOCK = threading.Lock()


def write_lock(engine: sa.Engine) -> contextlib.AbstractContextManager[Any]:
    """Held around every write transaction on a SQLite file, by every writer in this process.

    SQLite lets one connection write at a time; a second connection that finds the file locked
    sleeps in the busy handler (1, 2, 5, 10 ... ms) before it retries. The ledger's writer and the
    limiter's are two connections of one process: queueing them on a lock here costs microseconds
    instead. Other processes still meet the busy timeout. PostgreSQL locks rows: no lock here.
    """
    if engine.dialect.name != "sqlite":
        return contextlib.nullcontext()
    key = engine.url.render_as_string()
    with _LOCKS_LOCK:
        return _SQLITE_WRITE_LOCKS.setdefault(key, threading.Lock())


def normalise_url(url: str) -> str:
    """Accept ``postgresql://`` URLs and use the psycopg 3 driver for them."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def create_engine(url: str) -> sa.Engine:
    try:
        parsed = make_url(normalise_url(url))
    except sa.exc.ArgumentError:
        raise ConfigError(f"database_url is not a SQLAlchemy URL: {url!r}") from None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed, connect_args={"check_same_thread": False})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(parsed, pool_size=5, max_overflow=5, pool_pre_ping=True)


def alembic_config(engine_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", normalise_url(engine_url).replace("%", "%%"))
    return config


def upgrade(engine: sa.Engine) -> None:
    """Bring the schema to the newest migration (idempotent).

    The migrations have one head (``0006`` merged the branches 0002-0005 once grew from 0001), so
    this is a plain ``upgrade head``; a database left at those four branch heads by an older aNode
    reaches it the same way.
    """
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
