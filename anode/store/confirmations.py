"""Confirmation tokens: a user's "yes, do it anyway" for one risky operation, once.

A token is 32 random bytes (URL-safe base64) handed to the caller; only its SHA-256 is stored.
It is bound to one operation digest and one API key, expires (10 minutes by default) and is
redeemed by a single conditional ``UPDATE`` — the database decides, so two requests (or two
server processes) racing with one token cannot both win, and a restart forgets nothing.

When a redeemed operation is not signed after all (another check refused it, the signer failed),
``release`` makes the token usable again.

The table stays bounded whoever calls. Each API key (and "no key" on an open server) keeps at
most ``max_pending_per_key`` unused tokens: issuing one more drops that key's oldest unused
tokens in the same transaction (a stub call mints a token per warning, so a refusal would lock
out every user of a busy key, while dropping the oldest only costs a user who sat on an old
warning a new one). Expired rows are kept an hour (so "expired" can be told from "unknown"),
then pruned by the next issue, at most every ``PRUNE_EVERY_SECONDS``.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa

from anode.errors import StoreUnavailable
from anode.store.tables import metadata

DEFAULT_TTL_SECONDS = 600
KEEP_EXPIRED = timedelta(hours=1)
PRUNE_EVERY_SECONDS = 60.0
DEFAULT_MAX_PENDING_PER_KEY = 1_000
_MAX_TOKEN_LENGTH = 128
T = TypeVar("T")

confirmations = sa.Table(
    "confirmations",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("op_digest", sa.String(66), nullable=False),
    sa.Column("api_key_id", sa.String(32), nullable=True),
    sa.Column("summary", sa.JSON(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
    sa.Index("ix_confirmations_expires", "expires_at"),
    sa.Index("ix_confirmations_key_pending", "api_key_id", "used_at", "created_at"),
)


class Redemption(StrEnum):
    """What a presented token turned out to be."""

    OK = "ok"
    UNKNOWN = "unknown"
    OTHER_KEY = "other_key"
    OTHER_OPERATION = "other_operation"
    REUSED = "reused"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    #: unix time
    expires_at: float


class ConfirmationStore(Protocol):
    async def issue(
        self, op_digest: str, api_key_id: str | None, summary: Mapping[str, Any], ttl: float = DEFAULT_TTL_SECONDS
    ) -> IssuedToken: ...

    async def redeem(self, token: str, op_digest: str, api_key_id: str | None) -> Redemption:
        """Use the token (once): ``OK`` only for its operation and key, unused and unexpired."""
        ...

    async def check(self, token: str, op_digest: str, api_key_id: str | None) -> Redemption:
        """What ``redeem`` would answer now, consuming nothing (stub data)."""
        ...

    async def release(self, token: str) -> None:
        """Make a redeemed token usable again: the operation it confirmed was not signed."""
        ...


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SqlConfirmationStore:
    """Tokens on the server's database (SQLite or PostgreSQL); blocking calls run in threads."""

    def __init__(
        self,
        engine: sa.Engine,
        clock: Callable[[], float] = time.time,
        max_pending_per_key: int = DEFAULT_MAX_PENDING_PER_KEY,
    ) -> None:
        if max_pending_per_key < 1:
            raise ValueError("max_pending_per_key must be at least 1")
        self._engine = engine
        self._clock = clock
        self._max_pending = max_pending_per_key
        self._pruned_at = float("-inf")

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    async def issue(
        self, op_digest: str, api_key_id: str | None, summary: Mapping[str, Any], ttl: float = DEFAULT_TTL_SECONDS
    ) -> IssuedToken:
        token = secrets.token_urlsafe(32)
        now = self._now()
        expires = now + timedelta(seconds=ttl)
        row = {
            "token_hash": token_hash(token),
            "op_digest": op_digest,
            "api_key_id": api_key_id,
            "summary": dict(summary),
            "created_at": now,
            "expires_at": expires,
            "used_at": None,
        }
        prune = self._clock() - self._pruned_at >= PRUNE_EVERY_SECONDS
        if prune:
            self._pruned_at = self._clock()
        await self._run(self._insert, row, now - KEEP_EXPIRED if prune else None)
        return IssuedToken(token, expires.timestamp())

    def _insert(self, row: dict[str, Any], prune_before: datetime | None) -> None:
        c = confirmations.c
        mine = (c.api_key_id.is_not_distinct_from(row["api_key_id"]), c.used_at.is_(None))
        # this key's unused tokens past the newest ``max_pending``: the oldest, dropped for new ones
        surplus = (
            sa.select(c.token_hash)
            .where(*mine)
            .order_by(c.created_at.desc(), c.token_hash.desc())
            .offset(self._max_pending)
        )
        with self._engine.begin() as connection:
            connection.execute(confirmations.insert(), row)
            connection.execute(confirmations.delete().where(*mine, c.token_hash.in_(surplus)))
            if prune_before is not None:
                connection.execute(confirmations.delete().where(c.expires_at < prune_before))

    async def redeem(self, token: str, op_digest: str, api_key_id: str | None) -> Redemption:
        if not _plausible(token):
            return Redemption.UNKNOWN
        return await self._run(self._redeem, token_hash(token), op_digest, api_key_id, self._now())

    def _redeem(self, hashed: str, op_digest: str, api_key_id: str | None, now: datetime) -> Redemption:
        c = confirmations.c
        update = (
            confirmations.update()
            .where(
                c.token_hash == hashed,
                c.used_at.is_(None),
                c.expires_at > now,
                c.op_digest == op_digest,
                c.api_key_id.is_not_distinct_from(api_key_id),
            )
            .values(used_at=now)
        )
        with self._engine.begin() as connection:
            if connection.execute(update).rowcount == 1:
                return Redemption.OK
            why = _diagnose(connection, hashed, op_digest, api_key_id, now)
        return Redemption.REUSED if why is Redemption.OK else why  # lost a race that just ended

    async def check(self, token: str, op_digest: str, api_key_id: str | None) -> Redemption:
        if not _plausible(token):
            return Redemption.UNKNOWN
        return await self._run(self._check, token_hash(token), op_digest, api_key_id, self._now())

    def _check(self, hashed: str, op_digest: str, api_key_id: str | None, now: datetime) -> Redemption:
        with self._engine.connect() as connection:
            return _diagnose(connection, hashed, op_digest, api_key_id, now)

    async def release(self, token: str) -> None:
        await self._run(self._release, token_hash(token))

    def _release(self, hashed: str) -> None:
        with self._engine.begin() as connection:
            connection.execute(confirmations.update().where(confirmations.c.token_hash == hashed).values(used_at=None))

    async def _run(self, function: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(function, *args)
        except sa.exc.SQLAlchemyError as exc:
            raise StoreUnavailable(
                f"the confirmation store could not be reached ({type(exc).__name__}); nothing was signed"
            ) from None


def _plausible(token: Any) -> bool:
    return isinstance(token, str) and 0 < len(token) <= _MAX_TOKEN_LENGTH


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment  # SQLite hands back naive UTC


def _diagnose(
    connection: sa.Connection, hashed: str, op_digest: str, api_key_id: str | None, now: datetime
) -> Redemption:
    """Why a token does not (or would not) redeem; ``OK`` if it would."""
    row = connection.execute(sa.select(confirmations).where(confirmations.c.token_hash == hashed)).mappings().first()
    if row is None:
        return Redemption.UNKNOWN
    if row["api_key_id"] != api_key_id:
        return Redemption.OTHER_KEY
    if row["op_digest"] != op_digest:
        return Redemption.OTHER_OPERATION
    if row["used_at"] is not None:
        return Redemption.REUSED
    if _utc(row["expires_at"]) <= now:
        return Redemption.EXPIRED
    return Redemption.OK
