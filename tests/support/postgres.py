"""A fresh PostgreSQL database for a test (or a session), on the server at ``PGTEST_ADMIN_URL``.

Default: trust-auth ``postgres`` on 127.0.0.1:5432, as on the development machines and in CI.
When no server answers there, the test is skipped with that reason.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

from anode.store.database import create_engine, upgrade

ADMIN_URL = os.environ.get("PGTEST_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@contextmanager
def fresh_pg_database(prefix: str, *, migrate: bool = False) -> Iterator[str]:
    """A new database with a random name (``postgresql://`` URL, as users write it); dropped afterwards."""
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        connection = admin.connect()
    except sa.exc.OperationalError as exc:
        admin.dispose()
        pytest.skip(f"no PostgreSQL server at {ADMIN_URL}: {type(exc.orig).__name__}")
    name = f"{prefix}_{secrets.token_hex(6)}"
    with connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(ADMIN_URL).set(drivername="postgresql", database=name).render_as_string(hide_password=False)
    try:
        if migrate:
            engine = create_engine(url)
            upgrade(engine)
            engine.dispose()
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def emptied(url: str) -> str:
    """``url``'s database with every table dropped (a module's database, reused by each test)."""
    server = create_engine(url)
    with server.begin() as connection:
        connection.execute(sa.text("DROP SCHEMA public CASCADE"))
        connection.execute(sa.text("CREATE SCHEMA public"))
    server.dispose()
    return url
