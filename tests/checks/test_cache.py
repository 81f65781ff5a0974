"""The chain-read caches: TTL, single flight, LRU bound; Redis shared between instances, and a
Redis outage that reads the chain directly instead of failing or answering stale data.

Redis tests run against the Redis on this machine (``tests/checks/conftest.py``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from anode.chain.cache import MemoryTTLCache, RedisTTLCache, make_cache
from tests.checks.conftest import REDIS_URL
from tests.support.waiting import eventually


class Loads:
    """A loader that counts its calls and answers ``value`` after ``delay`` seconds."""

    def __init__(self, value: Any = "v", delay: float = 0.0, error: Exception | None = None) -> None:
        self.value = value
        self.delay = delay
        self.error = error
        self.count = 0

    async def __call__(self) -> Any:
        self.count += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return self.value


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def dead_redis() -> Iterator[Redis]:
    """A Redis client whose server refuses connections (port bound, never listened on)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield Redis(host="127.0.0.1", port=sock.getsockname()[1])  # the client's defaults: it retries


# -- in process ------------------------------------------------------------------------------


async def test_memory_cache_reuses_a_value_for_its_ttl_then_reloads() -> None:
    clock = Clock()
    cache = MemoryTTLCache(clock=clock)
    load = Loads([1, "2"])
    assert await cache.get_or_load("k", 10, load) == [1, "2"]
    clock.now += 6.9
    assert await cache.get_or_load("k", 10, load) == [1, "2"]
    assert load.count == 1
    clock.now += 3.1
    await cache.get_or_load("k", 10, load)
    assert load.count == 2


async def test_a_hit_late_in_the_ttl_reloads_in_the_background_and_never_serves_past_the_ttl() -> None:
    """Refresh ahead: a key in steady use is reloaded before it expires, and no caller waits."""
    clock = Clock()
    cache = MemoryTTLCache(clock=clock)
    values = iter(["first", "second", "third"])
    load = Loads(None)

    async def next_value() -> str:
        await load()
        return next(values)

    assert await cache.get_or_load("k", 10, next_value) == "first"
    clock.now += 6.9  # before 70 % of the ttl: a plain hit
    assert await cache.get_or_load("k", 10, next_value) == "first"
    await asyncio.sleep(0)
    assert load.count == 1
    clock.now += 2.2  # 9.1 s: past 90 %, still young enough to serve
    assert await cache.get_or_load("k", 10, next_value) == "first", "answered at once, from the entry"
    await asyncio.sleep(0.01)
    assert load.count == 2, "one reload ran in the background"
    assert await cache.get_or_load("k", 10, next_value) == "second"

    clock.now += 10.0  # nobody asked for a whole ttl: the entry is expired, the caller waits for a load
    assert await cache.get_or_load("k", 10, next_value) == "third"
    assert load.count == 3


async def test_ttl_zero_disables_caching() -> None:
    cache = MemoryTTLCache()
    load = Loads()
    for _ in range(3):
        await cache.get_or_load("k", 0, load)
    assert load.count == 3
    assert len(cache) == 0


async def test_fifty_concurrent_misses_make_one_load() -> None:
    cache = MemoryTTLCache()
    load = Loads("shared", delay=0.05)
    results = await asyncio.gather(*(cache.get_or_load("hot", 60, load) for _ in range(50)))
    assert results == ["shared"] * 50
    assert load.count == 1
    other = Loads("other", delay=0.01)
    assert await cache.get_or_load("cold", 60, other) == "other"  # another key loads on its own
    assert other.count == 1


