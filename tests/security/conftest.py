"""Fixtures for the security filter's tests: anvil (its own, for this directory) and databases.

Tests that use ``anvil`` get the ``chain`` marker and are skipped, with the reason, when
``node_modules`` is missing; PostgreSQL tests skip when no server answers (see ``pg_url``).
"""

from __future__ import annotations

from tests.integration.conftest import anvil  # noqa: F401
from tests.integration.test_store_postgres import pg_url  # noqa: F401
from tests.support.databases import database_url, engine  # noqa: F401
