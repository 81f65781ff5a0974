"""The EntryPoint follower: which signed operations were included, at what actual cost, and which expired.

Each pass, once it holds the database's lease (``store/watch.py``), the follower takes every chain
in turn:

The lease is a row in the database, or with ``watch.lease: redis`` a key in the Redis of
``redis_url`` (``watch/lease.py``).

1. the head, and the confirmed head ``head - confirmations``;
2. the newest block it kept: if the node now has another hash at that height (or no block), a
   reorg dropped it; the follower walks back through the kept blocks to the newest one that still
   matches, undoes everything recorded above it and reads again from there;
3. the ``UserOperationEvent`` logs of the configured paymasters in the next ``block_range``
   blocks up to the confirmed head, and the last block of that range (its hash and timestamp);
4. one transaction: the ledger rows of those operations become ``included`` (transaction, block,
   success, actualGasCost, actualGasUsed), inclusions no row signed go to ``unknown_operations``
   (logged at WARNING, counted in ``anode_watch_unknown_operations_total``), rows whose
   ``validUntil`` that block's timestamp passed become ``expired``, their amount-limit
   reservations are settled at the actual cost or released (``watch/reconcile.py``), and the
   cursor moves on;
5. the limiter store applies the adjustments that transaction left (once each).

A restart resumes after the cursor; a range is applied at most once, and applying it again would
change nothing. A follower that cannot renew its lease writes nothing and waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace

import sqlalchemy as sa

from anode.chain.client import ChainClient
from anode.config import WatchSettings
from anode.errors import AnodeError, ConfigError
from anode.metrics import Metrics
from anode.policy.limits import LimiterStore
from anode.store.watch import Cursor, LeaseLost, WatchStore
from anode.userop.codec import checksum
from anode.watch import events
from anode.watch.lease import RedisLease
from anode.watch.reconcile import Reconciler

log = logging.getLogger("anode.watch")

#: kept block hashes reach this many blocks behind the cursor (with at least ``confirmations``)
KEEP_BLOCKS = 64


@dataclass(frozen=True)
class WatchedChain:
    chain_id: int
    node: ChainClient
    entry_points: tuple[bytes, ...]
    paymasters: tuple[bytes, ...]
    confirmations: int


@dataclass(frozen=True, slots=True)
class Progress:
    """One chain's pass: blocks read up to ``block``, what was recorded, and how far behind the head."""

    chain_id: int
    block: int
    behind: int
    included: int = 0
    expired: int = 0
    unknown: int = 0
    rolled_back_to: int | None = None
    #: limit reservations settled or released (or restored by a reorg) and applied this pass
    reconciled: int = 0


