"""``SqlLimiter``: counters in the server's database (table ``policy_usage``).

PostgreSQL: one transaction of conditional upserts, in key order (no deadlocks between
processes), rolled back when one finds no room. SQLite: ``BEGIN IMMEDIATE`` takes the write lock
first, so read, check and write cannot interleave with another writer. ``used`` is exact to
2**256 on both: PostgreSQL adds ``NUMERIC(78,0)``; SQLite keeps decimal text and adds in Python.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any, TypeVar

import sqlalchemy as sa

from anode.errors import ConfigError
from anode.policy.limits.base import PRUNE_EVERY_SECONDS, Adjustment, Bucket, Complaints, Exceeded, check_unique
from anode.store.database import invalidate, write_lock
from anode.store.group_commit import GroupCommit
from anode.store.policies import policy_usage, policy_usage_applied

T = TypeVar("T")

#: most reservations decided in one SQLite transaction
_MAX_BATCH = 256


_PG_RESERVE = sa.text(
    "INSERT INTO policy_usage (counter, window_start, used, expires_at) VALUES (:counter, :window_start, :amount, "
    ":expires_at) ON CONFLICT (counter, window_start) DO UPDATE SET used = policy_usage.used + EXCLUDED.used "
    "WHERE policy_usage.used + EXCLUDED.used <= :limit RETURNING used"
)
_PG_RELEASE = sa.text(
    "UPDATE policy_usage SET used = GREATEST(used - :amount, 0) "
    "WHERE counter = :counter AND window_start = :window_start"
)


_PG_MARK = sa.text("INSERT INTO policy_usage_applied (id, applied_at) VALUES (:id, :now) ON CONFLICT (id) DO NOTHING")
_PG_ADJUST = sa.text(
    "UPDATE policy_usage SET used = GREATEST(used + :used, 0), spent = GREATEST(spent + :spent, 0) "
    "WHERE counter = :counter AND window_start = :window_start"
)
#: how long an applied adjustment's id is kept (the follower records it as applied within seconds)
_APPLIED_KEEP_SECONDS = 7 * 86400


class SqlLimiter:
    """Counters in the ``policy_usage`` table, on the server's database (SQLite or PostgreSQL)."""

    def __init__(
        self, engine: sa.Engine, clock: Callable[[], float] = time.time, *, timeout: float | None = None
    ) -> None:
        dialect = engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):
            raise ConfigError(f"the SQL limiter supports SQLite and PostgreSQL, not {dialect}")
        self.backend = f"sql:{dialect}"
        self._engine = engine
        self._sqlite = dialect == "sqlite"
        # SQLite has one writer at a time anyway; PostgreSQL locks only the rows an operation touches
        self._pool = ThreadPoolExecutor(max_workers=1 if self._sqlite else 4, thread_name_prefix="anode-limits")
        self._clock = clock
        self._pruned = clock()
        self._complaints = Complaints(self.backend)
        self._timeout = timeout
        self._write_lock = write_lock(engine)
        #: the SQLite transactions' connection, kept by the limits thread (the only one touching it)
        self._connection: Any = None
        self._reservations: GroupCommit[Sequence[Bucket], Exceeded | None] = GroupCommit(
            self._pool, self._reserve_sqlite, max_batch=_MAX_BATCH
        )

    async def _run(self, work: Callable[..., T], *args: Any) -> T:
        """``work`` on the store's threads; past ``timeout`` the caller is refused (the work may still
        finish and commit: over-counting, the safe side)."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                return await loop.run_in_executor(self._pool, work, *args)
        except Exception as exc:  # any driver error: the limits cannot be checked, so nothing is sponsored
            raise self._complaints.unavailable(exc) from None

    async def reserve(self, buckets: Sequence[Bucket]) -> Exceeded | None:
        check_unique(buckets)
        if not buckets:
            return None
        if self._sqlite:
            result = await self._reserve_batched(buckets)
        else:
            result = await self._run(self._reserve_pg, buckets)
        if result is None and self._clock() - self._pruned >= PRUNE_EVERY_SECONDS:
            self._pruned = self._clock()
            await self._run(self._prune, int(self._pruned))
        return result

    async def release(self, buckets: Sequence[Bucket]) -> None:
        if buckets:
            await self._run(self._release_sqlite if self._sqlite else self._release_pg, buckets)

    async def usage(self, buckets: Sequence[Bucket]) -> list[int]:
        return await self._run(self._usage, buckets) if buckets else []

    async def spent(self, buckets: Sequence[Bucket]) -> list[int]:
        return await self._run(self._spent, buckets) if buckets else []

    async def adjust(self, adjustments: Sequence[Adjustment]) -> None:
        """One transaction: each adjustment's id is recorded in ``policy_usage_applied`` with its change, or skipped."""
        if adjustments:
            await self._run(self._adjust_sqlite if self._sqlite else self._adjust_pg, adjustments)

    async def aclose(self) -> None:
        self._pool.shutdown(wait=True)
        self._discard()

    # PostgreSQL: conditional upserts in key order (no deadlocks), all in one transaction

    def _reserve_pg(self, buckets: Sequence[Bucket]) -> Exceeded | None:
        order = sorted(range(len(buckets)), key=lambda i: (buckets[i].key, buckets[i].window_start))
        with self._engine.connect() as connection:
            transaction = connection.begin()
            for index in order:
                bucket = buckets[index]
                row = None
                if bucket.amount <= bucket.limit:
                    params = {
                        "counter": bucket.key,
                        "window_start": bucket.window_start,
                        "amount": Decimal(bucket.amount),
                        "expires_at": bucket.expires_at,
                        "limit": Decimal(bucket.limit),
                    }
                    row = connection.execute(_PG_RESERVE, params).first()
                if row is None:
                    used = self._read(connection, bucket)
                    transaction.rollback()
                    return Exceeded(index, used)
            transaction.commit()
        return None

    def _release_pg(self, buckets: Sequence[Bucket]) -> None:
        with self._engine.begin() as connection:
            for bucket in sorted(buckets, key=lambda b: (b.key, b.window_start)):
                params = {"counter": bucket.key, "window_start": bucket.window_start, "amount": Decimal(bucket.amount)}
                connection.execute(_PG_RELEASE, params)

    def _adjust_pg(self, adjustments: Sequence[Adjustment]) -> None:
        now = int(self._clock())
        with self._engine.begin() as connection:
            for change in sorted(adjustments, key=lambda a: a.id):
                if connection.execute(_PG_MARK, {"id": change.id, "now": now}).rowcount:
                    params = {
                        "counter": change.key,
                        "window_start": change.window_start,
                        "used": Decimal(change.used_delta),
                        "spent": Decimal(change.spent_delta),
                    }
                    connection.execute(_PG_ADJUST, params)

    # SQLite: BEGIN IMMEDIATE takes the write lock first, so read-check-write cannot interleave.
    # Reservations share transactions (group commit): while one batch is written, the next one
    # gathers, and each batch pays one COMMIT. Inside a batch they are decided one after another,
    # each against the counters as the ones before it left them: exactly as if each had its own
    # transaction, in the order they arrived.

    async def _reserve_batched(self, buckets: Sequence[Bucket]) -> Exceeded | None:
        try:
            async with asyncio.timeout(self._timeout):
                return await self._reservations.submit(buckets)
        except Exception as exc:  # the batch failed or took too long: nothing is sponsored
            raise self._complaints.unavailable(exc) from None

    def _immediate(self, work: Callable[[Any], T]) -> T:
        with self._write_lock:
            return self._immediate_locked(work)

    def _immediate_locked(self, work: Callable[[Any], T]) -> T:
        """``work`` in one ``BEGIN IMMEDIATE`` transaction on the limits thread's own connection.

        The connection is kept from one transaction to the next (checking one out of the pool and
        resetting it cost ~100 µs of Python per transaction, paid by every batch); any error
        closes it, and the next transaction opens a new one.
        """
        if self._connection is None:
            raw = self._engine.raw_connection()
            sqlite = raw.driver_connection
            assert sqlite is not None
            sqlite.isolation_level = None  # we issue BEGIN/COMMIT ourselves
            self._connection = raw
        cursor = self._connection.driver_connection.cursor()
        try:
            cursor.execute("BEGIN IMMEDIATE")
            try:
                result = work(cursor)
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")
            return result
        except BaseException:
            self._discard()
            raise
        finally:
            cursor.close()

    def _discard(self) -> None:
        connection, self._connection = self._connection, None
        invalidate(connection)

    @staticmethod
    def _sqlite_used(cursor: Any, bucket: Bucket) -> int | None:
        cursor.execute(
            "SELECT used FROM policy_usage WHERE counter = ? AND window_start = ?", (bucket.key, bucket.window_start)
        )
        row = cursor.fetchone()
        return None if row is None else int(row[0])

    def _reserve_sqlite(self, batch: list[Sequence[Bucket]]) -> list[Exceeded | None]:
        """Decide every operation of ``batch`` in order, in one transaction; write each counter once."""

        def work(cursor: Any) -> list[Exceeded | None]:
            used: dict[tuple[str, int], int] = {}
            changed: dict[tuple[str, int], Bucket] = {}
            results: list[Exceeded | None] = []
            for buckets in batch:
                keys = [(bucket.key, bucket.window_start) for bucket in buckets]
                for key, bucket in zip(keys, buckets, strict=True):
                    if key not in used:
                        used[key] = self._sqlite_used(cursor, bucket) or 0
                full = next(
                    (i for i, (key, b) in enumerate(zip(keys, buckets, strict=True)) if used[key] + b.amount > b.limit),
                    None,
                )
                if full is not None:
                    results.append(Exceeded(full, used[keys[full]]))
                    continue
                for key, bucket in zip(keys, buckets, strict=True):
                    used[key] += bucket.amount
                    changed[key] = bucket
                results.append(None)
            if changed:
                cursor.executemany(
                    "INSERT INTO policy_usage (counter, window_start, used, expires_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (counter, window_start) DO UPDATE SET used = excluded.used",
                    [(b.key, b.window_start, str(used[key]), b.expires_at) for key, b in changed.items()],
                )
            return results

        return self._immediate(work)

    def _release_sqlite(self, buckets: Sequence[Bucket]) -> None:
        def work(cursor: Any) -> None:
            for bucket in buckets:
                used = self._sqlite_used(cursor, bucket)
                if used is not None:
                    cursor.execute(
                        "UPDATE policy_usage SET used = ? WHERE counter = ? AND window_start = ?",
                        (str(max(0, used - bucket.amount)), bucket.key, bucket.window_start),
                    )

        self._immediate(work)

    def _adjust_sqlite(self, adjustments: Sequence[Adjustment]) -> None:
        now = int(self._clock())

        def work(cursor: Any) -> None:
            for change in adjustments:
                cursor.execute(
                    "INSERT OR IGNORE INTO policy_usage_applied (id, applied_at) VALUES (?, ?)", (change.id, now)
                )
                if cursor.rowcount != 1:
                    continue
                cursor.execute(
                    "SELECT used, spent FROM policy_usage WHERE counter = ? AND window_start = ?",
                    (change.key, change.window_start),
                )
                row = cursor.fetchone()
                if row is not None:
                    cursor.execute(
                        "UPDATE policy_usage SET used = ?, spent = ? WHERE counter = ? AND window_start = ?",
                        (
                            str(max(0, int(row[0]) + change.used_delta)),
                            str(max(0, int(row[1]) + change.spent_delta)),
                            change.key,
                            change.window_start,
                        ),
                    )

        self._immediate(work)

    # both

    @staticmethod
    def _read(connection: sa.Connection, bucket: Bucket) -> int:
        query = sa.select(policy_usage.c.used).where(
            policy_usage.c.counter == bucket.key, policy_usage.c.window_start == bucket.window_start
        )
        used = connection.execute(query).scalar_one_or_none()
        return 0 if used is None else int(used)

    def _usage(self, buckets: Sequence[Bucket]) -> list[int]:
        query = sa.select(policy_usage.c.counter, policy_usage.c.window_start, policy_usage.c.used).where(
            policy_usage.c.counter.in_(sorted({b.key for b in buckets}))
        )
        with self._engine.connect() as connection:
            rows = {(row.counter, row.window_start): int(row.used) for row in connection.execute(query)}
        return [rows.get((b.key, b.window_start), 0) for b in buckets]

    def _spent(self, buckets: Sequence[Bucket]) -> list[int]:
        query = sa.select(policy_usage.c.counter, policy_usage.c.window_start, policy_usage.c.spent).where(
            policy_usage.c.counter.in_(sorted({b.key for b in buckets}))
        )
        with self._engine.connect() as connection:
            rows = {(row.counter, row.window_start): int(row.spent) for row in connection.execute(query)}
        return [rows.get((b.key, b.window_start), 0) for b in buckets]

    def _prune(self, now: int) -> None:
        with self._engine.begin() as connection:
            connection.execute(
                policy_usage.delete().where(policy_usage.c.expires_at.is_not(None), policy_usage.c.expires_at < now)
            )
            connection.execute(
                policy_usage_applied.delete().where(policy_usage_applied.c.applied_at < now - _APPLIED_KEEP_SECONDS)
            )
