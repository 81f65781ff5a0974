"""The audit log: an append-only, hash-chained record of every signature and key rotation.

Each record's hash covers the previous record's hash and the record's own fields:

    record_hash = sha256(prev_hash ‖ canonical(record))
    canonical   = JSON of {api_key_id, backend, chain_id, created_at, detail, kind, paymaster,
                  request_id, signer, user_op_hash}: keys sorted, no whitespace, UTF-8;
                  created_at as UTC ISO-8601 with microseconds ("2030-01-01T12:00:00.000000+00:00")

The first record follows ``GENESIS`` (64 zeros). A one-row table, ``audit_head``, holds the
sequence number and hash of the newest record: every append takes that row's write lock (an
``UPDATE … RETURNING`` on it, in the caller's transaction), so appends from any number of
threads and server processes form one chain, on PostgreSQL (row lock) and SQLite (the write
lock the statement takes). Signature records are appended in the same transaction as the
ledger row (``store/ledger.py``): a signature is on the books and in the chain, or neither.

A signature record's ``detail`` holds the money fields of its ledger row (sender, nonce,
maximum cost, validity window, and the mode with ERC-20 mode's token, rate and maximum: format 3,
``store/audit_ledger.py``), so ``anode audit verify`` also finds a ledger row changed or deleted
behind the chain's back. Records written before format 2 have no ``detail``; they, and those of
format 2, verify as they always did.

``verify`` walks the chain and names the first record that was changed, removed or reordered,
and a tail cut off behind the head. Someone who can rewrite the whole database can rewrite the
chain too: keep the head hash ``anode audit verify`` prints somewhere else (a ticket, a log
shipper, a chain) to anchor it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import sqlalchemy as sa

from anode.errors import StoreUnavailable
from anode.store.driver import Driver
from anode.store.tables import metadata

GENESIS = "0" * 64
SIGNATURE = "signature"

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("backend", sa.String(64), nullable=True),
    sa.Column("signer", sa.String(42), nullable=True),
    sa.Column("user_op_hash", sa.String(66), nullable=True),
    sa.Column("chain_id", sa.BigInteger(), nullable=True),
    sa.Column("paymaster", sa.String(42), nullable=True),
    sa.Column("api_key_id", sa.String(32), nullable=True),
    sa.Column("request_id", sa.String(64), nullable=True),
    sa.Column("detail", sa.JSON(), nullable=True),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("record_hash", sa.String(64), nullable=False),
    sa.Index("ix_audit_log_record_hash", "record_hash", unique=True),
    sa.Index("ix_audit_log_user_op_hash", "user_op_hash"),
    sa.Index("ix_audit_log_kind_seq", "kind", "seq"),
)

audit_head = sa.Table(
    "audit_head",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger(), nullable=False),
    sa.Column("record_hash", sa.String(64), nullable=False),
)

#: the fields a record's hash covers (everything but its position and the hashes)
_HASHED = (
    "api_key_id", "backend", "chain_id", "created_at", "detail", "kind", "paymaster", "request_id", "signer",
    "user_op_hash",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One record before it is chained. ``detail`` holds JSON values (no floats, ints below 2**63)."""

    kind: str
    created_at: datetime
    signer: str | None = None
    backend: str | None = None
    user_op_hash: str | None = None
    chain_id: int | None = None
    paymaster: str | None = None
    api_key_id: str | None = None
    request_id: str | None = None
    detail: dict[str, Any] | None = field(default=None, hash=False)

    def as_row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _HASHED}


def utc_text(moment: datetime) -> str:
    """The canonical form of a time: UTC, microseconds (SQLite hands back naive UTC times)."""
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.isoformat(timespec="microseconds")


def canonical(row: dict[str, Any]) -> bytes:
    fields = {name: row[name] for name in _HASHED}
    fields["created_at"] = utc_text(row["created_at"])
    return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)


def chain_hash(prev_hash: str, row: dict[str, Any]) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical(row)).hexdigest()


