"""The KMS's decision log: every answer of the KMS, accepted or refused with its code, hash-chained.

The records and their hash are the paymaster's (:mod:`anode.store.audit`: ``record_hash =
sha256(prev_hash ‖ canonical(record))``, the same fields), kept in the KMS's own tables
``kms_audit_log`` and ``kms_audit_head``, appended under the head row's lock so that concurrent
requests and replicas form one chain (on the signing path through the DB-API cursor, :class:`Appender`,
the same three statements). A record's ``kind`` is the decision (``signed``,
``refused``, ``account_created``, ``passkey_registered``, ``signer_added``, ``signer_removed``,
``signer_rotated``); ``signer`` is the owner address, ``paymaster`` the paymaster's, ``detail``
holds the accountId and, for a refusal, its code. ``anode kms audit verify`` walks the chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa

from anode.errors import StoreUnavailable
from anode.kms.store import KmsStore, metadata
from anode.store.audit import GENESIS, AuditEntry, chain_hash
from anode.store.driver import Driver

_BIG = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

audit_log = sa.Table(
    "kms_audit_log",
    metadata,
    sa.Column("seq", _BIG, primary_key=True, autoincrement=False),
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
)
audit_head = sa.Table(
    "kms_audit_head",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger(), nullable=False),
    sa.Column("record_hash", sa.String(64), nullable=False),
)


_TAKE_HEAD = (
    audit_head.update()
    .where(audit_head.c.id == 1)
    .values(seq=audit_head.c.seq)
    .returning(audit_head.c.seq, audit_head.c.record_hash)
)
_INSERT = audit_log.insert()
_MOVE_HEAD = (
    audit_head.update()
    .where(audit_head.c.id == 1)
    .values(seq=sa.bindparam("new_seq"), record_hash=sa.bindparam("new_hash"))
)


def create_head(connection: sa.Connection) -> None:
    if connection.execute(sa.select(audit_head.c.id)).scalar_one_or_none() is None:
        connection.execute(audit_head.insert().values(id=1, seq=0, record_hash=GENESIS))


def entry(kind: str, **fields: Any) -> AuditEntry:
    return AuditEntry(kind=kind, created_at=datetime.now(UTC), **fields)


def append(connection: sa.Connection, entry: AuditEntry) -> str:
    """Chain ``entry`` inside the caller's transaction (the head row's lock is held until it commits)."""
    head = connection.execute(_TAKE_HEAD).one_or_none()
    if head is None:
        raise StoreUnavailable("the KMS audit chain head is missing (run `anode kms audit verify`)")
    seq, row = int(head.seq) + 1, entry.as_row()
    record = chain_hash(str(head.record_hash), row)
    connection.execute(_INSERT, {**row, "seq": seq, "prev_hash": head.record_hash, "record_hash": record})
    connection.execute(_MOVE_HEAD, {"new_seq": seq, "new_hash": record})
    return record


#: the audit log's columns, in the order :class:`Appender` writes them
_ROW = (
    "seq", "created_at", "kind", "backend", "signer", "user_op_hash", "chain_id", "paymaster", "api_key_id",
    "request_id", "detail", "prev_hash", "record_hash",
)  # fmt: skip


class Appender:
    """:func:`append` on a DB-API cursor (``KmsStore.cursor``): take the head row's lock, insert the
    record, move the head; the values converted as SQLAlchemy's types would store them."""

    def __init__(self, driver: Driver) -> None:
        self._driver = driver
        self._take_head = "UPDATE kms_audit_head SET seq = seq WHERE id = 1 RETURNING seq, record_hash"
        self._insert = driver.insert(audit_log, _ROW)
        self._move_head = f"UPDATE kms_audit_head SET seq = {driver.mark}, record_hash = {driver.mark} WHERE id = 1"

    def append(self, cursor: Any, entry: AuditEntry) -> str:
        cursor.execute(self._take_head)
        head = cursor.fetchone()
        if head is None:
            raise StoreUnavailable("the KMS audit chain head is missing (run `anode kms audit verify`)")
        seq, prev = int(head[0]) + 1, str(head[1])
        record = chain_hash(prev, entry.as_row())
        detail = None if entry.detail is None else orjson.dumps(entry.detail).decode()
        cursor.execute(self._insert, (
            seq, self._driver.time(entry.created_at), entry.kind, entry.backend, entry.signer, entry.user_op_hash,
            entry.chain_id, entry.paymaster, entry.api_key_id, entry.request_id, detail, prev, record,
        ))  # fmt: skip
        cursor.execute(self._move_head, (seq, record))
        return record


def record(store: KmsStore, entry: AuditEntry) -> str:
    """Append in a transaction of its own."""
    with store.write() as connection:
        return append(connection, entry)


def records(store: KmsStore) -> list[dict[str, Any]]:
    with store.read() as connection:
        return [dict(row) for row in connection.execute(sa.select(audit_log).order_by(audit_log.c.seq)).mappings()]


@dataclass(frozen=True, slots=True)
class Verification:
    records: int
    head: str
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify(store: KmsStore) -> Verification:
    """Walk the chain from the genesis; name the first record changed, removed or reordered, or a cut tail."""
    prev, count, last_seq = GENESIS, 0, 0
    with store.read() as connection:
        for row in connection.execute(sa.select(audit_log).order_by(audit_log.c.seq)).mappings():
            count += 1
            seq = int(row["seq"])
            if seq != last_seq + 1:
                return Verification(count, prev, f"record {last_seq + 1} was removed (record {seq} follows {last_seq})")
            if row["prev_hash"] != prev:
                return Verification(
                    count, prev, f"record {seq} does not follow record {last_seq} (reordered or changed)"
                )
            if chain_hash(row["prev_hash"], dict(row)) != row["record_hash"]:
                return Verification(count, prev, f"record {seq} was changed: its fields no longer give its hash")
            prev, last_seq = row["record_hash"], seq
        head = connection.execute(sa.select(audit_head).where(audit_head.c.id == 1)).one_or_none()
    if head is None:
        return Verification(count, prev, "the chain head row is missing")
    if int(head.seq) != last_seq or head.record_hash != prev:
        return Verification(count, prev, f"the chain head names record {head.seq}; the log ends at record {last_seq}")
    return Verification(count, prev)
