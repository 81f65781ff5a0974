"""What each signature reserved in the amount limits, and the adjustments reconciliation owes them.

The ledger writes a signature's reservations (``limit_reservations``: one row per amount-limit
counter, found by the row's chain and userOpHash) in the transaction that records the signature,
so the follower finds them later, in any process, after any restart.

The follower calls :func:`reconcile` in the transaction that records outcomes: a reservation
whose operation was included is ``settled`` (its ``spent`` is the actual cost, at most the amount
reserved), one whose operation expired is ``released``, and each such change appends an
adjustment to ``limit_adjustments`` (the outbox). :func:`unreconcile` is the reverse, for rows a
reorg sent back to ``signed``. State changes are conditional updates (``WHERE state = …``), so
two transactions can never both turn the same reservation. The follower then hands the pending
adjustments to the limiter store, which applies each id once (``LimiterStore.adjust``), and marks
them applied here: a crash in between applies them again, harmlessly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from anode.store.tables import Uint256, metadata, sponsorships

RESERVED, SETTLED, RELEASED = "reserved", "settled", "released"

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

limit_reservations = sa.Table(
    "limit_reservations",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("chain_id", sa.BigInteger(), nullable=False),
    sa.Column("user_op_hash", sa.String(66), nullable=False),
    sa.Column("counter", sa.String(200), nullable=False),
    sa.Column("window_start", sa.BigInteger(), nullable=False),
    sa.Column("amount", Uint256(), nullable=False),
    sa.Column("state", sa.String(16), nullable=False, server_default=RESERVED),
    sa.Column("spent", Uint256(), nullable=True),
    sa.Index("ix_limit_reservations_op", "chain_id", "user_op_hash"),
)

limit_adjustments = sa.Table(
    "limit_adjustments",
    metadata,
    sa.Column("id", _ID, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("counter", sa.String(200), nullable=False),
    sa.Column("window_start", sa.BigInteger(), nullable=False),
    # signed decimal text (a delta may be negative and as large as 2**256)
    sa.Column("used_delta", sa.String(80), nullable=False),
    sa.Column("spent_delta", sa.String(80), nullable=False),
    sa.Column("applied", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Index("ix_limit_adjustments_pending", "applied", "id"),
)

#: the columns the ledger writes, in order (``store/ledger.py``)
RESERVATION_COLUMNS = ("chain_id", "user_op_hash", "counter", "window_start", "amount")


@dataclass(frozen=True, slots=True)
class Reservation:
    """What one signature reserved in one amount-limit counter (``counter`` in window ``window_start``)."""

    counter: str
    window_start: int
    amount: int


@dataclass(frozen=True, slots=True)
class PendingAdjustment:
    id: int
    counter: str
    window_start: int
    used_delta: int
    spent_delta: int


def reconcile(connection: sa.Connection, chain_id: int, user_op_hashes: Iterable[str]) -> int:
    """Settle or release the reservations of these operations whose ledger row is now included or
    expired; the adjustments go to the outbox. The number of reservations changed."""
    hashes = sorted(set(user_op_hashes))
    if not hashes:
        return 0
    r, s = limit_reservations.c, sponsorships.c
    changed = 0
    for chunk in _chunks(hashes):
        rows = connection.execute(
            sa.select(r.id, r.counter, r.window_start, r.amount, s.status, s.actual_gas_cost_wei)
            .join(sponsorships, sa.and_(s.chain_id == r.chain_id, s.user_op_hash == r.user_op_hash))
            .where(r.chain_id == chain_id, r.user_op_hash.in_(chunk), r.state == RESERVED)
            .where(s.status.in_(["included", "expired"]))
            .order_by(r.id)
        ).all()
        seen: set[int] = set()
        for row in rows:
            if row.id in seen:
                continue
            seen.add(row.id)
            amount = int(row.amount)
            if row.status == "included":
                spent = min(amount, int(row.actual_gas_cost_wei or 0))
                state, used_delta, spent_delta = SETTLED, spent - amount, spent
            else:
                spent, state, used_delta, spent_delta = 0, RELEASED, -amount, 0
            if _turn(connection, row.id, RESERVED, state, spent if state == SETTLED else None):
                _owe(connection, row.counter, row.window_start, used_delta, spent_delta)
                changed += 1
    return changed


def unreconcile(connection: sa.Connection, chain_id: int, user_op_hashes: Iterable[str]) -> int:
    """The reverse of :func:`reconcile` for operations whose row went back to ``signed`` (a reorg)."""
    hashes = sorted(set(user_op_hashes))
    r = limit_reservations.c
    changed = 0
    for chunk in _chunks(hashes):
        rows = connection.execute(
            sa.select(r.id, r.counter, r.window_start, r.amount, r.state, r.spent)
            .where(r.chain_id == chain_id, r.user_op_hash.in_(chunk), r.state.in_([SETTLED, RELEASED]))
            .order_by(r.id)
        ).all()
        for row in rows:
            amount, spent = int(row.amount), int(row.spent or 0)
            if _turn(connection, row.id, row.state, RESERVED, None):
                if row.state == SETTLED:
                    _owe(connection, row.counter, row.window_start, amount - spent, -spent)
                else:
                    _owe(connection, row.counter, row.window_start, amount, 0)
                changed += 1
    return changed


def pending(engine: sa.Engine, limit: int = 500) -> list[PendingAdjustment]:
    a = limit_adjustments.c
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(a.id, a.counter, a.window_start, a.used_delta, a.spent_delta)
            .where(a.applied == sa.false())
            .order_by(a.id)
            .limit(limit)
        ).all()
    return [
        PendingAdjustment(int(row.id), row.counter, int(row.window_start), int(row.used_delta), int(row.spent_delta))
        for row in rows
    ]


def mark_applied(engine: sa.Engine, ids: Sequence[int]) -> None:
    if ids:
        with engine.begin() as connection:
            connection.execute(
                sa.update(limit_adjustments).where(limit_adjustments.c.id.in_(list(ids))).values(applied=True)
            )


def reservations(engine: sa.Engine, chain_id: int, user_op_hash: str) -> list[dict[str, object]]:
    r = limit_reservations.c
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(limit_reservations).where(r.chain_id == chain_id, r.user_op_hash == user_op_hash).order_by(r.id)
        ).mappings()
        return [dict(row) for row in rows]


def _turn(connection: sa.Connection, reservation_id: int, old: str, new: str, spent: int | None) -> bool:
    r = limit_reservations.c
    return bool(
        connection.execute(
            sa.update(limit_reservations).where(r.id == reservation_id, r.state == old).values(state=new, spent=spent)
        ).rowcount
    )


def _owe(connection: sa.Connection, counter: str, window_start: int, used_delta: int, spent_delta: int) -> None:
    connection.execute(
        sa.insert(limit_adjustments).values(
            created_at=datetime.now(UTC),
            counter=counter,
            window_start=window_start,
            used_delta=str(used_delta),
            spent_delta=str(spent_delta),
        )
    )


def _chunks(items: Sequence[str], size: int = 500) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
