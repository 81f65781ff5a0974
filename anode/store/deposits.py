"""Paymaster deposits over time, and who alerts about a low one (``anode/watch/deposits.py``).

``deposit_samples`` holds one row per (chain, EntryPoint, paymaster) and sampling interval: the
deposit the EntryPoint's ``balanceOf`` answered at ``sampled_at`` (the dashboard plots it). Rows
older than the retention are deleted by whoever writes a sample.

``deposit_watch`` holds one row per paymaster with two claims, each taken by an atomic
``UPDATE … WHERE <the claim is free>``: ``sampled_at`` (one sample per interval whichever server
process reads the deposit) and ``alerted_at`` (one alert per ``repeat_minutes`` while the deposit is
low; cleared when it has recovered, so the next drop alerts at once). With several processes on
one database, the one whose ``UPDATE`` matched writes the sample or sends the alert; the others
match nothing and do not.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from anode.store.database import write_lock
from anode.store.tables import Uint256, metadata

deposit_samples = sa.Table(
    "deposit_samples",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("chain_id", sa.BigInteger(), nullable=False),
    sa.Column("entry_point", sa.String(42), nullable=False),
    sa.Column("paymaster", sa.String(42), nullable=False),
    sa.Column("deposit_wei", Uint256(), nullable=False),
    sa.Column("sampled_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_deposit_samples_paymaster_time", "chain_id", "paymaster", "sampled_at"),
    sa.Index("ix_deposit_samples_time", "sampled_at"),
)

deposit_watch = sa.Table(
    "deposit_watch",
    metadata,
    sa.Column("chain_id", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("entry_point", sa.String(42), primary_key=True),
    sa.Column("paymaster", sa.String(42), primary_key=True),
    sa.Column("sampled_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("alerted_at", sa.DateTime(timezone=True), nullable=True),
)


@dataclass(frozen=True, slots=True)
class DepositKey:
    """A paymaster's deposit at one EntryPoint: addresses checksummed."""

    chain_id: int
    entry_point: str
    paymaster: str


@dataclass(frozen=True, slots=True)
class Sample:
    chain_id: int
    entry_point: str
    paymaster: str
    deposit_wei: int
    sampled_at: datetime


class DepositStore:
    """Samples and alert claims on one database (synchronous: run them in a thread)."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._lock = write_lock(engine)

    def _ensure(self, connection: sa.Connection, key: DepositKey) -> None:
        """The paymaster's row, inserted by whichever process comes first."""
        w = deposit_watch.c
        if connection.execute(sa.select(w.chain_id).where(*_is(key))).first() is not None:
            return
        insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
        row = {"chain_id": key.chain_id, "entry_point": key.entry_point, "paymaster": key.paymaster}
        connection.execute(insert(deposit_watch).values(**row).on_conflict_do_nothing())

    def sample(self, key: DepositKey, deposit_wei: int, now: datetime, *, every: timedelta, keep: timedelta) -> bool:
        """Record ``deposit_wei`` unless a sample of ``key`` was taken less than ``every`` ago; whether it was."""
        w = deposit_watch.c
        with self._lock, self._engine.begin() as connection:
            self._ensure(connection, key)
            claimed = connection.execute(
                sa.update(deposit_watch)
                .where(*_is(key), sa.or_(w.sampled_at.is_(None), w.sampled_at <= now - every))
                .values(sampled_at=now)
            ).rowcount
            if not claimed:
                return False
            connection.execute(
                sa.insert(deposit_samples).values(
                    chain_id=key.chain_id,
                    entry_point=key.entry_point,
                    paymaster=key.paymaster,
                    deposit_wei=deposit_wei,
                    sampled_at=now,
                )
            )
            connection.execute(sa.delete(deposit_samples).where(deposit_samples.c.sampled_at < now - keep))
        return True

    def claim_alert(self, key: DepositKey, now: datetime, repeat: timedelta) -> bool:
        """Take the right to alert about ``key`` now: ``False`` when an alert went out less than ``repeat`` ago."""
        w = deposit_watch.c
        with self._lock, self._engine.begin() as connection:
            self._ensure(connection, key)
            claimed = connection.execute(
                sa.update(deposit_watch)
                .where(*_is(key), sa.or_(w.alerted_at.is_(None), w.alerted_at <= now - repeat))
                .values(alerted_at=now)
            ).rowcount
        return bool(claimed)

    def clear_alert(self, key: DepositKey, claimed_at: datetime | None = None) -> None:
        """The deposit recovered (or the alert ``claimed_at`` could not be sent): the next drop alerts at once."""
        w = deposit_watch.c
        condition = [w.alerted_at.is_not(None)] if claimed_at is None else [w.alerted_at == claimed_at]
        with self._lock, self._engine.begin() as connection:
            connection.execute(sa.update(deposit_watch).where(*_is(key), *condition).values(alerted_at=None))

    def samples(
        self, *, chain_id: int | None = None, paymaster: str | None = None, since: datetime | None = None
    ) -> list[Sample]:
        """Samples, oldest first (what the dashboard plots)."""
        s = deposit_samples.c
        query = sa.select(s.chain_id, s.entry_point, s.paymaster, s.deposit_wei, s.sampled_at).order_by(
            s.sampled_at, s.id
        )
        if chain_id is not None:
            query = query.where(s.chain_id == chain_id)
        if paymaster is not None:
            query = query.where(s.paymaster == paymaster)
        if since is not None:
            query = query.where(s.sampled_at >= since)
        with self._engine.connect() as connection:
            return [
                Sample(row.chain_id, row.entry_point, row.paymaster, int(row.deposit_wei), _aware(row.sampled_at))
                for row in connection.execute(query)
            ]


def _is(key: DepositKey) -> tuple[sa.ColumnElement[bool], ...]:
    w = deposit_watch.c
    return (w.chain_id == key.chain_id, w.entry_point == key.entry_point, w.paymaster == key.paymaster)


def _aware(moment: datetime) -> datetime:
    """SQLite hands times back without their zone: they were written in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
