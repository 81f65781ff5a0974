"""Fixtures for the security filter's tests: anvil (its own, for this directory) and databases.

Tests that use ``anvil`` get the ``chain`` marker and are skipped, with the reason, when
``node_modules`` is missing; PostgreSQL tests skip when no server answers (see ``pg_url``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from anode.devchain.artifacts import node_modules_available
from tests.integration.conftest import anvil  # noqa: F401
from tests.integration.test_store_postgres import pg_url  # noqa: F401

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    available = node_modules_available()
    skip = pytest.mark.skip(reason="node_modules missing: run `npm install` in the repository root")
    for item in items:
        if _HERE in item.path.resolve().parents and "anvil" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.chain)
            if not available:
                item.add_marker(skip)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'anode.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url
