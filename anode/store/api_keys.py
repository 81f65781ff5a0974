"""API keys kept in the database: project keys sponsor, admin keys manage.

Only the SHA-256 digest of a key is stored; the plaintext is shown once, when the key is made
(``anode keys create [--admin]``). Keys listed in the config file (``auth.api_keys``,
``auth.admin_keys``) work alongside these and are never written to the database.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import sqlalchemy as sa

from anode.errors import StoreUnavailable
from anode.store.tables import metadata


class KeyKind(StrEnum):
    PROJECT = "project"
    ADMIN = "admin"


api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("key_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    name: str
    kind: KeyKind
    created_at: datetime
    revoked_at: datetime | None = None


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(key: str) -> str:
    """The id a key is known by in the ledger and logs: a digest prefix, not the key."""
    return digest(key)[:16]


KEY_PREFIX = "anode_"


class SqlApiKeys:
    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    def create(self, name: str, kind: KeyKind) -> tuple[str, KeyRecord]:
        """A new key: returns the plaintext (shown once) and its record."""
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        record = KeyRecord(key_id(plaintext), name, kind, datetime.now(UTC))
        with self._engine.begin() as connection:
            connection.execute(
                api_keys.insert().values(
                    id=record.id, name=name, kind=kind.value, key_sha256=digest(plaintext), created_at=record.created_at
                )
            )
        return plaintext, record

    def find(self, key_sha256: str) -> KeyRecord | None:
        query = sa.select(api_keys).where(api_keys.c.key_sha256 == key_sha256, api_keys.c.revoked_at.is_(None))
        try:
            with self._engine.connect() as connection:
                row = connection.execute(query).mappings().first()
        except sa.exc.SQLAlchemyError as exc:
            raise StoreUnavailable(f"API keys could not be read ({type(exc).__name__})") from None
        return None if row is None else _record(row)

    def digest_of(self, ident: str) -> tuple[KeyKind, str] | None:
        """The kind and SHA-256 digest (hex) of the live key ``ident``, or ``None``."""
        c = api_keys.c
        query = sa.select(c.kind, c.key_sha256).where(c.id == ident, c.revoked_at.is_(None))
        try:
            with self._engine.connect() as connection:
                row = connection.execute(query).first()
        except sa.exc.SQLAlchemyError as exc:
            raise StoreUnavailable(f"API keys could not be read ({type(exc).__name__})") from None
        return None if row is None else (KeyKind(row[0]), row[1])

    def list(self) -> list[KeyRecord]:
        with self._engine.connect() as connection:
            rows = connection.execute(sa.select(api_keys).order_by(api_keys.c.created_at)).mappings().all()
        return [_record(row) for row in rows]

    def revoke(self, ident: str) -> bool:
        with self._engine.begin() as connection:
            result = connection.execute(
                api_keys.update()
                .where(api_keys.c.id == ident, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
        return result.rowcount == 1


def _record(row: sa.RowMapping) -> KeyRecord:
    return KeyRecord(row["id"], row["name"], KeyKind(row["kind"]), row["created_at"], row["revoked_at"])
