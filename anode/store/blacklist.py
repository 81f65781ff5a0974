"""Contracts the operator blacklisted at run time (``/api/v1/security/blacklist``, admin keys).

One row per address and scope: a chain id, or every chain (``chain_id`` NULL). The row's ``id``
is that scope, ``"31337:0xabc…"`` or ``"*:0xabc…"`` (lower-case hex), so adding an entry twice
cannot make two rows, on SQLite or PostgreSQL, however many servers race. Adding is idempotent:
the existing entry (its first reason, time and author) is answered with ``created = False``.

The security filter reads ``snapshot()``: every entry, cached for ``refresh_seconds`` (past half
that age a copy is reloaded in the background, as ``PolicyRepository`` does), so a request does
no query. Writes through this object drop the cached copy: they count at this server's next
request; another server sees them within its ``refresh_seconds``. A table that cannot be read
fails closed (``StoreUnavailable``): an operation is not sponsored when its target might be
blacklisted.

The blacklist of the settings file (``security_filter.config.blacklist_contracts``) is not here:
the filter blocks an address found in either.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa

from anode.errors import StoreUnavailable
from anode.store.database import write_lock
from anode.store.snapshot import RefreshedCopy
from anode.store.tables import metadata

log = logging.getLogger("anode.security")
T = TypeVar("T")
ALL_CHAINS = "*"
MAX_REASON = 500

contract_blacklist = sa.Table(
    "contract_blacklist",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("chain_id", sa.BigInteger(), nullable=True),
    sa.Column("address", sa.String(42), nullable=False),
    sa.Column("reason", sa.String(MAX_REASON), nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("created_by", sa.String(32), nullable=True),
)


def entry_id(address: str, chain_id: int | None) -> str:
    """The row id of ``address`` (``0x`` + 40 hex digits, any case) in a scope."""
    return f"{ALL_CHAINS if chain_id is None else chain_id}:{address.lower()}"


@dataclass(frozen=True, slots=True)
class BlacklistEntry:
    #: lower-case hex
    address: str
    #: ``None``: every chain
    chain_id: int | None
    reason: str | None
    created_at: datetime
    #: the admin key id that added it (``None`` when not added through the API)
    created_by: str | None

    @property
    def id(self) -> str:
        return entry_id(self.address, self.chain_id)


class BlacklistSnapshot:
    """Every entry at one moment, answering "which addresses are blacklisted on chain N" in O(1).

    ``for_chain`` hands back the same frozenset object for the same chain until the next reload,
    so callers may cache what they derive from it by identity.
    """

    __slots__ = ("_all_chains", "_by_chain", "entries")

    def __init__(self, entries: Iterable[BlacklistEntry]) -> None:
        self.entries = tuple(entries)
        everywhere = frozenset(e.address for e in self.entries if e.chain_id is None)
        per_chain: dict[int, set[str]] = {}
        for entry in self.entries:
            if entry.chain_id is not None:
                per_chain.setdefault(entry.chain_id, set()).add(entry.address)
        self._all_chains = everywhere
        self._by_chain = {chain: frozenset(addresses) | everywhere for chain, addresses in per_chain.items()}

    def for_chain(self, chain_id: int) -> frozenset[str]:
        """Lower-case addresses blacklisted on ``chain_id`` (its own entries and every-chain ones)."""
        return self._by_chain.get(chain_id, self._all_chains)


EMPTY = BlacklistSnapshot(())


class SqlBlacklist:
    """The ``contract_blacklist`` table; blocking calls run in threads."""

    def __init__(
        self, engine: sa.Engine, *, refresh_seconds: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._engine = engine
        self._copy = RefreshedCopy(
            self._load_snapshot, refresh_seconds=refresh_seconds, what="the blacklist", clock=clock
        )

    @property
    def refresh_seconds(self) -> float:
        return self._copy.refresh_seconds

    # -- the hot path -----------------------------------------------------------------------

    async def snapshot(self) -> BlacklistSnapshot:
        """Every entry, at most ``refresh_seconds`` old (0: read on every call); reloaded in the
        background past half that age (``anode/store/snapshot.py``)."""
        return await self._copy.get()

    async def refresh(self) -> BlacklistSnapshot:
        """Read the table now (tests; an operator's tooling that must see another server's write)."""
        return await self._copy.reload()

    async def _load_snapshot(self) -> BlacklistSnapshot:
        return BlacklistSnapshot(await self._run(self._load_all))

    # -- management -------------------------------------------------------------------------

    async def entries(self) -> list[BlacklistEntry]:
        return await self._run(self._load_all)

    async def add(
        self, address: str, chain_id: int | None, reason: str | None, created_by: str | None
    ) -> tuple[BlacklistEntry, bool]:
        """Blacklist ``address`` in a scope: the entry, and whether it is new (else: the one kept)."""
        entry = BlacklistEntry(address.lower(), chain_id, reason, datetime.now(UTC), created_by)
        created, kept = await self._run(self._insert, entry)
        self._copy.invalidate()
        return kept, created

    async def remove(self, address: str, chain_id: int | None) -> bool:
        """Take ``address`` off the blacklist of that scope; ``False`` when it was not on it."""

        def delete() -> int:
            with write_lock(self._engine), self._engine.begin() as connection:
                where = contract_blacklist.c.id == entry_id(address, chain_id)
                return connection.execute(contract_blacklist.delete().where(where)).rowcount

        removed = await self._run(delete) == 1
        self._copy.invalidate()
        return removed

    # -- SQL --------------------------------------------------------------------------------

    def _insert(self, entry: BlacklistEntry) -> tuple[bool, BlacklistEntry]:
        row = {
            "id": entry.id,
            "chain_id": entry.chain_id,
            "address": entry.address,
            "reason": entry.reason,
            "created_at": entry.created_at,
            "created_by": entry.created_by,
        }
        query = sa.select(contract_blacklist).where(contract_blacklist.c.id == entry.id)
        for _ in range(3):  # insert, or read the row that is there; removed in between: again
            try:
                with write_lock(self._engine), self._engine.begin() as connection:
                    connection.execute(contract_blacklist.insert(), row)
                return True, entry
            except sa.exc.IntegrityError:  # already there (perhaps added a moment ago by another server)
                pass
            with self._engine.connect() as connection:
                found = connection.execute(query).mappings().first()
            if found is not None:
                return False, _entry(found)
        raise StoreUnavailable(f"blacklist entry {entry.id} is being added and removed concurrently: retry")

    def _load_all(self) -> list[BlacklistEntry]:
        query = sa.select(contract_blacklist).order_by(contract_blacklist.c.created_at, contract_blacklist.c.id)
        with self._engine.connect() as connection:
            return [_entry(row) for row in connection.execute(query).mappings()]

    async def _run(self, work: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(work, *args)
        except sa.exc.SQLAlchemyError as exc:
            raise StoreUnavailable(f"the contract blacklist could not be used ({type(exc).__name__})") from None


def _entry(row: sa.RowMapping) -> BlacklistEntry:
    created = row["created_at"]
    if created.tzinfo is None:  # SQLite hands back naive UTC
        created = created.replace(tzinfo=UTC)
    return BlacklistEntry(row["address"], row["chain_id"], row["reason"], created, row["created_by"])
