"""The limiter protocol and what every store shares: buckets, the answer for a full one, failure reports."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from anode.policy.errors import LimitStoreUnavailable
from anode.policy.evaluate import Charge

log = logging.getLogger("anode.policy")
#: how often a store drops counters whose window (plus grace) has passed
PRUNE_EVERY_SECONDS = 600.0


@dataclass(frozen=True, slots=True)
class Bucket:
    """One counter in one window, and what this operation adds to it."""

    key: str
    window_start: int
    limit: int
    amount: int
    #: Unix time after which the counter may be dropped (``None``: keep it)
    expires_at: int | None = None

    @classmethod
    def of(cls, charge: Charge) -> Bucket:
        return cls(charge.key, charge.window_start, charge.limit.limit, charge.amount, charge.expires_at)


@dataclass(frozen=True, slots=True)
class Adjustment:
    """A change to one counter after the fact (reconciliation), applied at most once by ``id``.

    ``used_delta`` changes what the limit counts (negative: a reservation shrinks to the actual
    cost, or is released); ``spent_delta`` changes the actual cost inside it. Both are floored at
    zero; a counter that no longer exists (its window passed and it was dropped) is left alone.
    """

    id: int
    key: str
    window_start: int
    used_delta: int
    spent_delta: int


@dataclass(frozen=True, slots=True)
class Exceeded:
    """``buckets[index]`` had no room: it held ``used`` before this operation."""

    index: int
    used: int


class LimiterStore(Protocol):
    backend: str

    async def reserve(self, buckets: Sequence[Bucket]) -> Exceeded | None:
        """Add every amount if every bucket stays within its limit (``None``); else add nothing."""
        ...

    async def release(self, buckets: Sequence[Bucket]) -> None:
        """Take back what ``reserve`` added (floored at zero)."""
        ...

    async def usage(self, buckets: Sequence[Bucket]) -> list[int]:
        """What each bucket holds now (amounts and limits ignored)."""
        ...

    async def spent(self, buckets: Sequence[Bucket]) -> list[int]:
        """The actual cost inside each bucket's usage (the rest is reserved for pending operations)."""
        ...

    async def adjust(self, adjustments: Sequence[Adjustment]) -> None:
        """Apply each adjustment whose ``id`` this store has not applied yet (idempotent)."""
        ...

    async def aclose(self) -> None: ...


class Complaints:
    """The error for a failed store, logged at most every 30 s (an outage must not flood the log)."""

    EVERY_SECONDS = 30.0

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self._last = -self.EVERY_SECONDS
        self._quiet = 0

    def unavailable(self, exc: BaseException) -> LimitStoreUnavailable:
        now = time.monotonic()
        if now - self._last >= self.EVERY_SECONDS:
            more = f" ({self._quiet} more failures since the last report)" if self._quiet else ""
            log.error("the limit store (%s) failed: %s%s; refusing to sponsor", self.backend, type(exc).__name__, more)
            self._last, self._quiet = now, 0
        else:
            self._quiet += 1
        return LimitStoreUnavailable(
            f"the spending-limit store ({self.backend}) is unavailable ({type(exc).__name__}); "
            "nothing is sponsored until it is back"
        )


def check_unique(buckets: Sequence[Bucket]) -> None:
    slots = {(b.key, b.window_start) for b in buckets}
    if len(slots) != len(buckets):
        raise ValueError("a reservation names the same counter twice")
