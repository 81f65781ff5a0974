"""``RedisLimiter``: counters in Redis, checked and reserved by one Lua script over every key.

Fixed windows; each key expires a little after its window. Lua numbers are doubles (exact only
to 2**53, and 1 ETH is 10**18 wei), so the script adds and compares decimal strings digit by digit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from anode.policy.limits.base import Adjustment, Bucket, Complaints, Exceeded, check_unique

if TYPE_CHECKING:
    from redis.asyncio import Redis

T = TypeVar("T")

# Non-negative integers as decimal strings: Lua numbers are doubles, exact only to 2**53.
_LUA_DECIMALS = """
local function cmp(a, b)
  if #a ~= #b then if #a < #b then return -1 else return 1 end end
  if a == b then return 0 end
  if a < b then return -1 else return 1 end
end
local function digits(out, top)
  while top > 1 and out[top] == 0 do top = top - 1 end
  local s = {}
  for k = top, 1, -1 do s[#s + 1] = out[k] end
  return table.concat(s)
end
local function add(a, b)
  local out, carry, i, j = {}, 0, #a, #b
  while i > 0 or j > 0 or carry > 0 do
    local s = carry
    if i > 0 then s = s + string.byte(a, i) - 48; i = i - 1 end
    if j > 0 then s = s + string.byte(b, j) - 48; j = j - 1 end
    out[#out + 1] = s % 10
    carry = (s - s % 10) / 10
  end
  if #out == 0 then return '0' end
  return digits(out, #out)
end
local function sub(a, b)
  local out, borrow, i, j = {}, 0, #a, #b
  while i > 0 do
    local d = string.byte(a, i) - 48 - borrow
    if j > 0 then d = d - (string.byte(b, j) - 48); j = j - 1 end
    if d < 0 then d = d + 10; borrow = 1 else borrow = 0 end
    out[#out + 1] = d
    i = i - 1
  end
  return digits(out, #out)
end
"""

# KEYS: the buckets; ARGV: amount, limit, expire-at (ms, 0 = never) for each key in turn
_LUA_RESERVE = (
    _LUA_DECIMALS
    + """
local used = {}
for i = 1, #KEYS do
  local u = redis.call('GET', KEYS[i]) or '0'
  if cmp(add(u, ARGV[3 * i - 2]), ARGV[3 * i - 1]) > 0 then return {0, i, u} end
  used[i] = u
end
for i = 1, #KEYS do
  local total = add(used[i], ARGV[3 * i - 2])
  local at = tonumber(ARGV[3 * i])
  if at > 0 then redis.call('SET', KEYS[i], total, 'PXAT', at) else redis.call('SET', KEYS[i], total) end
end
return {1}
"""
)

# KEYS: the buckets; ARGV: the amount to take back from each
_LUA_RELEASE = (
    _LUA_DECIMALS
    + """
for i = 1, #KEYS do
  local u = redis.call('GET', KEYS[i])
  if u then
    local left = '0'
    if cmp(u, ARGV[i]) > 0 then left = sub(u, ARGV[i]) end
    redis.call('SET', KEYS[i], left, 'KEEPTTL')
  end
end
return 1
"""
)

# KEYS: per adjustment, its applied marker, the counter and the counter's spent key; ARGV: per
# adjustment, the used delta and the spent delta as signed decimals, then the marker's lifetime (ms)
_LUA_ADJUST = (
    _LUA_DECIMALS
    + """
local function shift(u, d)
  if string.sub(d, 1, 1) == '-' then
    local m = string.sub(d, 2)
    if cmp(u, m) > 0 then return sub(u, m) end
    return '0'
  end
  return add(u, d)
end
local keep = ARGV[#ARGV]
for i = 1, #KEYS / 3 do
  if redis.call('SET', KEYS[3 * i - 2], '1', 'NX', 'PX', keep) then
    local u = redis.call('GET', KEYS[3 * i - 1])
    if u then
      redis.call('SET', KEYS[3 * i - 1], shift(u, ARGV[2 * i - 1]), 'KEEPTTL')
      local s = redis.call('GET', KEYS[3 * i]) or '0'
      local ttl = redis.call('PTTL', KEYS[3 * i - 1])
      if ttl > 0 then
        redis.call('SET', KEYS[3 * i], shift(s, ARGV[2 * i]), 'PX', ttl)
      else
        redis.call('SET', KEYS[3 * i], shift(s, ARGV[2 * i]))
      end
    end
  end
end
return 1
"""
)

#: how long an applied adjustment's marker is kept (the follower records it as applied within seconds)
_APPLIED_KEEP_MS = 7 * 86400 * 1000

#: one hash slot for every counter (``{limits}``), so the script may touch them all on Redis Cluster
DEFAULT_REDIS_PREFIX = "anode:{limits}:"


class RedisLimiter:
    """Counters in Redis, shared by every process using it; each call is bounded by ``timeout``.

    redis-py's pool refuses a command outright (``MaxConnectionsError``) once its connections
    (100 by default) are all busy, which under a burst would refuse sponsorships that merely had
    to wait. So at most half the pool's connections run limiter calls at once; the rest wait
    their turn, within ``timeout``.
    """

    backend = "redis"

    def __init__(self, redis: Redis, *, prefix: str = DEFAULT_REDIS_PREFIX, timeout: float = 2.0) -> None:
        self._redis = redis
        self._prefix = prefix
        self._timeout = timeout
        self._reserve = redis.register_script(_LUA_RESERVE)
        self._release = redis.register_script(_LUA_RELEASE)
        self._adjust = redis.register_script(_LUA_ADJUST)
        pool_size = getattr(redis.connection_pool, "max_connections", 100)
        self._slots = asyncio.Semaphore(max(1, min(64, pool_size // 2)))
        self._complaints = Complaints("redis")

    def _key(self, bucket: Bucket) -> str:
        return f"{self._prefix}{bucket.key}:{bucket.window_start}"

    async def _call(self, work: Callable[[], Awaitable[T]]) -> T:
        from redis.exceptions import RedisError

        try:
            async with asyncio.timeout(self._timeout), self._slots:
                return await work()
        except (RedisError, OSError, TimeoutError) as exc:
            raise self._complaints.unavailable(exc) from None

    async def reserve(self, buckets: Sequence[Bucket]) -> Exceeded | None:
        check_unique(buckets)
        if not buckets:
            return None
        args: list[str] = []
        for bucket in buckets:
            expires_ms = 0 if bucket.expires_at is None else bucket.expires_at * 1000
            args += [str(bucket.amount), str(bucket.limit), str(expires_ms)]
        keys = [self._key(b) for b in buckets]
        answer: Any = await self._call(lambda: self._reserve(keys=keys, args=args))
        if int(answer[0]) == 1:
            return None
        return Exceeded(int(answer[1]) - 1, int(_text(answer[2])))

    async def release(self, buckets: Sequence[Bucket]) -> None:
        if buckets:
            keys = [self._key(b) for b in buckets]
            await self._call(lambda: self._release(keys=keys, args=[str(b.amount) for b in buckets]))

    async def usage(self, buckets: Sequence[Bucket]) -> list[int]:
        if not buckets:
            return []
        keys = [self._key(b) for b in buckets]
        values: Any = await self._call(lambda: self._redis.mget(keys))
        return [0 if value is None else int(_text(value)) for value in values]

    async def spent(self, buckets: Sequence[Bucket]) -> list[int]:
        if not buckets:
            return []
        keys = [self._key(b) + ":spent" for b in buckets]
        values: Any = await self._call(lambda: self._redis.mget(keys))
        return [0 if value is None else int(_text(value)) for value in values]

    async def adjust(self, adjustments: Sequence[Adjustment]) -> None:
        """One script: each adjustment's marker (``<prefix>applied:<id>``) is set with its change, or it is skipped."""
        if not adjustments:
            return
        keys: list[str] = []
        args: list[str] = []
        for change in adjustments:
            counter = f"{self._prefix}{change.key}:{change.window_start}"
            keys += [f"{self._prefix}applied:{change.id}", counter, counter + ":spent"]
            args += [str(change.used_delta), str(change.spent_delta)]
        args.append(str(_APPLIED_KEEP_MS))
        await self._call(lambda: self._adjust(keys=keys, args=args))

    async def aclose(self) -> None:
        """The Redis client belongs to the server (``Dependencies.redis``): it closes it."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
