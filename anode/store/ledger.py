"""The sponsorship ledger: every paymaster signature is written here before it leaves.

``SqlLedger.record`` returns only once the row is committed. Concurrent requests share commits
(group commit): while one batch is being written, the next accumulates, so a busy server pays one
transaction per batch instead of one per request. A failed write fails every request in the batch
with ``StoreUnavailable``: nothing is signed that is not on the books.

The same transaction appends each signature to the hash-chained audit log (``store/audit.py``):
a signature is in the ledger and in the audit chain together, or in neither.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Protocol

import sqlalchemy as sa

from anode.errors import StoreUnavailable
from anode.store import audit
from anode.store.tables import sponsorships

MAX_BATCH = 512


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


_COLUMNS = tuple(column.name for column in sponsorships.columns if column.name != "id")


#: record fields, copied shallowly for the insert (every value is immutable; ``asdict`` deep-copies)
_RECORD_FIELDS = tuple(field.name for field in fields(SponsorshipRecord))


class Ledger(Protocol):
    async def record(self, entry: SponsorshipRecord) -> None: ...

    async def find(
        self,
        *,
        sender: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]: ...

    async def aclose(self) -> None: ...


class SqlLedger:
    """Ledger on any SQLAlchemy engine (SQLite, PostgreSQL), written from one worker thread."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="anode-ledger")
        self._pending: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._flushing = False
        self._flusher: asyncio.Task[None] | None = None

    async def record(self, entry: SponsorshipRecord) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append(({name: getattr(entry, name) for name in _RECORD_FIELDS}, done))
        if not self._flushing:
            self._flushing = True
            self._flusher = loop.create_task(self._flush())
        await done

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                try:
                    await loop.run_in_executor(self._writer, self._insert, [row for row, _ in batch])
                except (sa.exc.DataError, sa.exc.IntegrityError):
                    # one row the database refuses must not refuse the requests batched with it:
                    # write them one by one (only for row errors; a dead database fails the batch at once)
                    for row, done in batch:
                        try:
                            await loop.run_in_executor(self._writer, self._insert, [row])
                        except Exception as exc:
                            _settle([(row, done)], exc)
                        else:
                            _settle([(row, done)], None)
                except Exception as exc:  # any driver error: refuse, never sign off the books
                    _settle(batch, exc)
                else:
                    _settle(batch, None)
        finally:
            self._flushing = False

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        with self._engine.begin() as connection:
            connection.execute(sponsorships.insert(), [{name: row[name] for name in _COLUMNS} for row in rows])
            audit.append(connection, [{**row, "kind": audit.SIGNATURE} for row in rows])

    async def find(
        self,
        *,
        sender: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.find_now, sender, since, until, limit)

    def find_now(
        self,
        sender: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        since, until = _utc(since), _utc(until)
        query = sa.select(sponsorships).order_by(sponsorships.c.id.desc()).limit(limit)
        if sender is not None:
            query = query.where(sponsorships.c.sender == sender)
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

    async def aclose(self) -> None:
        self._writer.shutdown(wait=True)
        self._engine.dispose()


def _settle(batch: list[tuple[dict[str, Any], asyncio.Future[None]]], exc: Exception | None) -> None:
    error = None
    if exc is not None:
        error = StoreUnavailable(
            f"the sponsorship ledger could not be written ({type(exc).__name__}); nothing was signed"
        )
    for _, done in batch:
        if done.done():
            continue
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)


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