async def test_a_failed_load_reaches_every_waiter_and_is_not_cached() -> None:
    cache = MemoryTTLCache()
    failing = Loads(delay=0.02, error=RuntimeError("node down"))
    results = await asyncio.gather(*(cache.get_or_load("k", 60, failing) for _ in range(10)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert failing.count == 1
    working = Loads("fresh")
    assert await cache.get_or_load("k", 60, working) == "fresh"
    assert working.count == 1


async def test_a_cancelled_caller_does_not_cancel_the_shared_load() -> None:
    cache = MemoryTTLCache()
    load = Loads("done", delay=0.05)
    first = asyncio.ensure_future(cache.get_or_load("k", 60, load))
    second = asyncio.ensure_future(cache.get_or_load("k", 60, load))
    await asyncio.sleep(0.01)
    first.cancel()
    assert await second == "done"
    assert await cache.get_or_load("k", 60, load) == "done"
    assert load.count == 1


async def test_the_memory_cache_holds_at_most_max_entries_least_recently_used_first() -> None:
    cache = MemoryTTLCache(max_entries=2)
    loads = {key: Loads(key) for key in "abc"}
    await cache.get_or_load("a", 60, loads["a"])
    await cache.get_or_load("b", 60, loads["b"])
    await cache.get_or_load("a", 60, loads["a"])  # a is now the most recent
    await cache.get_or_load("c", 60, loads["c"])  # evicts b
    assert len(cache) == 2
    await cache.get_or_load("a", 60, loads["a"])
    await cache.get_or_load("b", 60, loads["b"])
    assert (loads["a"].count, loads["b"].count) == (1, 2)


def test_make_cache_picks_redis_when_configured(dead_redis: Redis) -> None:
    assert isinstance(make_cache(None), MemoryTTLCache)
    assert isinstance(make_cache(dead_redis), RedisTTLCache)


# -- Redis -----------------------------------------------------------------------------------


async def test_two_redis_caches_share_one_load(redis: Redis, redis_prefix: str) -> None:
    """Two processes (two clients, two cache instances): the second finds the first's value."""
    second_client = Redis.from_url(REDIS_URL)
    try:
        first, second = RedisTTLCache(redis, prefix=redis_prefix), RedisTTLCache(second_client, prefix=redis_prefix)
        big = str(2**255 + 1)
        load = Loads({"balances": [big, "0"], "n": 2**200})
        assert await first.get_or_load("sbt:1:abc", 60, load) == {"balances": [big, "0"], "n": 2**200}
        assert await second.get_or_load("sbt:1:abc", 60, Loads("never")) == {"balances": [big, "0"], "n": 2**200}
        assert load.count == 1
        ttl_ms = await redis.pttl(redis_prefix + "sbt:1:abc")
        assert 0 < ttl_ms <= 60_000
    finally:
        await second_client.aclose()


async def test_redis_entries_expire_after_their_ttl(redis: Redis, redis_prefix: str) -> None:
    cache = RedisTTLCache(redis, prefix=redis_prefix)
    load = Loads(["x"])
    await cache.get_or_load("k", 0.5, load)
    await cache.get_or_load("k", 0.5, load)
    assert load.count == 1
    await asyncio.sleep(0.6)
    await cache.get_or_load("k", 0.5, load)
    assert load.count == 2


async def test_redis_cache_is_single_flight_in_a_process(redis: Redis, redis_prefix: str) -> None:
    cache = RedisTTLCache(redis, prefix=redis_prefix)
    load = Loads(["v"], delay=0.05)
    results = await asyncio.gather(*(cache.get_or_load("hot", 60, load) for _ in range(50)))
    assert results == [["v"]] * 50
    assert load.count == 1


async def test_a_corrupt_redis_entry_is_reloaded(redis: Redis, redis_prefix: str) -> None:
    await redis.set(redis_prefix + "k", b"\xff not json")
    cache = RedisTTLCache(redis, prefix=redis_prefix)
    load = Loads(["fresh"])
    assert await cache.get_or_load("k", 60, load) == ["fresh"]
    assert await cache.get_or_load("k", 60, load) == ["fresh"]
    assert load.count == 1


class FlakyRedis:
    """The real Redis behind a switch: while ``down``, every command fails as a dead server's would."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.down = False
        self.commands = 0

    async def get(self, name: str) -> Any:
        self.commands += 1
        if self.down:
            raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        return await self.redis.get(name)

    async def set(self, name: str, value: str, px: int) -> Any:
        self.commands += 1
        if self.down:
            raise RedisConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        return await self.redis.set(name, value, px=px)


async def test_while_redis_is_down_every_call_reads_the_chain_never_stale_data(
    redis: Redis, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The documented choice: a Redis outage costs RPC calls, never correctness or availability;
    Redis is left alone for ``retry_after`` seconds after a failure, then used again."""
    clock = Clock()
    flaky = FlakyRedis(redis)
    cache = RedisTTLCache(flaky, prefix=redis_prefix, retry_after=5.0, clock=clock)  # type: ignore[arg-type]
    chain = {"balance": 1, "reads": 0}

    async def read_chain() -> list[int]:
        chain["reads"] += 1
        return [chain["balance"]]

    assert await cache.get_or_load("k", 300, read_chain) == [1]  # stored in Redis (and near, for 5 s)
    flaky.down = True
    chain["balance"] = 0  # e.g. the SBT was revoked
    clock.now += 5.0  # past the near copy's 5 s: from here on, Redis would be asked
    with caplog.at_level(logging.WARNING, logger="anode.cache"):
        assert await cache.get_or_load("k", 300, read_chain) == [0]
        commands = flaky.commands
        for _ in range(5):
            assert await cache.get_or_load("k", 300, read_chain) == [0]
    assert flaky.commands == commands, "Redis is not retried within retry_after"
    assert chain["reads"] == 7
    warnings = [r for r in caplog.records if "Redis cache read failed" in r.getMessage()]
    assert len(warnings) == 1, "one warning per 30 s, not one per call"

    flaky.down = False
    clock.now += 5.0
    assert await cache.get_or_load("k", 300, read_chain) == [1], "back on Redis: its entry, still within its TTL"
    assert chain["reads"] == 7


async def test_the_near_copy_spares_redis_for_near_ttl_and_never_outlives_the_entry(
    redis: Redis, redis_prefix: str
) -> None:
    """A busy process asks Redis about once per key per ``near_ttl``, and no value it serves is
    older than its ``ttl``, counted from the chain read (by whichever process made it)."""
    clock, wall = Clock(), Clock()
    wall.now = time.time()
    counted = FlakyRedis(redis)
    cache = RedisTTLCache(counted, prefix=redis_prefix, near_ttl=5.0, clock=clock, wall_clock=wall)  # type: ignore[arg-type]
    load = Loads(["v"])
    assert await cache.get_or_load("k", 60, load) == ["v"]
    commands = counted.commands  # GET (a miss) and SET
    for _ in range(100):
        assert await cache.get_or_load("k", 60, load) == ["v"]
    assert counted.commands == commands, "hits within near_ttl do not touch Redis"
    clock.now += 5.0
    wall.now += 5.0
    assert await cache.get_or_load("k", 60, load) == ["v"]
    assert counted.commands == commands + 1, "after near_ttl, one GET; the Redis entry is still good"
    assert load.count == 1

    # an entry another process read 58 s ago has 2 s left: it is kept near for 2 s, not 5, and
    # never served once 60 s old (here the background reload fails: the chain is down)
    other = RedisTTLCache(redis, prefix=redis_prefix, wall_clock=lambda: wall.now - 58.0)
    await other.get_or_load("old", 60, Loads(["old"]))
    down = Loads(error=RuntimeError("node down"))
    assert await cache.get_or_load("old", 60, down) == ["old"]
    before = counted.commands
    clock.now += 1.9
    assert await cache.get_or_load("old", 60, down) == ["old"]
    assert counted.commands == before, "a near hit"
    clock.now += 0.2
    wall.now += 2.1
    with pytest.raises(RuntimeError, match="node down"):
        await cache.get_or_load("old", 60, down)


async def test_redis_entries_are_reloaded_ahead_of_their_ttl(redis: Redis, redis_prefix: str) -> None:
    """Late in its ttl, an entry is served and one reload runs in the background, for every process."""
    wall = Clock()
    wall.now = time.time()
    cache = RedisTTLCache(redis, prefix=redis_prefix, wall_clock=lambda: wall.now)
    other = RedisTTLCache(redis, prefix=redis_prefix, wall_clock=lambda: wall.now - 55.0)
    await other.get_or_load("k", 60, Loads(["old"]))  # read 55 s ago: past 90 % of 60 s
    fresh = Loads(["fresh"])
    assert await cache.get_or_load("k", 60, fresh) == ["old"], "answered at once"
    await eventually(lambda: fresh.count == 1 and len(cache._flight) == 0)  # the reload is stored
    assert fresh.count == 1
    assert await cache.get_or_load("k", 60, Loads(["never"])) == ["fresh"]
    third = RedisTTLCache(redis, prefix=redis_prefix, wall_clock=lambda: wall.now)
    assert await third.get_or_load("k", 60, Loads(["never"])) == ["fresh"], "shared through Redis"


async def test_a_dead_redis_costs_one_bounded_wait_not_a_retry_loop_per_call(dead_redis: Redis) -> None:
    """A client's default retries take seconds against a dead server; the cache gives up after
    ``timeout`` and then skips Redis, so requests keep flowing."""
    cache = RedisTTLCache(dead_redis, prefix="anode:test:", timeout=0.3)
    load = Loads(["fresh"])
    started = time.perf_counter()
    assert await cache.get_or_load("k", 300, load) == ["fresh"]
    assert time.perf_counter() - started < 1.0
    started = time.perf_counter()
    for _ in range(20):
        assert await cache.get_or_load("k", 300, load) == ["fresh"]
    assert time.perf_counter() - started < 0.1
    assert load.count == 21
    await dead_redis.aclose()


async def test_with_redis_down_a_failing_chain_read_still_fails(dead_redis: Redis) -> None:
    cache = RedisTTLCache(dead_redis, prefix="anode:test:", timeout=0.2)
    with pytest.raises(RuntimeError, match="node down"):
        await cache.get_or_load("k", 300, Loads(error=RuntimeError("node down")))
    await dead_redis.aclose()
