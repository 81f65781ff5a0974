"""The sponsorship ledger: every paymaster signature is written here before it leaves.

``SqlLedger.record`` returns only once the row is committed. Concurrent requests share commits
(``store/group_commit.py``). A failed write fails every request in the batch with
``StoreUnavailable``: nothing is signed that is not on the books.

The same transaction appends each signature to the hash-chained audit log (``store/audit.py``),
with the row's money fields (``store/audit_ledger.py``): a signature is in the ledger and in the
audit chain together, or in neither, and a row changed later no longer matches its record.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import sqlalchemy as sa

from anode.errors import StoreUnavailable
from anode.store import audit
from anode.store.audit_ledger import signature_detail
from anode.store.database import invalidate, write_lock
from anode.store.driver import Driver
from anode.store.group_commit import GroupCommit
from anode.store.reconcile import RESERVATION_COLUMNS, Reservation, limit_reservations
from anode.store.tables import sponsorships


@dataclass(frozen=True, slots=True)
class SponsorshipRecord:
    created_at: datetime
    user_op_hash: str
    chain_id: int
    entry_point: str
    paymaster: str
    sender: str
    nonce: int
    max_gas_cost_wei: int
    valid_until: int
    valid_after: int
    signer: str
    api_key_id: str | None
    method: str
    #: the signing backend (its name in the signer manager), for the audit log
    backend: str | None = None
    #: the HTTP request that asked for the signature, for the audit log
    request_id: str | None = None
    #: ``verifying`` (the sponsor pays the gas) or ``erc20`` (the sender pays the sponsor in ``token``)
    mode: str = "verifying"
    #: ERC-20 mode: the token's address, the signed exchange rate and the most the op can be charged
    token: str | None = None
    exchange_rate: int | None = None
    max_token_amount: int | None = None
    #: what the signature reserved in amount limits, found later by reconciliation (``store/reconcile.py``)
    reservations: tuple[Reservation, ...] = ()


#: the ledger's columns, in the order ``SqlLedger`` writes them
_COLUMNS = (
    "created_at", "user_op_hash", "chain_id", "entry_point", "paymaster", "sender", "nonce", "max_gas_cost_wei",
    "valid_until", "valid_after", "signer", "api_key_id", "method", "mode", "token", "exchange_rate",
    "max_token_amount",
)  # fmt: skip


class Ledger(Protocol):
    async def record(self, entry: SponsorshipRecord) -> None: ...

    async def find(
        self,
        *,
        sender: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        api_key_id: str | None = None,
        nonce: int | None = None,
    ) -> list[dict[str, Any]]: ...

    async def mark_sent(self, chain_id: int, user_op_hash: str) -> int:
        """The relay passed this operation to a bundler: its rows get ``sent_at`` (the number of rows)."""
        ...

    async def aclose(self) -> None: ...


class SqlLedger:
    """Ledger on any SQLAlchemy engine (SQLite, PostgreSQL), written from one worker thread.

    The writer thread keeps one DB-API connection of its own and writes through the driver
    (``store/driver.py``); reads go through SQLAlchemy.
    """

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="anode-ledger")
        self._driver = Driver(engine.dialect)
        self._commits: GroupCommit[SponsorshipRecord, None] = GroupCommit(
            self._writer, self._write, row_errors=self._driver.row_errors
        )
        self._insert_sql = self._driver.insert(sponsorships, _COLUMNS)
        self._reservations_sql = self._driver.insert(limit_reservations, RESERVATION_COLUMNS)
        self._audit = audit.DriverAppender(self._driver)
        self._lock = write_lock(engine)
        #: the writer thread's connection (only that thread touches it), opened on first use
        self._connection: Any = None

    async def record(self, entry: SponsorshipRecord) -> None:
        try:
            await self._commits.submit(entry)
        except Exception as exc:  # any driver error: refuse, never sign off the books
            raise StoreUnavailable(
                f"the sponsorship ledger could not be written ({type(exc).__name__}); nothing was signed"
            ) from None

    def _write(self, entries: list[SponsorshipRecord]) -> list[None]:
        """One transaction: the ledger rows and their audit records (on the writer thread)."""
        kept = self._connection is not None
        try:
            self._transaction(entries)
            return [None] * len(entries)
        except self._driver.row_errors:
            self._rollback()
            raise
        except _CommitFailed as failed:
            # the COMMIT's outcome is unknown (it may have landed): never write the batch twice
            self._discard()
            raise failed.error from None
        except Exception:
            self._discard()
            if not kept:
                raise
            # the connection kept since the last batch may have been closed by the server (restart,
            # failover, idle timeout) before this batch wrote anything: try once on a new one
            try:
                self._transaction(entries)
            except _CommitFailed as failed:
                self._discard()
                raise failed.error from None
            except Exception:
                self._discard()
                raise
            return [None] * len(entries)

    def _transaction(self, entries: list[SponsorshipRecord]) -> None:
        if self._connection is None:
            self._connection = self._engine.raw_connection()
        with self._lock:
            self._transaction_locked(self._connection, entries)

    def _transaction_locked(self, connection: Any, entries: list[SponsorshipRecord]) -> None:
        uint, time = self._driver.uint, self._driver.time
        cursor = connection.cursor()
        try:
            cursor.executemany(
                self._insert_sql,
                [
                    (
                        time(e.created_at), e.user_op_hash, e.chain_id, e.entry_point, e.paymaster, e.sender,
                        uint(e.nonce), uint(e.max_gas_cost_wei), e.valid_until, e.valid_after, e.signer,
                        e.api_key_id, e.method, e.mode, e.token, _uint(uint, e.exchange_rate),
                        _uint(uint, e.max_token_amount),
                    )
                    for e in entries
                ],
            )  # fmt: skip
            self._audit.append(cursor, [_audit_row(entry) for entry in entries])
            reserved = [
                (e.chain_id, e.user_op_hash, r.counter, r.window_start, uint(r.amount))
                for e in entries
                for r in e.reservations
            ]
            if reserved:
                cursor.executemany(self._reservations_sql, reserved)
        finally:
            cursor.close()
        try:
            connection.commit()
        except Exception as exc:
            raise _CommitFailed(exc) from exc

    def _rollback(self) -> None:
        try:
            self._connection.rollback()
        except Exception:
            self._discard()

    def _discard(self) -> None:
        connection, self._connection = self._connection, None
        invalidate(connection)

    async def find(
        self,
        *,
        sender: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        api_key_id: str | None = None,
        nonce: int | None = None,
    ) -> list[dict[str, Any]]:
        """Rows newest first; ``api_key_id`` keeps only the operations that key sponsored, ``nonce``
        only those with that nonce (with ``sender``: one account's operation)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.find_now, sender, since, until, limit, api_key_id, nonce)

    def find_now(
        self,
        sender: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
        api_key_id: str | None = None,
        nonce: int | None = None,
    ) -> list[dict[str, Any]]:
        since, until = _utc(since), _utc(until)
        query = sa.select(sponsorships).order_by(sponsorships.c.id.desc()).limit(limit)
        if api_key_id is not None:
            query = query.where(sponsorships.c.api_key_id == api_key_id)
        if sender is not None:
            query = query.where(sponsorships.c.sender == sender)
        if nonce is not None:
            query = query.where(sponsorships.c.nonce == nonce)
        if since is not None:
            query = query.where(sponsorships.c.created_at >= since)
        if until is not None:
            query = query.where(sponsorships.c.created_at < until)
        try:
            with self._engine.connect() as connection:
                rows = connection.execute(query).mappings().all()
        except sa.exc.SQLAlchemyError as exc:
            raise StoreUnavailable(f"the sponsorship ledger could not be read ({type(exc).__name__})") from None
        return [_public(dict(row)) for row in rows]

    async def mark_sent(self, chain_id: int, user_op_hash: str) -> int:
        return await asyncio.to_thread(self._mark_sent, chain_id, user_op_hash.lower())

    def _mark_sent(self, chain_id: int, user_op_hash: str) -> int:
        s = sponsorships.c
        try:
            with self._lock, self._engine.begin() as connection:
                return int(
                    connection.execute(
                        sa.update(sponsorships)
                        .where(s.chain_id == chain_id, s.user_op_hash == user_op_hash, s.sent_at.is_(None))
                        .values(sent_at=datetime.now(UTC))
                    ).rowcount
                )
        except sa.exc.SQLAlchemyError as exc:
            raise StoreUnavailable(f"the sponsorship ledger could not be written ({type(exc).__name__})") from None

    async def aclose(self) -> None:
        self._writer.submit(self._close)
        self._writer.shutdown(wait=True)
        self._engine.dispose()

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


class _CommitFailed(Exception):
    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _audit_row(entry: SponsorshipRecord) -> dict[str, Any]:
    """The row's audit record: who signed what, and what it may cost (``store/audit_ledger.py``)."""
    detail = signature_detail(
        entry_point=entry.entry_point, sender=entry.sender, nonce=entry.nonce,
        max_gas_cost_wei=entry.max_gas_cost_wei, valid_until=entry.valid_until, valid_after=entry.valid_after,
        mode=entry.mode, token=entry.token, exchange_rate=entry.exchange_rate, max_token_amount=entry.max_token_amount,
    )  # fmt: skip
    return {
        "kind": audit.SIGNATURE, "created_at": entry.created_at, "backend": entry.backend, "signer": entry.signer,
        "user_op_hash": entry.user_op_hash, "chain_id": entry.chain_id, "paymaster": entry.paymaster,
        "api_key_id": entry.api_key_id, "request_id": entry.request_id, "detail": detail,
    }  # fmt: skip


def _uint(uint: Any, value: int | None) -> Any:
    return None if value is None else uint(value)


def _utc(moment: datetime | None) -> datetime | None:
    """Compare in UTC: SQLite stores UTC wall-clock text and drops any offset it is handed."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _public(row: dict[str, Any]) -> dict[str, Any]:
    created = row["created_at"]
    if created.tzinfo is None:  # SQLite returns naive datetimes; they were written in UTC
        created = created.replace(tzinfo=UTC)
    row["created_at"] = created.isoformat()
    return row


def max_valid_until(engine: sa.Engine, signer: str, paymaster: str, chain_id: int) -> int | None:
    """The latest ``validUntil`` ``signer`` has signed for ``paymaster`` (key rotation waits it out)."""
    c = sponsorships.c
    query = sa.select(sa.func.max(c.valid_until)).where(
        c.signer == signer, c.paymaster == paymaster, c.chain_id == chain_id
    )
    try:
        with engine.connect() as connection:
            value = connection.execute(query).scalar()
    except sa.exc.SQLAlchemyError as exc:
        raise StoreUnavailable(f"the sponsorship ledger could not be read ({type(exc).__name__})") from None
    return None if value is None else int(value)
