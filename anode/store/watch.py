"""The EntryPoint follower's state and the outcomes it writes to the ledger (``anode/watch/``).

Every write the follower makes for a range of blocks is one transaction: the ledger rows it marks
``included`` or ``expired``, the inclusions no ledger row signed (``unknown_operations``), the
block hashes it keeps and its cursor. The same transaction renews the follower's lease and
fails (``LeaseLost``) when another follower holds it: a follower that lost its lease writes
nothing. A range applied twice (a crash between the commit and the next read) changes nothing the
second time: an inclusion is keyed by (chain, userOpHash, transaction hash).

``rollback`` undoes everything recorded from the blocks above a given one (a reorg dropped them):
their rows go back to ``signed``, their unknown inclusions and kept hashes are deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

import sqlalchemy as sa

from anode.store.database import write_lock
from anode.store.reconcile import reconcile, unreconcile
from anode.store.tables import Uint256, metadata, sponsorships

SIGNED, INCLUDED, EXPIRED = "signed", "included", "expired"
LEASE = "follower"

watch_cursors = sa.Table(
    "watch_cursors",
    metadata,
    sa.Column("chain_id", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("last_block", sa.BigInteger(), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)

watch_blocks = sa.Table(
    "watch_blocks",
    metadata,
    sa.Column("chain_id", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("number", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("hash", sa.String(66), nullable=False),
)

watch_lease = sa.Table(
    "watch_lease",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("holder", sa.String(64), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
)

unknown_operations = sa.Table(
    "unknown_operations",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("chain_id", sa.BigInteger(), nullable=False),
    sa.Column("user_op_hash", sa.String(66), nullable=False),
    sa.Column("tx_hash", sa.String(66), nullable=False),
    sa.Column("block_number", sa.BigInteger(), nullable=False),
    sa.Column("entry_point", sa.String(42), nullable=False),
    sa.Column("paymaster", sa.String(42), nullable=False),
    sa.Column("sender", sa.String(42), nullable=False),
    sa.Column("nonce", Uint256(), nullable=False),
    sa.Column("success", sa.Boolean(), nullable=False),
    sa.Column("actual_gas_cost_wei", Uint256(), nullable=False),
    sa.Column("actual_gas_used", Uint256(), nullable=False),
    sa.UniqueConstraint("chain_id", "user_op_hash", "tx_hash", name="uq_unknown_operations_op_tx"),
)


class Lease(Protocol):
    """A lease kept outside the database (``watch/lease.py``: Redis): one follower at a time.

    ``renew`` is called in each of the follower's transactions before it writes; it cannot join the
    transaction, so a follower whose lease ran out in that gap may commit once more. What it
    commits repeats what the other follower writes (outcomes are keyed by userOpHash and
    transaction, reservations change state by conditional updates), so nothing counts twice.
    """

    def take(self) -> bool: ...

    def renew(self) -> bool: ...

    def release(self) -> None: ...


class LeaseLost(Exception):
    """Another follower holds the lease: this one's transaction was rolled back."""


@dataclass(frozen=True, slots=True)
class Inclusion:
    """One ``UserOperationEvent``: hashes lower-case ``0x`` hex, addresses checksummed."""

    user_op_hash: str
    tx_hash: str
    block_number: int
    block_hash: str
    entry_point: str
    paymaster: str
    sender: str
    nonce: int
    success: bool
    actual_gas_cost: int
    actual_gas_used: int
    #: SingletonPaymaster's ``UserOperationSponsored.tokenAmountPaid`` in the same transaction (ERC-20 mode)
    token_amount_paid: int | None = None


@dataclass(frozen=True, slots=True)
class Cursor:
    last_block: int
    #: (number, hash) of the kept blocks, newest first
    blocks: tuple[tuple[int, str], ...]


@dataclass(frozen=True, slots=True)
class Advanced:
    included: int
    expired: int
    #: inclusions recorded as unknown by this transaction (not those already recorded)
    unknown: tuple[Inclusion, ...]


def _now() -> datetime:
    return datetime.now(UTC)