def append(connection: sa.Connection, entries: Sequence[AuditEntry | dict[str, Any]]) -> str:
    """Chain ``entries`` onto the log inside the caller's transaction; returns the new head hash.

    The head row's lock is held until the caller commits, so concurrent appends queue behind it.
    """
    head = connection.execute(
        audit_head.update()
        .where(audit_head.c.id == 1)
        .values(seq=audit_head.c.seq)
        .returning(audit_head.c.seq, audit_head.c.record_hash)
    ).one_or_none()
    if head is None:
        raise StoreUnavailable("the audit chain head is missing (run `anode audit verify`); nothing was signed")
    seq, prev = int(head.seq), str(head.record_hash)
    rows = []
    for entry in entries:
        row = entry.as_row() if isinstance(entry, AuditEntry) else {name: entry.get(name) for name in _HASHED}
        seq += 1
        record = chain_hash(prev, row)
        rows.append({**row, "seq": seq, "prev_hash": prev, "record_hash": record})
        prev = record
    if rows:
        connection.execute(audit_log.insert(), rows)
        connection.execute(audit_head.update().where(audit_head.c.id == 1).values(seq=seq, record_hash=prev))
    return prev


def append_now(engine: sa.Engine, entries: Sequence[AuditEntry]) -> str:
    """Append in a transaction of its own (rotation records; signatures go through the ledger)."""
    try:
        with engine.begin() as connection:
            return append(connection, entries)
    except sa.exc.SQLAlchemyError as exc:
        raise StoreUnavailable(f"the audit log could not be written ({type(exc).__name__})") from None


#: the audit log's columns, in the order ``DriverAppender`` writes them
_ROW = (
    "seq", "created_at", "kind", "backend", "signer", "user_op_hash", "chain_id", "paymaster", "api_key_id",
    "request_id", "detail", "prev_hash", "record_hash",
)  # fmt: skip


class DriverAppender:
    """``append`` for the ledger's writer thread: the same chain, written through a DB-API cursor.

    Same statements as ``append`` (take the head's lock, insert, move the head), prepared once, with
    the records as tuples (``store/driver.py`` says why).
    """

    def __init__(self, driver: Driver) -> None:
        mark = driver.mark
        self._driver = driver
        self._take_head = "UPDATE audit_head SET seq = seq WHERE id = 1 RETURNING seq, record_hash"
        self._insert = driver.insert(audit_log, _ROW)
        self._move_head = f"UPDATE audit_head SET seq = {mark}, record_hash = {mark} WHERE id = 1"

    def append(self, cursor: Any, rows: Sequence[dict[str, Any]]) -> str:
        """Chain ``rows`` (dicts holding at least the hashed fields but ``detail``) in the cursor's transaction."""
        cursor.execute(self._take_head)
        head = cursor.fetchone()
        if head is None:
            raise StoreUnavailable("the audit chain head is missing (run `anode audit verify`); nothing was signed")
        seq, prev = int(head[0]), str(head[1])
        time = self._driver.time
        values = []
        for row in rows:
            detail = row.get("detail")
            hashed = {name: row[name] for name in _HASHED if name != "detail"} | {"detail": detail}
            record = chain_hash(prev, hashed)
            seq += 1
            values.append((
                seq, time(row["created_at"]), row["kind"], row["backend"], row["signer"], row["user_op_hash"],
                row["chain_id"], row["paymaster"], row["api_key_id"], row["request_id"],
                None if detail is None else orjson.dumps(detail).decode(), prev, record,
            ))  # fmt: skip
            prev = record
        if values:
            cursor.executemany(self._insert, values)
            cursor.execute(self._move_head, (seq, prev))
        return prev


