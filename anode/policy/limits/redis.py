"""``RedisLimiter``: counters in Redis, checked and reserved by one Lua script over every key.

Fixed windows; each key expires a little after its window. Lua numbers are doubles (exact only
to 2**53, and 1 ETH is 10**18 wei), so the script adds and compares decimal strings digit by digit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from anode.policy.errors import LimitStoreUnavailable
from anode.policy.limits.base import Adjustment, Bucket, Complaints, Exceeded, check_unique, log

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

# Several reservations in one call, decided one after the other (each all or nothing, as if each
# were its own script). KEYS: every reservation's buckets in turn; ARGV: the number of
# reservations, then for each its number of buckets followed by amount, limit, expire-at (ms,
# 0 = never) for each bucket. Answers one string per reservation: '' reserved, else
# '<index of the first counter that would pass its limit>:<its usage>'. Every counter is read
# (MGET, which never fails on a key's type) before anything is written: Redis does not undo a
# script that fails half-way, so a failure can only come before the first write.
_LUA_RESERVE = (
    _LUA_DECIMALS
    + """
local current = {}
for first = 1, #KEYS, 1000 do
  local last = math.min(first + 999, #KEYS)
  local values = redis.call('MGET', unpack(KEYS, first, last))
  for i = first, last do
    if current[KEYS[i]] == nil then current[KEYS[i]] = values[i - first + 1] or '0' end
  end
end
local answers = {}
local key, arg = 0, 2
for r = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[arg])
  local used, refused = {}, nil
  for i = 1, n do
    local u = current[KEYS[key + i]]
    if cmp(add(u, ARGV[arg + 3 * i - 2]), ARGV[arg + 3 * i - 1]) > 0 then refused = i .. ':' .. u; break end
    used[i] = u
  end
  if refused then
    answers[r] = refused
  else
    for i = 1, n do
      local total = add(used[i], ARGV[arg + 3 * i - 2])
      local at = tonumber(ARGV[arg + 3 * i])
      current[KEYS[key + i]] = total
      if at > 0 then
        redis.call('SET', KEYS[key + i], total, 'PXAT', at)
      else
        redis.call('SET', KEYS[key + i], total)
      end
    end
    answers[r] = ''
  end
  key, arg = key + n, arg + 1 + 3 * n
end
return answers
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

    Reservations made at the same moment share one script call: while one call is in flight the
    next ones queue and go together in the following call, each still decided on its own, all or
    nothing. A busy server pays one round trip (and redis-py's ~100 µs of CPU per command) per
    batch instead of per operation; a lone caller goes out at once.

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
        self._queued: list[tuple[list[str], list[str], asyncio.Future[str]]] = []
        self._sending = False
        self._sender: asyncio.Task[None] | None = None

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
        if self._sending:  # a call is in flight: this one goes in the next, with the others queued meanwhile
            answer = await self._queue(keys, args)
        else:  # nothing in flight: this one goes at once, alone
            self._sending = True
            try:
                answers: Any = await self._call(partial(self._reserve, keys=keys, args=["1", str(len(keys)), *args]))
            finally:
                if self._queued:
                    self._sender = asyncio.get_running_loop().create_task(self._send_queued())
                else:
                    self._sending = False
            answer = _text(answers[0])
        if not answer:
            return None
        index, used = answer.split(":", 1)
        return Exceeded(int(index) - 1, int(used))

    async def _queue(self, keys: list[str], args: list[str]) -> str:
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._queued.append((keys, args, done))
        try:
            async with asyncio.timeout(self._timeout * 2):  # its batch's call, after the one in flight
                return await done
        except TimeoutError as exc:
            raise self._complaints.unavailable(exc) from None

    async def _send_queued(self) -> None:
        try:
            while self._queued:
                # a caller that gave up meanwhile (its timeout, a cancelled request) has its future
                # cancelled: its reservation is not sent
                batch = [queued for queued in self._queued if not queued[2].done()]
                self._queued = []
                if not batch:
                    continue
                keys: list[str] = []
                args: list[str] = [str(len(batch))]
                for batch_keys, batch_args, _ in batch:
                    keys += batch_keys
                    args += [str(len(batch_keys)), *batch_args]
                try:
                    answers: Any = await self._call(partial(self._reserve, keys=keys, args=args))
                except Exception as exc:  # Redis is down: every reservation of the batch is refused
                    for _, _, done in batch:
                        if not done.done():
                            done.set_exception(exc)
                    continue
                for (batch_keys, batch_args, done), answer in zip(batch, answers, strict=True):
                    if not done.done():
                        done.set_result(_text(answer))
                    elif not _text(answer):  # reserved for a caller that gave up during the call: undo it
                        await self._give_back(batch_keys, batch_args[0::3])
        finally:
            self._sending = False

    async def _give_back(self, keys: list[str], amounts: list[str]) -> None:
        try:
            await self._call(lambda: self._release(keys=keys, args=amounts))
        except LimitStoreUnavailable as exc:
            log.error(
                "a reservation whose caller gave up could not be released (%s): usage stays over-counted", exc.code
            )

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
