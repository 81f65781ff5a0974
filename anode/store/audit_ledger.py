"""The sponsorship ledger checked against the audit chain (``anode audit verify``).

A signature record of the audit log (``store/audit.py``) has always covered the operation's
``user_op_hash``, ``chain_id``, ``paymaster``, ``signer``, ``api_key_id`` and ``created_at``.
From format 2 on, its ``detail`` also carries the money fields of its ledger row, and from
format 3 on the mode and, in ERC-20 mode, what the sender pays in the token:

    {"v": 3, "entry_point", "sender", "nonce", "max_gas_cost_wei", "valid_until", "valid_after",
     "mode", "token", "exchange_rate", "max_token_amount"}

(``nonce``, ``max_gas_cost_wei``, ``exchange_rate`` and ``max_token_amount`` as decimal strings:
JSON integers in the chain stay below 2**63; ``token``, ``exchange_rate`` and ``max_token_amount``
are null in verifying mode). The record's hash covers ``detail`` like every other field, so a
record describes its ledger row entire but for ``method``, and nothing in it can be changed
without ``verify`` noticing. Records of an older format still verify (the hash covers the
``detail`` they were written with) and pair with their rows on the fields they cover: format 2
on the money fields, not the ERC-20 ones; format 1 (``detail`` empty) on neither, counted as not
covered.

``cross_check`` reads the ledger and the signature records, both sorted by (userOp hash, chain),
pairs each row with a record, and reports every row no record describes (changed in the
database: the fields that differ from its record are named) and every record whose row is gone
(deleted). Ledger rows older than the first signature record predate the audit log: they are
counted, not reported. Memory stays flat: the two sorted streams are merged one operation at a time.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from anode.store.audit import SIGNATURE, audit_log, utc_text
from anode.store.tables import sponsorships

FORMAT = 3
#: the ledger's money fields a signature record carries in ``detail`` from format 2 on
MONEY_FIELDS = ("entry_point", "sender", "nonce", "max_gas_cost_wei", "valid_until", "valid_after")
#: the ledger's fields format 3 adds: the mode, and ERC-20 mode's token, signed rate and maximum charge
ERC20_FIELDS = ("mode", "token", "exchange_rate", "max_token_amount")
#: what a record of each format with ``detail`` covers of its row, besides ``COVERED_FIELDS``
DETAIL_FIELDS = {2: MONEY_FIELDS, 3: MONEY_FIELDS + ERC20_FIELDS}
#: the ledger's fields every signature record covers (besides the userOp hash and the chain)
COVERED_FIELDS = ("created_at", "signer", "paymaster", "api_key_id")
#: problems reported in full; past this many only counted
MAX_PROBLEMS = 50


def signature_detail(
    *,
    entry_point: str,
    sender: str,
    nonce: int,
    max_gas_cost_wei: int,
    valid_until: int,
    valid_after: int,
    mode: str = "verifying",
    token: str | None = None,
    exchange_rate: int | None = None,
    max_token_amount: int | None = None,
) -> dict[str, Any]:
    """``detail`` of a signature record (format 3): what the ledger row says the signature may
    cost the sponsor, and in ERC-20 mode what it may cost the sender in the token."""
    return {
        "v": FORMAT,
        "entry_point": entry_point,
        "sender": sender,
        "nonce": str(nonce),
        "max_gas_cost_wei": str(max_gas_cost_wei),
        "valid_until": valid_until,
        "valid_after": valid_after,
        "mode": mode,
        "token": token,
        "exchange_rate": None if exchange_rate is None else str(exchange_rate),
        "max_token_amount": None if max_token_amount is None else str(max_token_amount),
    }


@dataclass(frozen=True, slots=True)
class LedgerCheck:
    #: ledger rows read
    rows: int
    #: of them, paired with a record of format 1: their money fields are not covered by the chain
    #: (a record of format 2 covers them, but not the ERC-20 fields: those rows are not counted)
    uncovered: int = 0
    #: of them, older than the first signature record (written before the audit log existed)
    predating: int = 0
    #: one line per changed or deleted row (at most ``MAX_PROBLEMS``)
    problems: list[str] = field(default_factory=list)
    #: how many problems there were in all
    problem_count: int = 0

    @property
    def ok(self) -> bool:
        return self.problem_count == 0


@dataclass(slots=True)
class _Row:
    """A ledger row or an audit record, reduced to what they share."""

    ident: int
    covered: tuple[str, ...]
    #: ledger rows: every field of ``DETAIL_FIELDS[FORMAT]``; records: the fields their format covers
    money: tuple[str, ...] | None
    created_at: str

    def money_matches(self, record: _Row) -> bool:
        """Whether this ledger row has every money field ``record`` covers as ``record`` has it."""
        return self.money is not None and record.money is not None and self.money[: len(record.money)] == record.money


def _covered(row: sa.RowMapping) -> tuple[str, ...]:
    return tuple(utc_text(row[name]) if name == "created_at" else str(row[name]) for name in COVERED_FIELDS)


def _text(value: Any) -> str:
    return "null" if value is None else str(value)


def _ledger(row: sa.RowMapping) -> _Row:
    money = tuple(_text(row[name]) for name in DETAIL_FIELDS[FORMAT])
    return _Row(int(row["id"]), _covered(row), money, utc_text(row["created_at"]))


def _record(row: sa.RowMapping) -> _Row:
    detail = row["detail"]
    money = None
    if isinstance(detail, dict) and detail.get("v") in DETAIL_FIELDS:
        money = tuple(_text(detail.get(name)) for name in DETAIL_FIELDS[detail["v"]])
    return _Row(int(row["seq"]), _covered(row), money, utc_text(row["created_at"]))


def _sorted(connection: sa.Connection, query: sa.Select[Any], batch: int) -> Iterator[sa.RowMapping]:
    result = connection.execution_options(yield_per=batch).execute(query)
    try:
        yield from result.mappings()
    finally:
        result.close()  # a server-side cursor (PostgreSQL) left mid-way


def _grouped(rows: Iterator[sa.RowMapping]) -> Iterator[tuple[tuple[str, int], list[sa.RowMapping]]]:
    for key, group in itertools.groupby(rows, key=lambda row: (str(row["user_op_hash"]), int(row["chain_id"]))):
        yield key, list(group)


def cross_check(engine: sa.Engine, *, batch: int = 10_000) -> LedgerCheck:
    """Every ledger row against the signature records of the audit chain (run ``verify`` first:
    a chain that does not verify is no yardstick)."""
    log, ledger = audit_log.c, sponsorships.c
    postgres = engine.dialect.name == "postgresql"

    def order(column: sa.Column[Any]) -> sa.ColumnElement[Any]:
        """One byte order on both sides and in Python (PostgreSQL would sort text by its locale)."""
        return column.collate("C") if postgres else column

    records = (
        sa.select(audit_log)
        .where(log.kind == SIGNATURE, log.user_op_hash.is_not(None), log.chain_id.is_not(None))
        .order_by(order(log.user_op_hash), log.chain_id, log.seq)
    )
    rows = sa.select(sponsorships).order_by(order(ledger.user_op_hash), ledger.chain_id, ledger.id)
    first = sa.select(sa.func.min(log.created_at)).where(log.kind == SIGNATURE)
    with engine.connect() as reader, engine.connect() as ledger_reader:
        started = reader.execute(first).scalar()
        report = _Report(None if started is None else utc_text(started))
        audit_groups = _grouped(_sorted(reader, records, batch))
        ledger_groups = _grouped(_sorted(ledger_reader, rows, batch))
        audit_next = next(audit_groups, None)
        ledger_next = next(ledger_groups, None)
        while audit_next is not None or ledger_next is not None:
            if ledger_next is None or (audit_next is not None and audit_next[0] < ledger_next[0]):
                assert audit_next is not None
                report.pair(audit_next[0], [], [_record(r) for r in audit_next[1]])
                audit_next = next(audit_groups, None)
            elif audit_next is None or ledger_next[0] < audit_next[0]:
                report.pair(ledger_next[0], [_ledger(r) for r in ledger_next[1]], [])
                ledger_next = next(ledger_groups, None)
            else:
                report.pair(ledger_next[0], [_ledger(r) for r in ledger_next[1]], [_record(r) for r in audit_next[1]])
                audit_next = next(audit_groups, None)
                ledger_next = next(ledger_groups, None)
    return report.result()


class _Report:
    def __init__(self, started: str | None) -> None:
        self.started = started
        self.rows = self.uncovered = self.predating = self.count = 0
        self.problems: list[str] = []

    def problem(self, text: str) -> None:
        self.count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)

    def pair(self, key: tuple[str, int], rows: list[_Row], records: list[_Row]) -> None:
        """One operation's ledger rows against its records (almost always one of each)."""
        self.rows += len(rows)
        where = f"userOp {key[0]} on chain {key[1]}"
        # whole matches first: formats 2 and 3 on every field they cover, format 1 on the fields it covers
        for record in [r for r in records if r.money is not None]:
            whole = next((r for r in rows if r.covered == record.covered and r.money_matches(record)), None)
            if whole is not None:
                rows.remove(whole)
                records.remove(record)
        for record in [r for r in records if r.money is None]:
            partial = next((r for r in rows if r.covered == record.covered), None)
            if partial is not None:
                rows.remove(partial)
                records.remove(record)
                self.uncovered += 1
        # what is left was changed: pair a row with its operation's record that differs least
        for changed in list(rows):
            if not records:
                break
            closest = min(records, key=lambda r: len(_differences(changed, r)))
            rows.remove(changed)
            records.remove(closest)
            changes = "; ".join(
                f"{name} is {ours} in the ledger, {theirs} in the record"
                for name, ours, theirs in _differences(changed, closest)
            )
            self.problem(f"ledger row {changed.ident} ({where}) was changed: {changes} (audit record {closest.ident})")
        for row in rows:
            if self.started is None or row.created_at < self.started:
                self.predating += 1
                continue
            self.problem(
                f"ledger row {row.ident} ({where}) is in no audit record: written outside aNode, "
                f"or its userOp hash or chain was changed"
            )
        for record in records:
            self.problem(
                f"the ledger row of audit record {record.ident} ({where}, signed {record.created_at}) "
                f"is missing: deleted, or its userOp hash or chain was changed"
            )

    def result(self) -> LedgerCheck:
        return LedgerCheck(self.rows, self.uncovered, self.predating, self.problems, self.count)


def _differences(row: _Row, record: _Row) -> list[tuple[str, str, str]]:
    found = [(name, a, b) for name, a, b in zip(COVERED_FIELDS, row.covered, record.covered, strict=True) if a != b]
    if record.money is not None and row.money is not None:
        names = DETAIL_FIELDS[FORMAT][: len(record.money)]
        found += [(name, a, b) for name, a, b in zip(names, row.money, record.money, strict=False) if a != b]
    return found