class WatchStore:
    """The follower's reads and writes on one database (synchronous: run them in a thread)."""

    def __init__(self, engine: sa.Engine, holder: str, lease_seconds: float, lease: Lease | None = None) -> None:
        self._engine = engine
        self.holder = holder
        self._lease = timedelta(seconds=lease_seconds)
        self._lock = write_lock(engine)
        #: a lease kept elsewhere (Redis) instead of the ``watch_lease`` row
        self.external = lease

    def take_lease(self) -> bool:
        """Take or renew the lease; ``False`` while another follower's lease has not expired."""
        if self.external is not None:
            return self.external.take()
        now = _now()
        c = watch_lease.c
        claim = (
            sa.update(watch_lease)
            .where(c.name == LEASE, sa.or_(c.holder == self.holder, c.expires_at < now))
            .values(holder=self.holder, expires_at=now + self._lease)
        )
        with self._lock:
            with self._engine.begin() as connection:
                if connection.execute(claim).rowcount:
                    return True
            try:
                with self._engine.begin() as connection:
                    connection.execute(
                        sa.insert(watch_lease).values(name=LEASE, holder=self.holder, expires_at=now + self._lease)
                    )
            except sa.exc.IntegrityError:
                return False
        return True

    def release_lease(self) -> None:
        if self.external is not None:
            self.external.release()
            return
        with self._lock, self._engine.begin() as connection:
            connection.execute(
                sa.delete(watch_lease).where(watch_lease.c.name == LEASE, watch_lease.c.holder == self.holder)
            )

    def _fence(self, connection: sa.Connection) -> None:
        """Renew the lease inside the caller's transaction, or roll it back with ``LeaseLost``."""
        if self.external is not None:
            if not self.external.renew():
                raise LeaseLost(f"follower {self.holder} no longer holds the lease")
            return
        c = watch_lease.c
        renewed = connection.execute(
            sa.update(watch_lease)
            .where(c.name == LEASE, c.holder == self.holder)
            .values(expires_at=_now() + self._lease)
        ).rowcount
        if not renewed:
            raise LeaseLost(f"follower {self.holder} no longer holds the lease")

    def cursor(self, chain_id: int) -> Cursor | None:
        with self._engine.connect() as connection:
            last = connection.execute(
                sa.select(watch_cursors.c.last_block).where(watch_cursors.c.chain_id == chain_id)
            ).scalar()
            if last is None:
                return None
            rows = connection.execute(
                sa.select(watch_blocks.c.number, watch_blocks.c.hash)
                .where(watch_blocks.c.chain_id == chain_id)
                .order_by(watch_blocks.c.number.desc())
            ).all()
        return Cursor(int(last), tuple((int(number), str(hash_)) for number, hash_ in rows))

    def start(self, chain_id: int, block: int, block_hash: str | None) -> None:
        """The first cursor of a chain: processing starts after ``block``."""
        with self._lock, self._engine.begin() as connection:
            self._fence(connection)
            connection.execute(sa.insert(watch_cursors).values(chain_id=chain_id, last_block=block, updated_at=_now()))
            if block_hash is not None:
                connection.execute(sa.insert(watch_blocks).values(chain_id=chain_id, number=block, hash=block_hash))

    def rollback(self, chain_id: int, to_block: int) -> int:
        """Undo what the blocks above ``to_block`` recorded; the cursor goes back to it. Rows undone."""
        s = sponsorships.c
        with self._lock, self._engine.begin() as connection:
            self._fence(connection)
            hashes = connection.execute(
                sa.select(s.user_op_hash).where(s.chain_id == chain_id, s.block_number > to_block)
            ).scalars()
            reverted = list(hashes)
            undone = connection.execute(
                sa.update(sponsorships)
                .where(s.chain_id == chain_id, s.block_number > to_block)
                .values(
                    status=SIGNED,
                    tx_hash=None,
                    block_number=None,
                    success=None,
                    actual_gas_cost_wei=None,
                    actual_gas_used=None,
                    token_amount_paid=None,
                )
            ).rowcount
            unreconcile(connection, chain_id, reverted)
            u = unknown_operations.c
            connection.execute(sa.delete(unknown_operations).where(u.chain_id == chain_id, u.block_number > to_block))
            b = watch_blocks.c
            connection.execute(sa.delete(watch_blocks).where(b.chain_id == chain_id, b.number > to_block))
            connection.execute(
                sa.update(watch_cursors)
                .where(watch_cursors.c.chain_id == chain_id)
                .values(last_block=to_block, updated_at=_now())
            )
        return int(undone)

    def advance(
        self,
        chain_id: int,
        *,
        to_block: int,
        to_hash: str,
        to_timestamp: int,
        inclusions: Sequence[Inclusion],
        paymasters: Sequence[str],
        keep_from: int,
    ) -> Advanced:
        """Record ``inclusions`` (blocks up to ``to_block``), expire what ``to_timestamp`` passed, move on."""
        s = sponsorships.c
        included, unknown = 0, []
        with self._lock, self._engine.begin() as connection:
            self._fence(connection)
            for event in inclusions:
                matched = connection.execute(
                    sa.update(sponsorships)
                    .where(s.chain_id == chain_id, s.user_op_hash == event.user_op_hash)
                    .values(
                        status=INCLUDED,
                        tx_hash=event.tx_hash,
                        block_number=event.block_number,
                        success=event.success,
                        actual_gas_cost_wei=event.actual_gas_cost,
                        actual_gas_used=event.actual_gas_used,
                        token_amount_paid=event.token_amount_paid,
                    )
                ).rowcount
                if matched:
                    included += matched
                elif self._record_unknown(connection, chain_id, event):
                    unknown.append(event)
            # validUntil 0 never expires; the EntryPoint refuses an op once block.timestamp > validUntil
            expiring = (
                s.chain_id == chain_id,
                s.status == SIGNED,
                s.valid_until > 0,
                s.valid_until < to_timestamp,
                s.paymaster.in_(list(paymasters)),
            )
            lapsed = list(connection.execute(sa.select(s.user_op_hash).where(*expiring)).scalars())
            expired = connection.execute(
                sa.update(sponsorships).where(*expiring).values(status=EXPIRED, block_number=to_block)
            ).rowcount
            reconcile(connection, chain_id, [event.user_op_hash for event in inclusions] + lapsed)
            kept = {event.block_number: event.block_hash for event in inclusions}
            kept[to_block] = to_hash
            b = watch_blocks.c
            connection.execute(
                sa.delete(watch_blocks).where(
                    b.chain_id == chain_id, sa.or_(b.number.in_(list(kept)), b.number < keep_from)
                )
            )
            connection.execute(
                sa.insert(watch_blocks),
                [{"chain_id": chain_id, "number": number, "hash": hash_} for number, hash_ in kept.items()],
            )
            connection.execute(
                sa.update(watch_cursors)
                .where(watch_cursors.c.chain_id == chain_id)
                .values(last_block=to_block, updated_at=_now())
            )
        return Advanced(included, int(expired), tuple(unknown))

    def _record_unknown(self, connection: sa.Connection, chain_id: int, event: Inclusion) -> bool:
        u = unknown_operations.c
        seen = connection.execute(
            sa.select(u.id).where(
                u.chain_id == chain_id, u.user_op_hash == event.user_op_hash, u.tx_hash == event.tx_hash
            )
        ).first()
        if seen is not None:
            return False
        connection.execute(
            sa.insert(unknown_operations).values(
                seen_at=_now(),
                chain_id=chain_id,
                user_op_hash=event.user_op_hash,
                tx_hash=event.tx_hash,
                block_number=event.block_number,
                entry_point=event.entry_point,
                paymaster=event.paymaster,
                sender=event.sender,
                nonce=event.nonce,
                success=event.success,
                actual_gas_cost_wei=event.actual_gas_cost,
                actual_gas_used=event.actual_gas_used,
            )
        )
        return True

    def unknown(self, chain_id: int | None = None) -> list[dict[str, object]]:
        query = sa.select(unknown_operations).order_by(unknown_operations.c.id)
        if chain_id is not None:
            query = query.where(unknown_operations.c.chain_id == chain_id)
        with self._engine.connect() as connection:
            return [dict(row) for row in connection.execute(query).mappings()]
