"""Engines and schema upgrades for SQLite (the embedded default) and PostgreSQL."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from anode.errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: this process's writers are still serialised
    fcntl = None  # type: ignore[assignment]

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class SqliteWriteLock:
    """One writer at a time on a SQLite file: a thread lock for this process's writers, then an
    exclusive ``flock`` on a file beside the database (``<database>.writer-lock``) for other
    processes (``anode serve --workers N``).

    SQLite itself lets one connection write at a time, and one that finds the file locked sleeps
    in the busy handler (1, 2, 5, 10 ... 100 ms) before it retries: with several processes
    writing, those sleeps were the p99 (200-800 ms at 64 clients with two workers). A waiter on
    ``flock`` is woken the moment the lock is released. The descriptor is opened per process, as
    a ``flock`` is shared by every process a descriptor was forked into.
    """

    def __init__(self, path: Path | None) -> None:
        self._threads = threading.Lock()
        self._path = path
        self._fd: int | None = None
        self._pid = 0

    def __enter__(self) -> SqliteWriteLock:
        self._threads.acquire()
        if self._path is not None and fcntl is not None:
            try:
                fcntl.flock(self._descriptor(), fcntl.LOCK_EX)
            except BaseException:
                self._threads.release()
                raise
        return self

    def __exit__(self, *_: object) -> None:
        try:
            if self._path is not None and fcntl is not None and self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()

    def _descriptor(self) -> int:
        assert self._path is not None
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
            self._pid = os.getpid()
        return self._fd


_SQLITE_WRITE_LOCKS: dict[str, SqliteWriteLock] = {}
_LOCKS_LOCK = threading.Lock()


def write_lock(engine: sa.Engine) -> contextlib.AbstractContextManager[Any]:
    """Held around every write transaction on a SQLite database by the writers that write on every
    request (the ledger, the limiter): see :class:`SqliteWriteLock`. PostgreSQL locks rows: no
    lock here."""
    if engine.dialect.name != "sqlite":
        return contextlib.nullcontext()
    key = engine.url.render_as_string()
    with _LOCKS_LOCK:
        lock = _SQLITE_WRITE_LOCKS.get(key)
        if lock is None:
            database = engine.url.database
            on_file = database not in (None, "", ":memory:") and not str(database).startswith("file::memory:")
            lock = _SQLITE_WRITE_LOCKS[key] = SqliteWriteLock(Path(f"{database}.writer-lock") if on_file else None)
        return lock


def invalidate(connection: Any) -> None:
    """Close a kept pool connection for good (the pool opens a new one next time); ``None`` or
    a connection the server already dropped is fine."""
    if connection is not None:
        with contextlib.suppress(Exception):  # already gone
            connection.invalidate()


def normalise_url(url: str) -> str:
    """Accept ``postgresql://`` URLs and use the psycopg 3 driver for them."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def create_engine(url: str) -> sa.Engine:
    try:
        parsed = make_url(normalise_url(url))
    except sa.exc.ArgumentError:
        scheme = url.split("://", 1)[0] if "://" in url else "(no scheme)"
        raise ConfigError(  # not the URL itself: it may hold a password
            f"database_url is not a SQLAlchemy URL (scheme {scheme[:32]!r}): write e.g. "
            "sqlite:///anode.db or postgresql://user:password@host/database"
        ) from None
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
