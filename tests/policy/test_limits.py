"""Limiter stores: one contract every backend passes, then the real backends under concurrency and outage.

``LimiterContract`` is subclassed once per backend (memory, SQLite, PostgreSQL, Redis); it
includes reconciliation (``adjust``: a reservation shrunk to its actual cost, released, or
restored, each adjustment id applied once, floored at zero). The
concurrency tests send 200 reservations at once against a limit of N, through two limiter
instances with their own connections, and count exactly N successes (on SQLite also from two
spawned processes that share nothing but the database file, as ``--workers 2`` do);
each reservation also names a per-wallet counter, whose total proves that no refused reservation
left anything behind. The outage tests point the stores at a port nobody listens on, or at one
that accepts connections and never answers, and expect ``LimitStoreUnavailable``.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import secrets
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from redis.asyncio import Redis

from anode.policy.errors import LimitStoreUnavailable
from anode.policy.limits import Adjustment, Bucket, Exceeded, LimiterStore, MemoryLimiter, RedisLimiter, SqlLimiter
from anode.store.database import create_engine, upgrade

BIG = 2**256 - 1


def bucket(key: str, limit: int, amount: int = 1, window_start: int = 0, expires_at: int | None = None) -> Bucket:
    return Bucket(key, window_start, limit, amount, expires_at)


class LimiterContract:
    """What every ``LimiterStore`` promises. Subclasses provide the ``store`` fixture."""

    @pytest.fixture
    def key(self) -> str:
        return "k-" + secrets.token_hex(6)

    async def test_reserves_within_the_limit_and_reports_usage(self, store: LimiterStore, key: str) -> None:
        assert await store.reserve([bucket(key, 10, 4)]) is None
        assert await store.reserve([bucket(key, 10, 6)]) is None
        assert await store.usage([bucket(key, 10)]) == [10]

    async def test_refuses_past_the_limit_and_says_how_much_was_used(self, store: LimiterStore, key: str) -> None:
        assert await store.reserve([bucket(key, 10, 7)]) is None
        assert await store.reserve([bucket(key, 10, 4)]) == Exceeded(0, 7)
        assert await store.usage([bucket(key, 10)]) == [7]

    async def test_all_or_nothing_across_buckets(self, store: LimiterStore, key: str) -> None:
        a, b, c = (bucket(f"{key}:{n}", limit) for n, limit in (("a", 5), ("b", 1), ("c", 5)))
        assert await store.reserve([a, b, c]) is None
        assert await store.reserve([a, b, c]) == Exceeded(1, 1)
        assert await store.usage([a, b, c]) == [1, 1, 1]

    async def test_an_amount_larger_than_the_limit_is_refused_on_an_empty_counter(
        self, store: LimiterStore, key: str
    ) -> None:
        assert await store.reserve([bucket(key, 5, 6)]) == Exceeded(0, 0)
        assert await store.reserve([bucket(key, 0, 1)]) == Exceeded(0, 0)
        assert await store.usage([bucket(key, 5)]) == [0]

    async def test_release_takes_back_and_never_goes_below_zero(self, store: LimiterStore, key: str) -> None:
        assert await store.reserve([bucket(key, 10, 8)]) is None
        await store.release([bucket(key, 10, 3)])
        assert await store.usage([bucket(key, 10)]) == [5]
        await store.release([bucket(key, 10, 99)])
        assert await store.usage([bucket(key, 10)]) == [0]
        await store.release([bucket(key + ":never", 10, 1)])  # nothing to release: no error
        assert await store.usage([bucket(key + ":never", 10)]) == [0]

    async def test_each_window_counts_on_its_own(self, store: LimiterStore, key: str) -> None:
        assert await store.reserve([bucket(key, 1, 1, window_start=3600)]) is None
        assert await store.reserve([bucket(key, 1, 1, window_start=7200)]) is None
        assert await store.reserve([bucket(key, 1, 1, window_start=3600)]) == Exceeded(0, 1)

    async def test_amounts_are_exact_up_to_2_256(self, store: LimiterStore, key: str) -> None:
        half = 2**255 - 1
        assert await store.reserve([bucket(key, BIG, half)]) is None
        assert await store.reserve([bucket(key, BIG, half)]) is None
        assert await store.reserve([bucket(key, BIG, 1)]) is None
        assert await store.usage([bucket(key, BIG)]) == [BIG]
        assert await store.reserve([bucket(key, BIG, 1)]) == Exceeded(0, BIG)
        await store.release([bucket(key, BIG, 10**18 + 7)])
        assert await store.usage([bucket(key, BIG)]) == [BIG - 10**18 - 7]

    async def test_no_buckets_is_a_no_op_and_a_repeated_bucket_is_a_bug(self, store: LimiterStore, key: str) -> None:
        assert await store.reserve([]) is None
        assert await store.usage([]) == []
        with pytest.raises(ValueError):
            await store.reserve([bucket(key, 5), bucket(key, 5)])

    # reconciliation: a reservation becomes its actual cost, or is released, once per adjustment id

    @pytest.fixture
    def ids(self) -> Iterator[int]:
        first = secrets.randbelow(2**40) * 1000
        return iter(range(first, first + 1000))

    async def test_settling_shrinks_the_reservation_to_the_actual_cost_once(
        self, store: LimiterStore, key: str, ids: Iterator[int]
    ) -> None:
        assert await store.reserve([bucket(key, 100, 60)]) is None
        assert await store.reserve([bucket(key, 100, 50)]) == Exceeded(0, 60)  # full
        settle = Adjustment(next(ids), key, 0, used_delta=21 - 60, spent_delta=21)
        await store.adjust([settle])
        await store.adjust([settle])  # a follower that crashed after applying applies it again: no change
        assert await store.usage([bucket(key, 100)]) == [21]
        assert await store.spent([bucket(key, 100)]) == [21]
        assert await store.reserve([bucket(key, 100, 50)]) is None  # the room came back
        assert await store.usage([bucket(key, 100)]) == [71]
        assert await store.spent([bucket(key, 100)]) == [21]  # 50 reserved, 21 spent

    async def test_releasing_an_expired_reservation_lets_a_full_limit_accept_again(
        self, store: LimiterStore, key: str, ids: Iterator[int]
    ) -> None:
        assert await store.reserve([bucket(key, 10, 10)]) is None
        assert await store.reserve([bucket(key, 10, 1)]) == Exceeded(0, 10)
        await store.adjust([Adjustment(next(ids), key, 0, used_delta=-10, spent_delta=0)])
        assert await store.reserve([bucket(key, 10, 1)]) is None
        assert await store.spent([bucket(key, 10)]) == [0]

    async def test_an_undone_settlement_restores_the_reservation(
        self, store: LimiterStore, key: str, ids: Iterator[int]
    ) -> None:
        assert await store.reserve([bucket(key, BIG, 10**18)]) is None
        actual = 123_456_789_012_345
        await store.adjust([Adjustment(next(ids), key, 0, actual - 10**18, actual)])
        await store.adjust([Adjustment(next(ids), key, 0, 10**18 - actual, -actual)])  # a reorg dropped it
        assert await store.usage([bucket(key, BIG)]) == [10**18]
        assert await store.spent([bucket(key, BIG)]) == [0]

    async def test_adjustments_floor_at_zero_and_skip_a_counter_that_is_gone(
        self, store: LimiterStore, key: str, ids: Iterator[int]
    ) -> None:
        assert await store.reserve([bucket(key, 10, 3)]) is None
        await store.adjust([Adjustment(next(ids), key, 0, -99, -5), Adjustment(next(ids), key + ":gone", 0, 5, 5)])
        assert await store.usage([bucket(key, 10), bucket(key + ":gone", 10)]) == [0, 0]
        assert await store.spent([bucket(key, 10), bucket(key + ":gone", 10)]) == [0, 0]
        await store.adjust([])


class TestMemoryLimiter(LimiterContract):
    @pytest.fixture
    async def store(self) -> AsyncIterator[LimiterStore]:
        limiter = MemoryLimiter()
        yield limiter
        await limiter.aclose()

    async def test_expired_counters_are_dropped(self) -> None:
        now = [1000.0]
        limiter = MemoryLimiter(clock=lambda: now[0])
        assert await limiter.reserve([bucket("old", 5, 1, expires_at=1500)]) is None
        now[0] = 1000 + 3600
        assert await limiter.reserve([bucket("new", 5, 1)]) is None
        assert await limiter.usage([bucket("old", 5)]) == [0]


class TestSqliteLimiter(LimiterContract):
    @pytest.fixture
    async def store(self, sqlite_engine: sa.Engine) -> AsyncIterator[LimiterStore]:
        limiter = SqlLimiter(sqlite_engine)
        yield limiter
        await limiter.aclose()


class TestPostgresLimiter(LimiterContract):
    @pytest.fixture
    async def store(self, pg_engine: sa.Engine) -> AsyncIterator[LimiterStore]:
        limiter = SqlLimiter(pg_engine)
        yield limiter
        await limiter.aclose()


class TestRedisLimiter(LimiterContract):
    @pytest.fixture
    async def store(self, redis_client: Redis, redis_prefix: str) -> AsyncIterator[LimiterStore]:
        limiter = RedisLimiter(redis_client, prefix=redis_prefix)
        yield limiter
        await limiter.aclose()

    async def test_counters_expire_after_their_window(self, redis_client: Redis, redis_prefix: str) -> None:
        limiter = RedisLimiter(redis_client, prefix=redis_prefix)
        expires = int(time.time()) + 3600
        await limiter.reserve([bucket("w", 5, 1, window_start=60, expires_at=expires), bucket("life", 5, 1)])
        assert await redis_client.pexpiretime(f"{redis_prefix}w:60") == expires * 1000
        assert await redis_client.ttl(f"{redis_prefix}life:0") == -1  # no window: kept


# -- 200 concurrent reservations against a limit of N, per real backend -----------------------

REQUESTS = 200
LIMIT = 37
WALLETS = 10
PER_WALLET = 6  # 60 could pass per wallet; the global 37 binds


async def _race(stores: list[LimiterStore], tag: str) -> None:
    total = f"{tag}:requests"

    async def one(n: int) -> bool:
        wallet = f"{tag}:wallet:{n % WALLETS}"
        store = stores[n % len(stores)]
        return await store.reserve([bucket(total, LIMIT), bucket(wallet, PER_WALLET)]) is None

    results = await asyncio.gather(*(one(n) for n in range(REQUESTS)))
    assert sum(results) == LIMIT
    check = stores[0]
    assert await check.usage([bucket(total, LIMIT)]) == [LIMIT]
    wallets = await check.usage([bucket(f"{tag}:wallet:{w}", PER_WALLET) for w in range(WALLETS)])
    assert sum(wallets) == LIMIT and max(wallets) <= PER_WALLET  # refused reservations left nothing behind


async def test_200_concurrent_reservations_sponsor_exactly_n_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'race.db'}"
    engines = [create_engine(url), create_engine(url)]
    upgrade(engines[0])
    stores: list[LimiterStore] = [SqlLimiter(engine) for engine in engines]
    try:
        await _race(stores, "sqlite")
    finally:
        for store, engine in zip(stores, engines, strict=True):
            await store.aclose()
            engine.dispose()


def _reserve_in_a_process(url: str, first: int, count: int, start: Any, answers: Any) -> None:
    """One process of two (``anode serve --workers 2``): its own engine, limiter and write lock."""

    async def race() -> tuple[int, int, list[str]]:
        engine = create_engine(url)
        store = SqlLimiter(engine)
        try:
            start.wait(30)  # both processes are ready: their reservations overlap

            async def one(n: int) -> Exceeded | None:
                return await store.reserve(
                    [bucket("spawn:requests", LIMIT), bucket(f"spawn:wallet:{n % WALLETS}", PER_WALLET)]
                )

            results = await asyncio.gather(*(one(n) for n in range(first, first + count)), return_exceptions=True)
        finally:
            await store.aclose()
            engine.dispose()
        errors = [repr(r) for r in results if isinstance(r, BaseException)]
        admitted = sum(r is None for r in results)
        return os.getpid(), admitted, errors

    answers.put(asyncio.run(race()))


def test_two_processes_on_one_sqlite_file_sponsor_exactly_n(tmp_path: Path) -> None:
    """Two real processes (spawned: nothing shared but the file), each with its own engine,
    limiter and in-process lock, race 100 reservations each against one limit of N."""
    url = f"sqlite:///{tmp_path / 'race.db'}"
    engine = create_engine(url)
    upgrade(engine)
    spawn = multiprocessing.get_context("spawn")
    start, answers = spawn.Barrier(2), spawn.Queue()
    half = REQUESTS // 2
    workers = [spawn.Process(target=_reserve_in_a_process, args=(url, i * half, half, start, answers)) for i in (0, 1)]
    for worker in workers:
        worker.start()
    try:
        replies = [answers.get(timeout=120) for _ in workers]
    finally:
        for worker in workers:
            worker.join(30)
            if worker.is_alive():
                worker.kill()
    assert [w.exitcode for w in workers] == [0, 0]
    assert len({pid for pid, _, _ in replies}) == 2 and os.getpid() not in {pid for pid, _, _ in replies}
    assert [errors for _, _, errors in replies] == [[], []], "a refusal for an unavailable store is not a decision"
    assert sum(admitted for _, admitted, _ in replies) == LIMIT
    store = SqlLimiter(engine)
    try:
        assert asyncio.run(store.usage([bucket("spawn:requests", LIMIT)])) == [LIMIT]
        wallets = asyncio.run(store.usage([bucket(f"spawn:wallet:{w}", PER_WALLET) for w in range(WALLETS)]))
        assert sum(wallets) == LIMIT and max(wallets) <= PER_WALLET
    finally:
        asyncio.run(store.aclose())
        engine.dispose()


async def test_sqlite_decides_a_shared_transaction_in_arrival_order(tmp_path: Path) -> None:
    """Concurrent reservations on SQLite share one transaction (group commit); each is decided
    against what the ones before it left, as if each had committed on its own."""
    engine = create_engine(f"sqlite:///{tmp_path / 'order.db'}")
    upgrade(engine)
    store = SqlLimiter(engine)
    try:
        amounts = [3, 3, 1, 3, 1, 1]
        results = await asyncio.gather(*(store.reserve([bucket("order", 5, amount)]) for amount in amounts))
        assert results == [None, Exceeded(0, 3), None, Exceeded(0, 4), None, Exceeded(0, 5)]
        assert await store.usage([bucket("order", 5)]) == [5]
    finally:
        await store.aclose()
        engine.dispose()


async def test_redis_decides_a_shared_script_call_in_arrival_order(redis_client: Redis, redis_prefix: str) -> None:
    """Concurrent reservations on Redis share a script call: the first goes alone, the ones that
    arrive while it is in flight go together in the next. Each is decided, all or nothing, against
    what the ones before it left, as if each had been its own call."""
    limiter = RedisLimiter(redis_client, prefix=redis_prefix)
    calls = 0
    script = limiter._reserve

    async def counted(**kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return await script(**kwargs)

    limiter._reserve = counted  # type: ignore[assignment]
    amounts = [3, 3, 1, 3, 1, 1]
    results = await asyncio.gather(
        *(limiter.reserve([bucket("order", 5, amount), bucket(f"own:{n}", 2, 1)]) for n, amount in enumerate(amounts))
    )
    assert results == [None, Exceeded(0, 3), None, Exceeded(0, 4), None, Exceeded(0, 5)]
    assert calls == 2
    assert await limiter.usage([bucket("order", 5)]) == [5]
    own = await limiter.usage([bucket(f"own:{n}", 2) for n in range(len(amounts))])
    assert own == [1, 0, 1, 0, 1, 0]  # a refused reservation left nothing behind in its other counter
    assert await limiter.reserve([bucket("own:0", 2, 1), bucket("order", 5, 1)]) == Exceeded(1, 5)
    assert calls == 3


async def test_redis_reserves_nothing_for_a_queued_caller_that_gave_up(redis_client: Redis, redis_prefix: str) -> None:
    """A queued reservation whose caller gave up (its request cancelled, its timeout) is not sent
    when it gave up before its batch went out, and is released when it gave up during the call."""
    limiter = RedisLimiter(redis_client, prefix=redis_prefix)
    script = limiter._reserve
    gates = [asyncio.Event(), asyncio.Event()]
    sent: list[int] = []

    async def gated(**kwargs: Any) -> Any:
        answer = await script(**kwargs)  # decided in Redis now; answered when the test opens the gate
        sent.append(int(kwargs["args"][0]))
        await gates[len(sent) - 1].wait()
        return answer

    limiter._reserve = gated  # type: ignore[assignment]
    first = asyncio.create_task(limiter.reserve([bucket("gone", 10, 1)]))
    await asyncio.sleep(0)
    before = asyncio.create_task(limiter.reserve([bucket("gone", 10, 2)]))  # gives up before its batch goes
    during = asyncio.create_task(limiter.reserve([bucket("gone", 10, 4)]))  # gives up while its batch is sent
    await asyncio.sleep(0.01)
    before.cancel()
    gates[0].set()
    assert await first is None
    while len(sent) < 2:
        await asyncio.sleep(0.001)
    assert sent == [1, 1]  # the second call carried one reservation: the cancelled one was left out
    during.cancel()
    gates[1].set()
    for task in (before, during):
        with pytest.raises(asyncio.CancelledError):
            await task
    while limiter._sending:
        await asyncio.sleep(0.001)
    assert await limiter.usage([bucket("gone", 10)]) == [1]  # only the first caller's reservation stands


async def test_redis_reads_every_counter_of_a_batch_before_writing_any(redis_client: Redis, redis_prefix: str) -> None:
    """Redis does not undo a script that fails half-way: a key of another type under the prefix,
    met by a later reservation of a batch, must not fail the batch after an earlier one wrote."""
    limiter = RedisLimiter(redis_client, prefix=redis_prefix)
    foreign = bucket("foreign", 5, 1)
    await redis_client.hset(limiter._key(foreign), "not", "a counter")  # type: ignore[misc]
    results = await asyncio.gather(
        limiter.reserve([bucket("alone", 5, 1)]),  # goes at once; the two others queue behind it
        limiter.reserve([bucket("kept", 5, 1)]),
        limiter.reserve([foreign]),
    )
    assert results == [None, None, None]
    assert await limiter.usage([bucket("alone", 5), bucket("kept", 5), foreign]) == [1, 1, 1]


async def test_200_concurrent_reservations_sponsor_exactly_n_on_postgresql(pg_url: str) -> None:
    engines = [create_engine(pg_url), create_engine(pg_url)]
    stores: list[LimiterStore] = [SqlLimiter(engine) for engine in engines]
    try:
        await _race(stores, "pg-" + secrets.token_hex(4))
    finally:
        for store, engine in zip(stores, engines, strict=True):
            await store.aclose()
            engine.dispose()


async def test_200_concurrent_reservations_sponsor_exactly_n_on_redis(redis_url: str, redis_prefix: str) -> None:
    clients = [Redis.from_url(redis_url), Redis.from_url(redis_url)]
    stores: list[LimiterStore] = [RedisLimiter(client, prefix=redis_prefix) for client in clients]
    try:
        await _race(stores, "redis")
    finally:
        for client in clients:
            await client.aclose()


# -- fail closed ------------------------------------------------------------------------------


async def test_redis_down_refuses_instead_of_sponsoring(unused_port: int) -> None:
    client = Redis(host="127.0.0.1", port=unused_port, socket_connect_timeout=0.5)
    limiter = RedisLimiter(client, timeout=0.3)
    try:
        with pytest.raises(LimitStoreUnavailable) as caught:
            await limiter.reserve([bucket("k", 10)])
        assert caught.value.code == "ANODE_LIMIT_STORE_UNAVAILABLE"
        assert "nothing is sponsored" in caught.value.message
        with pytest.raises(LimitStoreUnavailable):
            await limiter.usage([bucket("k", 10)])
    finally:
        await client.aclose()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung Redis)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


async def test_a_hung_redis_is_refused_after_the_timeout(silent_port: int) -> None:
    client = Redis(host="127.0.0.1", port=silent_port)
    limiter = RedisLimiter(client, timeout=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(LimitStoreUnavailable):
            await limiter.reserve([bucket("k", 10)])
    finally:
        await client.aclose()
    assert loop.time() - started < 2


async def test_database_down_refuses_instead_of_sponsoring(unused_port: int) -> None:
    engine = create_engine(f"postgresql://postgres@127.0.0.1:{unused_port}/anode")
    limiter = SqlLimiter(engine)
    try:
        with pytest.raises(LimitStoreUnavailable) as caught:
            await limiter.reserve([bucket("k", 10)])
        assert "sql:postgresql" in caught.value.message
    finally:
        await limiter.aclose()
        engine.dispose()


async def test_a_database_without_the_table_refuses(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'empty.db'}")  # never migrated
    limiter = SqlLimiter(engine)
    try:
        with pytest.raises(LimitStoreUnavailable):
            await limiter.reserve([bucket("k", 10)])
    finally:
        await limiter.aclose()
        engine.dispose()


async def test_sqlite_refuses_while_the_table_is_gone_and_counts_on_once_it_is_back(tmp_path: Path) -> None:
    """The limits thread keeps its connection between transactions: a failure closes it, and the
    next reservation, on a new one, sees the repaired database (nothing lost, nothing doubled)."""
    path = tmp_path / "repair.db"
    engine = create_engine(f"sqlite:///{path}")
    upgrade(engine)
    limiter = SqlLimiter(engine)
    try:
        assert await limiter.reserve([bucket("repair", 10, 2)]) is None
        with sqlite3.connect(path) as db:
            db.execute("ALTER TABLE policy_usage RENAME TO policy_usage_moved")
        with pytest.raises(LimitStoreUnavailable):
            await limiter.reserve([bucket("repair", 10, 2)])
        with sqlite3.connect(path) as db:
            db.execute("ALTER TABLE policy_usage_moved RENAME TO policy_usage")
        assert await limiter.reserve([bucket("repair", 10, 2)]) is None
        assert await limiter.usage([bucket("repair", 10)]) == [4]
    finally:
        await limiter.aclose()
        engine.dispose()


async def test_a_burst_beyond_the_redis_connection_pool_waits_instead_of_refusing(
    redis_client: Redis, redis_prefix: str
) -> None:
    limiter = RedisLimiter(redis_client, prefix=redis_prefix)  # redis-py's default pool: 100 connections
    results = await asyncio.gather(*(limiter.reserve([bucket("burst", 1000)]) for _ in range(500)))
    assert results == [None] * 500
    assert await limiter.usage([bucket("burst", 1000)]) == [500]


async def test_a_hung_database_is_refused_after_the_timeout(silent_port: int) -> None:
    engine = create_engine(f"postgresql://postgres@127.0.0.1:{silent_port}/anode?connect_timeout=2")
    limiter = SqlLimiter(engine, timeout=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(LimitStoreUnavailable):
            await limiter.reserve([bucket("k", 10)])
        assert loop.time() - started < 1.5
    finally:
        await limiter.aclose()
        engine.dispose()
