"""Fixtures for key custody tests: the signer manager, the audit log, metrics, rotation.

Tests that use ``anvil`` get the ``chain`` marker and are skipped, with the reason, when
``node_modules`` is missing. PostgreSQL tests use one database with a random name for the whole
session (dropped at the end), made on the server at ``PGTEST_ADMIN_URL`` (default: trust-auth
``postgres`` on 127.0.0.1:5432), and are skipped, with the reason, when no server answers there.

Key roles on the session's sandbox deployment (anvil's default accounts): account 0 owns every
paymaster; accounts 9 and 8 are signers of every SingletonPaymaster (9 is also the
VerifyingPaymasters' one signer); accounts 7 and 6 are keys no paymaster accepts until a
rotation test adds them (and puts things back afterwards).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from eth_account import Account

from anode.devchain.anvil import DEFAULT_ACCOUNT_KEYS, Anvil
from anode.devchain.deploy import Deployment, deploy_sandbox
from anode.signers import registry
from tests.keys import fakes
from tests.support.databases import database_url, engine  # noqa: F401
from tests.support.postgres import fresh_pg_database

KEY_9, KEY_8, KEY_7, KEY_6 = (DEFAULT_ACCOUNT_KEYS[i] for i in (9, 8, 7, 6))
ADDRESS_9, ADDRESS_8, ADDRESS_7, ADDRESS_6 = (Account.from_key(k).address for k in (KEY_9, KEY_8, KEY_7, KEY_6))


@pytest.fixture(scope="session")
def anvil() -> Iterator[Anvil]:
    with Anvil() as node:
        yield node


@pytest.fixture(scope="session")
def deployment(anvil: Anvil) -> Deployment:
    return deploy_sandbox(anvil.rpc_url, [ADDRESS_9, ADDRESS_8])


@pytest.fixture(autouse=True)
def flaky_backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``signer: {type: flaky, …}``: the in-process backend tests can break on purpose."""
    monkeypatch.setitem(registry.BACKENDS, "flaky", "tests.keys.fakes")
    yield
    fakes.reset()


@pytest.fixture(scope="session")
def pg_session_url() -> Iterator[str]:
    """One PostgreSQL database (random name) for the session; dropped at the end."""
    with fresh_pg_database("anode_keys") as url:
        yield url


@pytest.fixture
def pg_url(pg_session_url: str) -> Iterator[str]:
    """The session's PostgreSQL database, emptied of aNode's tables before each test."""
    server = sa.create_engine(pg_session_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with server.begin() as connection:
        connection.execute(sa.text("DROP SCHEMA public CASCADE"))
        connection.execute(sa.text("CREATE SCHEMA public"))
    server.dispose()
    yield pg_session_url
