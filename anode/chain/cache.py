"""Caches for chain reads, behind the ``TTLCache`` protocol.

    make_cache(None)    → MemoryTTLCache   (one process; the default)
    make_cache(redis)   → RedisTTLCache    (shared by every process using that Redis)

Both are single-flight: concurrent misses for one key in one process await one ``load()``. A
``ttl`` of 0 (or less) disables caching for that call: every call loads.

Both refresh ahead: a hit on an entry past 70-90 % of its ``ttl`` (a random point per entry, so
entries loaded together are reloaded at different moments) is answered from the entry, and one
``load()`` runs in the background to replace it. A key in steady use therefore never expires
and no request waits for the chain, while no value older than its ``ttl`` is ever served.

Values are JSON values (dicts, lists, strings, numbers, booleans, ``None``): Redis stores them
JSON-encoded, and returns tuples as lists, so loaders should build lists, not tuples. The
in-process cache hands every caller the same object: treat values as read-only. Amounts
that may exceed 64 bits are fine (stdlib ``json`` keeps Python's big integers), but callers that
hand values to ``orjson`` later should keep them as decimal strings.

``RedisTTLCache`` keeps a near copy of each entry in the process for at most ``near_ttl``
seconds (default 5) and never past the entry's own ``ttl``, counted from the chain read that
made it (Redis stores that moment with the value). So a value is never older than its ``ttl``,
wherever it was found, and a busy process reads Redis about once per key per ``near_ttl``
instead of once per request. An entry deleted from Redis by hand is still served by a process
for at most ``near_ttl``.

When Redis fails (down, slower than ``timeout``, a corrupt entry), ``RedisTTLCache`` loads
straight from the chain and answers that fresh value; it never falls back to a copy held in the
process beyond that copy's ``near_ttl``. A cache is only an optimisation of the chain, the
source of truth: losing it costs RPC calls, never correctness, so a Redis outage neither blocks
sponsorship nor answers stale identity data. After a failure it leaves Redis alone for
``retry_after`` seconds (a client retrying a dead server takes seconds per call; no request
should wait for that), and it logs a warning at most every 30 s so the outage is seen.
(Spending limits are different: the store
*is* the truth there, and the policy engine fails closed.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from redis.exceptions import RedisError

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("anode.cache")

Loader = Callable[[], Awaitable[Any]]
DEFAULT_PREFIX = "anode:cache:v2:"  # v2: entries carry the moment of their chain read
DEFAULT_MAX_ENTRIES = 100_000
#: a hit on an entry past this share of its ttl (a random point in the range) reloads it ahead
REFRESH_AHEAD = (0.7, 0.9)
_WARN_EVERY_SECONDS = 30.0


class TTLCache(Protocol):
    """A shared cache for chain reads: in-process by default, Redis when ``redis_url`` is set."""

    async def get_or_load(self, key: str, ttl: float, load: Callable[[], Awaitable[Any]]) -> Any:
        """The cached value for ``key`` if younger than ``ttl`` seconds, else ``await load()`` (cached)."""
        ...


class SingleFlight:
    """Concurrent calls for one key share one running load; a cancelled caller does not cancel it."""

    def __init__(self) -> None:
        self._calls: dict[str, asyncio.Task[Any]] = {}

    def __len__(self) -> int:
        return len(self._calls)

    async def do(self, key: str, load: Loader) -> Any:
        return await asyncio.shield(self.start(key, load))

    def start(self, key: str, load: Loader) -> asyncio.Task[Any]:
        """The running load for ``key``, or a new one; nobody needs to await it."""
        task = self._calls.get(key)
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            task = asyncio.ensure_future(load())
            self._calls[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return task

    def _finished(self, key: str, task: asyncio.Task[Any]) -> None:
        if self._calls.get(key) is task:
            del self._calls[key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter has it; no "exception never retrieved" noise


def refresh_point(ttl: float) -> float:
    """How old an entry may get before a hit reloads it in the background: 70-90 % of its ``ttl``,
    at random, so that entries loaded together are not all reloaded together."""
    return ttl * random.uniform(*REFRESH_AHEAD)


class MemoryTTLCache:
    """In-process: an LRU of at most ``max_entries`` values, each kept at most its ``ttl``."""

    def __init__(self, *, max_entries: int = DEFAULT_MAX_ENTRIES, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        #: key → (loaded at, reload ahead from, value)
        self._entries: OrderedDict[str, tuple[float, float, Any]] = OrderedDict()
        self._max_entries = max_entries
        self._clock = clock
        self._flight = SingleFlight()

    def __len__(self) -> int:
        return len(self._entries)

    async def get_or_load(self, key: str, ttl: float, load: Loader) -> Any:
        if ttl <= 0:
            return await load()
        entry = self._entries.get(key)
        if entry is not None:
            now = self._clock()
            if now - entry[0] < ttl:
                self._entries.move_to_end(key)
                if now >= entry[1]:  # young enough to serve, old enough to reload: in the background
                    self._flight.start(key, lambda: self._load_and_store(key, ttl, load))
                return entry[2]
        return await self._flight.do(key, lambda: self._load_and_store(key, ttl, load))

    async def _load_and_store(self, key: str, ttl: float, load: Loader) -> Any:
        value = await load()
        now = self._clock()
        self._entries[key] = (now, now + refresh_point(ttl), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._entries.clear()


class RedisTTLCache:
    """Shared across processes: ``SET key {"at": read at, "v": value} PX ttl``, with a near copy in
    the process for at most ``near_ttl``; on any Redis failure, load from the chain."""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = 0.5,
        retry_after: float = 5.0,
        near_ttl: float = 5.0,
        max_near_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._timeout = timeout
        self._retry_after = retry_after
        self._near_ttl = near_ttl
        self._max_near = max_near_entries
        #: key → (expires at, on ``clock``; value)
        self._near: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._clock = clock
        self._wall = wall_clock
        self._flight = SingleFlight()
        self._bypass_until = float("-inf")
        self._last_warning = float("-inf")

    async def get_or_load(self, key: str, ttl: float, load: Loader) -> Any:
        if ttl <= 0:
            return await load()
        now = self._clock()
        near = self._near.get(key)
        if near is not None:
            if now < near[0]:
                return near[1]
            del self._near[key]
        if now < self._bypass_until:
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
                entry = json.loads(raw)
                value, read_at = entry["v"], float(entry["at"])
            except (ValueError, TypeError, KeyError):
                self._warn("decode", ValueError(f"entry {name!r} is not an entry of this cache"))
            else:
                age = self._wall() - read_at
                if age < ttl:  # (Redis expires it at ``ttl`` too; this holds whatever its clock says)
                    if age >= refresh_point(ttl):  # serve it, and reload it from the chain meanwhile
                        self._flight.start(key, lambda: self._load_and_store(key, name, ttl, load))
                    self._keep_near(key, value, ttl - age)
                    return value
        return await self._flight.do(key, lambda: self._load_and_store(key, name, ttl, load))

    async def _load_and_store(self, key: str, name: str, ttl: float, load: Loader) -> Any:
        read_at = self._wall()
        encoded = json.dumps({"at": read_at, "v": await load()}, separators=(",", ":"))
        try:
            async with asyncio.timeout(self._timeout):
                await self._redis.set(name, encoded, px=max(1, round(ttl * 1000)))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("write", exc)
            return json.loads(encoded)["v"]
        value = json.loads(encoded)["v"]  # the same shape a hit returns (tuples become lists)
        self._keep_near(key, value, ttl - (self._wall() - read_at))
        return value

    def _keep_near(self, key: str, value: Any, left: float) -> None:
        keep = min(self._near_ttl, left)
        if keep <= 0:
            return
        self._near[key] = (self._clock() + keep, value)
        self._near.move_to_end(key)
        while len(self._near) > self._max_near:
            self._near.popitem(last=False)

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


def make_cache(
    redis: Redis | None, *, prefix: str = DEFAULT_PREFIX, max_entries: int = DEFAULT_MAX_ENTRIES
) -> TTLCache:
    """The cache the server shares between modules: Redis when configured, else in-process;
    ``max_entries`` bounds what the process keeps (with Redis, its near copies)."""
    if redis is None:
        return MemoryTTLCache(max_entries=max_entries)
    return RedisTTLCache(redis, prefix=prefix, max_near_entries=max_entries)
