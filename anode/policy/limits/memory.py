"""``MemoryLimiter``: counters in one process (tests, a single development server)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from anode.policy.limits.base import PRUNE_EVERY_SECONDS, Adjustment, Bucket, Exceeded, check_unique


class MemoryLimiter:
    """In one process: atomic because nothing awaits between the check and the update."""

    backend = "memory"

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._used: dict[tuple[str, int], tuple[int, int | None]] = {}
        self._spent: dict[tuple[str, int], int] = {}
        self._applied: set[int] = set()
        self._clock = clock
        self._pruned = clock()

    def _get(self, bucket: Bucket) -> int:
        return self._used.get((bucket.key, bucket.window_start), (0, None))[0]

    async def reserve(self, buckets: Sequence[Bucket]) -> Exceeded | None:
        check_unique(buckets)
        for index, bucket in enumerate(buckets):
            used = self._get(bucket)
            if used + bucket.amount > bucket.limit:
                return Exceeded(index, used)
        for bucket in buckets:
            self._used[(bucket.key, bucket.window_start)] = (self._get(bucket) + bucket.amount, bucket.expires_at)
        self._prune()
        return None

    async def release(self, buckets: Sequence[Bucket]) -> None:
        for bucket in buckets:
            slot = (bucket.key, bucket.window_start)
            if slot in self._used:
                used, expires = self._used[slot]
                self._used[slot] = (max(0, used - bucket.amount), expires)

    async def usage(self, buckets: Sequence[Bucket]) -> list[int]:
        return [self._get(bucket) for bucket in buckets]

    async def spent(self, buckets: Sequence[Bucket]) -> list[int]:
        return [self._spent.get((bucket.key, bucket.window_start), 0) for bucket in buckets]

    async def adjust(self, adjustments: Sequence[Adjustment]) -> None:
        for change in adjustments:
            if change.id in self._applied:
                continue
            self._applied.add(change.id)
            slot = (change.key, change.window_start)
            if slot not in self._used:
                continue
            used, expires = self._used[slot]
            self._used[slot] = (max(0, used + change.used_delta), expires)
            self._spent[slot] = max(0, self._spent.get(slot, 0) + change.spent_delta)

    def _prune(self) -> None:
        now = self._clock()
        if now - self._pruned < PRUNE_EVERY_SECONDS:
            return
        self._pruned = now
        for slot, (_, expires) in list(self._used.items()):
            if expires is not None and expires < now:
                del self._used[slot]
                self._spent.pop(slot, None)

    async def aclose(self) -> None:
        self._used.clear()
        self._spent.clear()
