"""Fixtures for tests that run on SQLite and on PostgreSQL alike.

Import them into a ``conftest.py`` that also provides ``pg_url`` (a PostgreSQL URL, skipping when
no server answers): ``database_url`` asks for it only for its ``postgresql`` case.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from anode.store.database import create_engine, upgrade


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'anode.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """A migrated database of each kind (``database_url``)."""
    engine = create_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()
