"""Confirmation tokens on the real databases (SQLite file, and PostgreSQL when one answers): once
only, bound to one operation and one API key, expiring, surviving a restart, and atomic when many
requests (and two server processes) race with one token.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa

from anode.errors import StoreUnavailable
from anode.pipeline.modules.security import Config
from anode.store.confirmations import (
    DEFAULT_MAX_PENDING_PER_KEY,
    KEEP_EXPIRED,
    PRUNE_EVERY_SECONDS,
    Redemption,
    SqlConfirmationStore,
    confirmations,
    token_hash,
)
from anode.store.database import create_engine, upgrade

OP = "0x" + "11" * 32
OTHER_OP = "0x" + "22" * 32
KEY = "key-a"
OTHER_KEY = "key-b"
SUMMARY = {"riskScore": 45, "riskFactors": [{"type": "recent_deployment"}]}


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(engine: sa.Engine, clock: Clock) -> AsyncIterator[SqlConfirmationStore]:
    yield SqlConfirmationStore(engine, clock=clock)


async def test_a_token_works_once(store: SqlConfirmationStore) -> None:
    issued = await store.issue(OP, KEY, SUMMARY)
    assert len(issued.token) >= 43  # 32 random bytes, URL-safe base64
    assert await store.check(issued.token, OP, KEY) is Redemption.OK  # checking consumes nothing
    assert await store.check(issued.token, OP, KEY) is Redemption.OK
    assert await store.redeem(issued.token, OP, KEY) is Redemption.OK
    assert await store.redeem(issued.token, OP, KEY) is Redemption.REUSED
    assert await store.check(issued.token, OP, KEY) is Redemption.REUSED


async def test_a_token_is_bound_to_its_api_key_and_operation(store: SqlConfirmationStore) -> None:
    issued = await store.issue(OP, KEY, SUMMARY)
    assert await store.redeem(issued.token, OP, OTHER_KEY) is Redemption.OTHER_KEY
    assert await store.redeem(issued.token, OP, None) is Redemption.OTHER_KEY
    assert await store.redeem(issued.token, OTHER_OP, KEY) is Redemption.OTHER_OPERATION
    assert await store.redeem(issued.token, OP, KEY) is Redemption.OK  # the failed attempts spent nothing


async def test_an_open_server_binds_to_no_key(store: SqlConfirmationStore) -> None:
    issued = await store.issue(OP, None, SUMMARY)
    assert await store.redeem(issued.token, OP, KEY) is Redemption.OTHER_KEY
    assert await store.redeem(issued.token, OP, None) is Redemption.OK


async def test_a_token_expires(store: SqlConfirmationStore, clock: Clock) -> None:
    issued = await store.issue(OP, KEY, SUMMARY, ttl=600)
    assert issued.expires_at == clock.now + 600
    clock.now += 599
    assert await store.check(issued.token, OP, KEY) is Redemption.OK
    clock.now += 1
    assert await store.check(issued.token, OP, KEY) is Redemption.EXPIRED
    assert await store.redeem(issued.token, OP, KEY) is Redemption.EXPIRED


async def test_unknown_and_malformed_tokens(store: SqlConfirmationStore) -> None:
    await store.issue(OP, KEY, SUMMARY)
    assert await store.redeem("not-a-token", OP, KEY) is Redemption.UNKNOWN
    assert await store.redeem("x" * 10_000, OP, KEY) is Redemption.UNKNOWN
    assert await store.check("", OP, KEY) is Redemption.UNKNOWN


async def test_only_the_tokens_hash_is_stored(store: SqlConfirmationStore, engine: sa.Engine) -> None:
    issued = await store.issue(OP, KEY, SUMMARY)
    with engine.connect() as connection:
        row = connection.execute(sa.select(confirmations)).mappings().one()
    assert row["token_hash"] == token_hash(issued.token) and issued.token not in str(dict(row))
    assert row["summary"] == SUMMARY and row["op_digest"] == OP and row["api_key_id"] == KEY


async def test_a_token_survives_a_restart(database_url: str, clock: Clock) -> None:
    first = create_engine(database_url)
    upgrade(first)
    issued = await SqlConfirmationStore(first, clock=clock).issue(OP, KEY, SUMMARY)
    first.dispose()
    second = create_engine(database_url)  # a new process: new engine, new store
    try:
        restarted = SqlConfirmationStore(second, clock=clock)
        assert await restarted.redeem(issued.token, OP, KEY) is Redemption.OK
        assert await restarted.redeem(issued.token, OP, KEY) is Redemption.REUSED
    finally:
        second.dispose()


async def test_50_concurrent_redeems_of_one_token_let_exactly_one_through(
    database_url: str, engine: sa.Engine, clock: Clock
) -> None:
    other_process = create_engine(database_url)
    try:
        stores = [SqlConfirmationStore(engine, clock=clock), SqlConfirmationStore(other_process, clock=clock)]
        issued = await stores[0].issue(OP, KEY, SUMMARY)
        results = await asyncio.gather(*(stores[i % 2].redeem(issued.token, OP, KEY) for i in range(50)))
    finally:
        other_process.dispose()
    assert results.count(Redemption.OK) == 1
    assert results.count(Redemption.REUSED) == 49


async def test_release_makes_a_token_usable_again(store: SqlConfirmationStore) -> None:
    issued = await store.issue(OP, KEY, SUMMARY)
    assert await store.redeem(issued.token, OP, KEY) is Redemption.OK
    await store.release(issued.token)  # the operation was not signed after all
    assert await store.redeem(issued.token, OP, KEY) is Redemption.OK


def _hashes(engine: sa.Engine, key: str | None = KEY) -> set[str]:
    with engine.connect() as connection:
        query = sa.select(confirmations.c.token_hash).where(confirmations.c.api_key_id.is_not_distinct_from(key))
        return set(connection.execute(query).scalars())


async def test_expired_tokens_are_pruned_an_hour_past_expiry(
    store: SqlConfirmationStore, engine: sa.Engine, clock: Clock
) -> None:
    old = await store.issue(OP, KEY, SUMMARY, ttl=60)
    clock.now += 60  # just expired: kept, so the caller hears "expired", not "unknown"
    await store.issue(OTHER_OP, KEY, SUMMARY)
    assert await store.check(old.token, OP, KEY) is Redemption.EXPIRED
    used = await store.issue(OTHER_OP, KEY, SUMMARY, ttl=60)
    assert await store.redeem(used.token, OTHER_OP, KEY) is Redemption.OK
    clock.now += KEEP_EXPIRED.total_seconds() + PRUNE_EVERY_SECONDS + 60
    assert clock.now - old.expires_at <= 2 * 3_600  # not a day, as it once was
    fresh = await store.issue(OTHER_OP, KEY, SUMMARY)
    hashes = _hashes(engine)
    assert token_hash(old.token) not in hashes and token_hash(used.token) not in hashes
    assert token_hash(fresh.token) in hashes


async def test_one_key_keeps_at_most_its_cap_of_unused_tokens(engine: sa.Engine, clock: Clock) -> None:
    """Stub calls mint a token per warning: one key flooding them drops its own oldest unused ones."""
    store = SqlConfirmationStore(engine, clock=clock, max_pending_per_key=5)
    others = [await store.issue(OP, OTHER_KEY, SUMMARY), await store.issue(OP, None, SUMMARY)]
    redeemed = await store.issue(OP, KEY, SUMMARY)
    assert await store.redeem(redeemed.token, OP, KEY) is Redemption.OK  # used: no longer pending
    issued = []
    for _ in range(40):
        clock.now += 1
        issued.append(await store.issue(OP, KEY, SUMMARY))
    hashes = _hashes(engine)
    assert hashes == {token_hash(t.token) for t in issued[-5:]} | {token_hash(redeemed.token)}
    assert await store.redeem(issued[0].token, OP, KEY) is Redemption.UNKNOWN  # dropped for newer ones
    assert await store.redeem(issued[-1].token, OP, KEY) is Redemption.OK
    # the other keys' tokens are untouched
    assert await store.check(others[0].token, OP, OTHER_KEY) is Redemption.OK
    assert await store.check(others[1].token, OP, None) is Redemption.OK


async def test_the_cap_holds_across_two_server_processes(database_url: str, engine: sa.Engine, clock: Clock) -> None:
    other_process = create_engine(database_url)
    try:
        stores = [SqlConfirmationStore(e, clock=clock, max_pending_per_key=10) for e in (engine, other_process)]
        await asyncio.gather(*(stores[i % 2].issue(OP, KEY, SUMMARY) for i in range(60)))
        await stores[0].issue(OP, KEY, SUMMARY)  # after the burst, one more trims to the cap
    finally:
        other_process.dispose()
    assert len(_hashes(engine)) == 10


def test_the_cap_is_a_setting_of_the_security_filter() -> None:
    assert Config().max_pending_confirmations == DEFAULT_MAX_PENDING_PER_KEY == 1_000
    assert Config(max_pending_confirmations=3).max_pending_confirmations == 3
    with pytest.raises(ValueError, match="max_pending_confirmations"):
        Config(max_pending_confirmations=0)


async def test_a_dead_database_fails_closed() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        engine = create_engine(f"postgresql://postgres@127.0.0.1:{port}/none")
        store = SqlConfirmationStore(engine)
        with pytest.raises(StoreUnavailable, match="confirmation store"):
            await store.issue(OP, KEY, SUMMARY)
        with pytest.raises(StoreUnavailable):
            await store.redeem("token", OP, KEY)
        engine.dispose()
