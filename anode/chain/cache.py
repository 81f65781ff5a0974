"""Caches for chain reads, behind the ``TTLCache`` protocol of ``anode/pipeline/deps.py``.

    make_cache(None)    → MemoryTTLCache   (one process; the default)
    make_cache(redis)   → RedisTTLCache    (shared by every process using that Redis)

Both are single-flight: concurrent misses for one key in one process await one ``load()``. A
``ttl`` of 0 (or less) disables caching for that call: every call loads.

Values are JSON values (dicts, lists, strings, numbers, booleans, ``None``): Redis stores them
JSON-encoded, and returns tuples as lists, so loaders should build lists, not tuples. The
in-process cache hands every caller the same object: treat values as read-only. Amounts
that may exceed 64 bits are fine (stdlib ``json`` keeps Python's big integers), but callers that
hand values to ``orjson`` later should keep them as decimal strings.

When Redis fails (down, slower than ``timeout``, a corrupt entry), ``RedisTTLCache`` loads
straight from the chain and answers that fresh value; it never falls back to a copy held in the
process. A cache is only an optimisation of the chain, the source of truth: losing it costs RPC
calls, never correctness, so a Redis outage neither blocks sponsorship nor answers stale
identity data. After a failure it leaves Redis alone for ``retry_after`` seconds (a client
retrying a dead server takes seconds per call; no request should wait for that), and it logs a
warning at most every 30 s so the outage is seen. (Spending limits are different: the store
*is* the truth there, and the policy engine fails closed.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from anode.pipeline.deps import TTLCache

log = logging.getLogger("anode.cache")

Loader = Callable[[], Awaitable[Any]]
DEFAULT_PREFIX = "anode:cache:"
DEFAULT_MAX_ENTRIES = 100_000
_WARN_EVERY_SECONDS = 30.0


class SingleFlight:
    """Concurrent calls for one key share one running load; a cancelled caller does not cancel it."""

    def __init__(self) -> None:
        self._calls: dict[str, asyncio.Task[Any]] = {}

    def __len__(self) -> int:
        return len(self._calls)

    async def do(self, key: str, load: Loader) -> Any:
        task = self._calls.get(key)
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            task = asyncio.ensure_future(load())
            self._calls[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task)

    def _finished(self, key: str, task: asyncio.Task[Any]) -> None:
        if self._calls.get(key) is task:
            del self._calls[key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter has it; no "exception never retrieved" noise


class MemoryTTLCache:
    """In-process: an LRU of at most ``max_entries`` values, each kept at most its ``ttl``."""

    def __init__(self, *, max_entries: int = DEFAULT_MAX_ENTRIES, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._max_entries = max_entries
        self._clock = clock
        self._flight = SingleFlight()

    def __len__(self) -> int:
        return len(self._entries)

    async def get_or_load(self, key: str, ttl: float, load: Loader) -> Any:
        if ttl <= 0:
            return await load()
        entry = self._entries.get(key)
        if entry is not None and self._clock() - entry[0] < ttl:
            self._entries.move_to_end(key)
            return entry[1]
        return await self._flight.do(key, lambda: self._load_and_store(key, load))

    async def _load_and_store(self, key: str, load: Loader) -> Any:
        value = await load()
        self._entries[key] = (self._clock(), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._entries.clear()


class RedisTTLCache:
    """Shared across processes: ``SET key json PX ttl``; on any Redis failure, load from the chain."""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = 0.5,
        retry_after: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._timeout = timeout
        self._retry_after = retry_after
        self._clock = clock
        self._flight = SingleFlight()
        self._bypass_until = float("-inf")
        self._last_warning = float("-inf")

    async def get_or_load(self, key: str, ttl: float, load: Loader) -> Any:
        if ttl <= 0:
            return await load()
        if self._clock() < self._bypass_until:
            return await self._flight.do(key, load)  # Redis failed a moment ago: fresh from the chain
        name = self._prefix + key
        try:
            async with asyncio.timeout(self._timeout):
                raw = await self._redis.get(name)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("read", exc)
            return await self._flight.do(key, load)  # fresh from the chain; nothing is stored
        if raw is not None:
            try:
                return json.loads(raw)
            except ValueError:
                self._warn("decode", ValueError(f"entry {name!r} is not JSON"))
        return await self._flight.do(key, lambda: self._load_and_store(name, ttl, load))

    async def _load_and_store(self, name: str, ttl: float, load: Loader) -> Any:
        encoded = json.dumps(await load(), separators=(",", ":"))
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.set(name, encoded, px=max(1, round(ttl * 1000)))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("write", exc)
        return json.loads(encoded)  # the same shape a hit returns (tuples become lists)

    def _failed(self, what: str, exc: BaseException) -> None:
        self._bypass_until = self._clock() + self._retry_after
        self._warn(what, exc)

    def _warn(self, what: str, exc: BaseException) -> None:
        now = self._clock()
        if now - self._last_warning >= _WARN_EVERY_SECONDS:
            self._last_warning = now
            log.warning(
                "Redis cache %s failed (%s: %s): reading from the chain directly until it recovers",
                what,
                type(exc).__name__,
                exc,
            )


def make_cache(redis: Redis | None, *, prefix: str = DEFAULT_PREFIX) -> TTLCache:
    """The cache the server shares between modules: Redis when configured, else in-process."""
    if redis is None:
        return MemoryTTLCache()
    return RedisTTLCache(redis, prefix=prefix)
