"""Fixtures for the policy engine's tests: real PostgreSQL and Redis, when this machine runs them.

PostgreSQL: one fresh database per test session (random name, created through the ``postgres``
database, migrated, dropped at the end) at ``PGTEST_ADMIN_URL`` (default: trust-auth ``postgres``
on 127.0.0.1:5432). Redis: ``ANODE_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``, the
variable ``tests/checks`` reads too), every test under its own key prefix, deleted afterwards.
Tests that need one of them are skipped, with the reason, when it does not answer.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from redis.asyncio import Redis

from anode.policy.calls import Call
from anode.policy.evaluate import OpFacts
from anode.store.database import create_engine, upgrade
from tests.support.postgres import fresh_pg_database as support_pg_database

REDIS_URL = os.environ.get("ANODE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

SENDER = "0xA1A1a1a1A1A1A1A1A1a1a1a1a1a1A1A1a1A1a1a1"
OTHER_SENDER = "0xB2B2B2b2B2B2b2B2B2b2B2B2B2b2b2b2b2b2B2b2"
TOKEN = "0x1111111111111111111111111111111111111111"
NFT = "0x2222222222222222222222222222222222222222"
TRANSFER = "0xa9059cbb"
MINT = "0x40c10f19"
#: SimpleAccount execute(address,uint256,bytes): the account-level function of the default facts
EXECUTE_SELECTOR = "0xb61d27f6"
GWEI = 10**9
ETH = 10**18


def facts(
    sender: str = SENDER,
    *,
    chain_id: int = 31337,
    calls: tuple[Call, ...] | None = (Call(TOKEN, 0, TRANSFER),),
    max_fee_per_gas: int = 2 * GWEI,
    max_gas_cost: int = 10**15,
    account_selector: str | None = EXECUTE_SELECTOR,
) -> OpFacts:
    return OpFacts(sender, chain_id, calls, max_fee_per_gas, max_gas_cost, account_selector)


@contextmanager
def fresh_pg_database(prefix: str = "anode_policy") -> Iterator[str]:
    """A new, migrated PostgreSQL database (``postgresql://`` URL); dropped afterwards."""
    with support_pg_database(prefix, migrate=True) as url:
        yield url


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """The session's PostgreSQL database (tests keep apart by unique policy ids and counter keys)."""
    with fresh_pg_database() as url:
        yield url


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[sa.Engine]:
    engine = create_engine(pg_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'anode.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis server at {REDIS_URL}: {type(exc).__name__}; set ANODE_TEST_REDIS_URL")
    finally:
        client.close()
    return REDIS_URL


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    import redis

    prefix = f"anode-test:{{{secrets.token_hex(6)}}}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def unused_port() -> Iterator[int]:
    """A port nothing listens on: bound (so nobody else takes it) but never listened on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def policy(**fields: Any) -> dict[str, Any]:
    """A policy document with defaults: a project policy named like its id."""
    fields.setdefault("id", "p-" + secrets.token_hex(4))
    fields.setdefault("name", fields["id"])
    fields.setdefault("type", "project")
    return fields
