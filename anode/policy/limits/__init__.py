"""Limiter stores: check-and-reserve every counter of one operation, atomically, or none of them.

    LimiterStore (protocol)   reserve(buckets) → None | Exceeded; release(buckets); usage(buckets)
                              spent(buckets); adjust(adjustments): reconciliation, once per id
    ├── MemoryLimiter         one process (tests, a single development server)
    ├── SqlLimiter            SQLite (BEGIN IMMEDIATE: writers are serialised) and PostgreSQL
    │                         (one transaction of conditional upserts, rolled back if one is full)
    └── RedisLimiter          one Lua script over every key, concurrent reservations in one call:
                              fixed windows, keys expire
    build_limiter(kind, …)    the factory the policy engine uses (``limiter:`` in its config)

A *bucket* is one counter in one window: ``reserve`` adds each bucket's ``amount`` when every
bucket stays within its ``limit`` and otherwise adds nothing, saying which bucket was full and
how much it held. ``release`` takes a reservation back (never below zero). Reconciliation
(``anode/watch/reconcile.py``) later turns a reservation into the operation's actual cost, or
releases it, through ``adjust``: each adjustment carries an id and is applied once, so a follower
that crashes after applying and before recording it applies it again harmlessly. ``spent`` is
the actual cost inside ``used``; ``used - spent`` is still reserved.

Failure is never permission: any error of the store (unreachable, timed out, refusing writes)
raises ``LimitStoreUnavailable`` and the operation is refused. A reservation is committed
before the signature is made, so a crash can only leave recorded usage *above* what was signed,
never below (and a Redis reply lost to a timeout likewise over-counts, never under-counts).
Amounts are exact integers up to 2**256: PostgreSQL adds NUMERICs, SQLite adds in Python under
its write lock, and the Lua script adds decimal strings digit by digit (Lua numbers are doubles).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import sqlalchemy as sa

from anode.errors import ConfigError
from anode.policy.limits.base import Adjustment, Bucket, Exceeded, LimiterStore
from anode.policy.limits.memory import MemoryLimiter
from anode.policy.limits.redis import DEFAULT_REDIS_PREFIX, RedisLimiter
from anode.policy.limits.sql import SqlLimiter

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "DEFAULT_REDIS_PREFIX",
    "Adjustment",
    "Bucket",
    "Exceeded",
    "LimiterKind",
    "LimiterStore",
    "MemoryLimiter",
    "RedisLimiter",
    "SqlLimiter",
    "build_limiter",
]

log = logging.getLogger("anode.policy")

LimiterKind = Literal["auto", "sql", "redis", "memory"]


def build_limiter(
    kind: LimiterKind,
    *,
    engine: sa.Engine | None,
    redis: Redis | None,
    redis_prefix: str = DEFAULT_REDIS_PREFIX,
    timeout: float = 2.0,
    clock: Callable[[], float] = time.time,
) -> LimiterStore:
    """``auto``: Redis when the server has ``redis_url``, else the server's database."""
    if kind == "auto":
        kind = "redis" if redis is not None else "sql"
    if kind == "redis":
        if redis is None:
            raise ConfigError("policy_engine.config.limiter is redis, but no redis_url is configured")
        return RedisLimiter(redis, prefix=redis_prefix, timeout=timeout)
    if kind == "sql":
        if engine is None:
            raise ConfigError("policy_engine.config.limiter is sql, but there is no database")
        return SqlLimiter(engine, clock, timeout=timeout)
    log.warning(
        "policy limits are kept in memory: they reset on restart and are not shared between processes "
        "(use limiter: sql or redis in production)"
    )
    return MemoryLimiter(clock)