class Follower:
    def __init__(
        self,
        engine: sa.Engine,
        chains: Sequence[WatchedChain],
        settings: WatchSettings,
        metrics: Metrics | None = None,
        *,
        holder: str | None = None,
        limiter: LimiterStore | None = None,
        redis_url: str | None = None,
    ) -> None:
        self.chains = list(chains)
        self.settings = settings
        self.metrics = metrics if metrics is not None else Metrics()
        self.holder = holder or f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(4)}"
        lease = None
        if settings.lease == "redis":
            if redis_url is None:
                raise ConfigError("watch.lease is redis, but no redis_url is configured")
            lease = RedisLease.from_url(redis_url, self.holder, settings.lease_seconds)
        self.store = WatchStore(engine, self.holder, settings.lease_seconds, lease)
        #: the lease was held at the last pass
        self.leading = False
        self.engine = engine
        #: where the policy limits live (set by wiring when a policy engine runs); ``None``: nothing to reconcile
        self.limiter = limiter

    async def step(self) -> list[Progress] | None:
        """One pass over every chain; ``None`` while another follower holds the lease."""
        held = await asyncio.to_thread(self.store.take_lease)
        if held != self.leading:
            log.info("follower %s %s the lease", self.holder, "took" if held else "waits for")
            self.leading = held
        if not held:
            return None
        done = []
        try:
            await self.reconcile()  # what a crashed pass left unapplied
            for chain in self.chains:
                progress = await self._chain_step(chain)
                done.append(replace(progress, reconciled=await self.reconcile()))
        except LeaseLost:
            log.warning("follower %s lost its lease mid-pass: another follower works now", self.holder)
            self.leading = False
            return None
        return done

    async def reconcile(self) -> int:
        """Hand the pending limit adjustments to the limiter store (each id is applied once)."""
        if self.limiter is None:
            return 0
        return await Reconciler(self.engine, self.limiter).apply()

    async def run(self, stop: asyncio.Event) -> None:
        """Pass after pass, ``poll_seconds`` apart, until ``stop`` is set; a failed pass is logged and retried."""
        try:
            while not stop.is_set():
                try:
                    await self.step()
                except AnodeError as exc:
                    log.warning("follower: %s (retrying in %ss)", exc, self.settings.poll_seconds)
                except sa.exc.SQLAlchemyError as exc:
                    log.warning("follower: the database failed (%s); retrying", type(exc).__name__)
                except Exception:  # a bug must not stop the follower for good, nor the server's shutdown
                    log.exception("follower: the pass failed; retrying")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.poll_seconds)
        finally:
            if self.leading:
                self.leading = False
                try:
                    await asyncio.to_thread(self.store.release_lease)
                except sa.exc.SQLAlchemyError as exc:  # it expires on its own
                    log.warning("follower: the lease could not be released (%s)", type(exc).__name__)
            if isinstance(self.store.external, RedisLease):
                self.store.external.close()

    async def _chain_step(self, chain: WatchedChain) -> Progress:
        head = await events.head(chain.node)
        safe = head - chain.confirmations
        cursor = await asyncio.to_thread(self.store.cursor, chain.chain_id)
        if cursor is None:
            start = self.settings.start_block
            first = (start - 1) if start is not None else safe
            known = await events.block(chain.node, first) if first >= 0 else None
            await asyncio.to_thread(self.store.start, chain.chain_id, first, known.hash if known else None)
            log.info("follower: chain %s starts after block %s", chain.chain_id, first)
            cursor = Cursor(first, ((first, known.hash),) if known else ())
        rolled_back = await self._undo_reorg(chain, cursor)
        last = cursor.last_block if rolled_back is None else rolled_back
        if safe <= last:
            return Progress(chain.chain_id, last, head - last, rolled_back_to=rolled_back)
        to = min(safe, last + self.settings.block_range)
        found = await events.inclusions(chain.node, chain.entry_points, chain.paymasters, last + 1, to)
        end = await events.block(chain.node, to)
        if end is None or any(event.block_number == to and event.block_hash != end.hash for event in found):
            # the chain moved under the read: the next pass reads again
            return Progress(chain.chain_id, last, head - last, rolled_back_to=rolled_back)
        advanced = await asyncio.to_thread(
            self.store.advance,
            chain.chain_id,
            to_block=to,
            to_hash=end.hash,
            to_timestamp=end.timestamp,
            inclusions=found,
            paymasters=[checksum(paymaster) for paymaster in chain.paymasters],
            keep_from=to - max(KEEP_BLOCKS, chain.confirmations),
        )
        for event in advanced.unknown:
            log.warning(
                "chain %s: operation %s (sender %s, paymaster %s) was included in %s but aNode's ledger never "
                "signed it: another instance, or a leaked paymaster key",
                chain.chain_id, event.user_op_hash, event.sender, event.paymaster, event.tx_hash,
            )  # fmt: skip
            self.metrics.unknown_operations.labels(str(chain.chain_id), event.paymaster).inc()
        if advanced.included:
            self.metrics.watched_operations.labels(str(chain.chain_id), "included").inc(advanced.included)
        if advanced.expired:
            self.metrics.watched_operations.labels(str(chain.chain_id), "expired").inc(advanced.expired)
        self.metrics.watched_block.labels(str(chain.chain_id)).set(to)
        return Progress(
            chain.chain_id, to, head - to, advanced.included, advanced.expired, len(advanced.unknown), rolled_back
        )

    async def _undo_reorg(self, chain: WatchedChain, cursor: Cursor) -> int | None:
        """The block rolled back to when a kept block's hash changed; ``None`` when none did."""
        if not cursor.blocks:
            return None
        newest_number, newest_hash = cursor.blocks[0]
        current = await events.block(chain.node, newest_number)
        if current is not None and current.hash == newest_hash:
            return None
        to = cursor.blocks[-1][0] - 1  # no kept block matches: before the oldest
        for number, kept in cursor.blocks[1:]:
            current = await events.block(chain.node, number)
            if current is not None and current.hash == kept:
                to = number
                break
        undone = await asyncio.to_thread(self.store.rollback, chain.chain_id, to)
        log.warning(
            "chain %s: block %s changed (reorg): back to block %s, %s operation outcome(s) undone",
            chain.chain_id, newest_number, to, undone,
        )  # fmt: skip
        return to