def records(engine: sa.Engine, *, kind: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Records in chain order (newest last), optionally of one kind."""
    query = sa.select(audit_log).order_by(audit_log.c.seq.desc()).limit(limit)
    if kind is not None:
        query = query.where(audit_log.c.kind == kind)
    with engine.connect() as connection:
        return [dict(row) for row in reversed(connection.execute(query).mappings().all())]


# -- verification -------------------------------------------------------------------------------

Problem = Literal["changed", "removed", "reordered", "head"]


@dataclass(frozen=True, slots=True)
class Verification:
    records: int
    head: str
    #: what is wrong first, or ``None`` when the chain is intact
    problem: Problem | None = None
    #: the sequence number of the first bad record
    seq: int | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify(engine: sa.Engine, *, batch: int = 10_000, progress: Callable[[int], None] | None = None) -> Verification:
    """Walk the chain from the genesis and report the first changed, removed or reordered record.

    ``progress`` is called with the number of records read since its last call (every ``batch``)."""
    query = sa.select(audit_log).order_by(audit_log.c.seq)
    with engine.connect() as reader, engine.connect() as lookup:
        result = reader.execution_options(yield_per=batch).execute(query)
        try:
            rows: Iterable[sa.RowMapping] = result.mappings()
            return _walk(lookup, rows if progress is None else _reporting(rows, progress, batch))
        finally:
            result.close()  # a server-side cursor (PostgreSQL) left mid-way


def _reporting(rows: Iterable[sa.RowMapping], progress: Callable[[int], None], every: int) -> Iterator[sa.RowMapping]:
    count = 0
    for row in rows:
        yield row
        count += 1
        if count == every:
            progress(count)
            count = 0
    progress(count)


def count_records(engine: sa.Engine) -> int:
    """How many records the audit log holds (for a progress line's total)."""
    with engine.connect() as connection:
        return int(connection.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar_one())


def _walk(connection: sa.Connection, rows: Iterable[sa.RowMapping]) -> Verification:
    prev_hash, prev_seq, count = GENESIS, 0, 0
    for row in rows:
        count += 1
        seq = int(row["seq"])
        if chain_hash(row["prev_hash"], dict(row)) != row["record_hash"]:
            return Verification(
                count, prev_hash, "changed", seq, f"record {seq} was changed: its fields no longer give its hash"
            )
        if row["prev_hash"] != prev_hash:
            linked = connection.execute(
                sa.select(audit_log.c.seq).where(audit_log.c.record_hash == row["prev_hash"])
            ).scalar_one_or_none()
            if linked is not None:
                return Verification(
                    count,
                    prev_hash,
                    "reordered",
                    seq,
                    f"record {seq} is out of order: it was chained after record {linked}, not after record {prev_seq}",
                )
            if seq > prev_seq + 1:
                missing = (
                    f"records {prev_seq + 1}–{seq - 1} were" if seq > prev_seq + 2 else f"record {prev_seq + 1} was"
                )
                return Verification(
                    count,
                    prev_hash,
                    "removed",
                    prev_seq + 1,
                    f"{missing} removed: record {seq} follows a record that is gone",
                )
            return Verification(
                count,
                prev_hash,
                "changed",
                prev_seq,
                f"record {prev_seq} was changed and its hash recomputed: record {seq} still follows the original "
                f"(or a record between them was removed and the rest renumbered)",
            )
        prev_hash, prev_seq = row["record_hash"], seq
    head = connection.execute(sa.select(audit_head).where(audit_head.c.id == 1)).one_or_none()
    if head is None:
        return Verification(count, prev_hash, "head", None, "the chain head row is missing")
    if head.record_hash != prev_hash:
        if int(head.seq) > prev_seq:
            gone = int(head.seq) - prev_seq
            return Verification(
                count,
                prev_hash,
                "removed",
                prev_seq + 1,
                f"the last {gone} record(s) were removed: the chain head is record {head.seq}, "
                f"the log ends at record {prev_seq}",
            )
        return Verification(count, prev_hash, "head", int(head.seq), "the chain head does not match the last record")
    return Verification(count, prev_hash)
