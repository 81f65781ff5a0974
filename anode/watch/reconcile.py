"""Reconciliation: the amount limits count what operations really cost, not what they might have.

At signing the policy engine reserves each operation's maximum gas cost in its amount limits, and
the ledger records those reservations with the signature (``store/reconcile.py``). When the
follower records an outcome it also turns the reservations, in the same transaction:

- included: the reservation becomes the operation's ``actualGasCost`` (usage falls by
  ``max - actual``; the limit's ``spent`` rises by ``actual``);
- expired unused (its ``validUntil`` passed): the reservation is released (usage falls by ``max``),
  so a limit that was full accepts again;
- a reorg that sends an outcome back to ``signed`` reverses what it did.

Each turn leaves an adjustment in an outbox table; :class:`Reconciler` hands the pending ones to
the limiter store (SQL, Redis or memory), which applies each id once, then marks them applied.
A follower that crashes between the two applies them again on its next pass, and the store
ignores the ids it has already applied: a reservation is reconciled exactly once.

A reservation is adjusted in the counter (limit and window) it was made in: an operation signed
late in a daily window and included in the next one gives its room back to the window that
counted it.
"""

from __future__ import annotations

import asyncio
import logging

import sqlalchemy as sa

from anode.policy.limits import Adjustment, LimiterStore
from anode.store import reconcile as outbox

log = logging.getLogger("anode.watch")

#: adjustments handed to the limiter store per call
BATCH = 500


class Reconciler:
    def __init__(self, engine: sa.Engine, limiter: LimiterStore) -> None:
        self.engine = engine
        self.limiter = limiter

    async def apply(self) -> int:
        """Apply every pending adjustment to the limiter store; the number applied."""
        done = 0
        while True:
            batch = await asyncio.to_thread(outbox.pending, self.engine, BATCH)
            if not batch:
                break
            await self.limiter.adjust(
                [Adjustment(a.id, a.counter, a.window_start, a.used_delta, a.spent_delta) for a in batch]
            )
            await asyncio.to_thread(outbox.mark_applied, self.engine, [a.id for a in batch])
            done += len(batch)
            if len(batch) < BATCH:
                break
        if done:
            log.info("follower: %s limit reservation(s) reconciled with their outcome", done)
        return done
