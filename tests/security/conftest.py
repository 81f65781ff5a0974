"""Fixtures for the security filter's tests: anvil (its own, for this directory) and databases.

Tests that use ``anvil`` get the ``chain`` marker and are skipped, with the reason, when
``node_modules`` is missing; PostgreSQL tests skip when no server answers (see ``pg_url``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from anode.store.database import create_engine, upgrade
from tests.integration.conftest import anvil  # noqa: F401
from tests.integration.test_store_postgres import pg_url  # noqa: F401


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
