"""The KMS's own tables (SQLite by default, PostgreSQL when configured), all named ``kms_*``.

    kms_accounts         accountId → the custody key's handle and owner address
    kms_credentials      passkeys: credential id, COSE public key, sign counter, account
    kms_challenges       single-use WebAuthn challenges (registration, or bound to a userOpHash)
    kms_nonces           paymaster nonces, set-if-absent per paymaster, kept ≥ nonce_retention
    kms_signers          authorized paymaster signers: name, permissions, expiry, rotation
    kms_audit_log/head   the hash-chained decision log (``audit.py``)
    kms_schema           the schema version

Every single-use thing is taken by one conditional statement whose row count says who won, so
concurrent requests (threads, processes, replicas on one PostgreSQL) agree: a nonce is an
``INSERT … ON CONFLICT DO NOTHING`` on its primary key, a challenge an ``UPDATE … WHERE used_at
IS NULL``, a sign counter an ``UPDATE … WHERE sign_count < new``. A signed request takes all three
and writes its audit record in one transaction (:meth:`KmsStore.take`); a refused request's
nonce is recorded with its refusal. Nothing taken is ever given back.
The tables are created by :func:`KmsStore.migrate` (``create_all`` on the KMS's own metadata, then
the version row); they live apart from the paymaster's migrations and may share its database.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from eth_utils.address import to_checksum_address
from sqlalchemy.dialects import postgresql, sqlite

from anode.errors import StoreUnavailable
from anode.store.database import create_engine, write_lock

SCHEMA_VERSION = 1
metadata = sa.MetaData()
_BIG = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TIME = sa.DateTime(timezone=True)

accounts = sa.Table(
    "kms_accounts",
    metadata,
    sa.Column("account_id", sa.String(128), primary_key=True),
    sa.Column("key_handle", sa.String(128), nullable=False),
    sa.Column("owner", sa.String(42), nullable=False),
    sa.Column("backend", sa.String(32), nullable=False),
    sa.Column("created_at", _TIME, nullable=False),
)
credentials = sa.Table(
    "kms_credentials",
    metadata,
    sa.Column("credential_id", sa.String(1400), primary_key=True),  # base64url
    sa.Column("account_id", sa.String(128), nullable=False, index=True),
    sa.Column("public_key", sa.LargeBinary(), nullable=False),  # COSE
    sa.Column("sign_count", _BIG, nullable=False),
    sa.Column("created_at", _TIME, nullable=False),
)
challenges = sa.Table(
    "kms_challenges",
    metadata,
    sa.Column("challenge", sa.String(64), primary_key=True),  # hex
    sa.Column("purpose", sa.String(16), nullable=False),  # register | authenticate
    sa.Column("account_id", sa.String(128), nullable=False),
    sa.Column("user_op_hash", sa.String(66), nullable=True),
    sa.Column("kms_nonce", sa.String(66), nullable=True),
    sa.Column("expires_at", _BIG, nullable=False),  # unix seconds
    sa.Column("used_at", _BIG, nullable=True),
)
nonces = sa.Table(
    "kms_nonces",
    metadata,
    sa.Column("paymaster", sa.String(42), primary_key=True),
    sa.Column("nonce", sa.String(66), primary_key=True),
    sa.Column("created_at", _BIG, nullable=False, index=True),
)
signers = sa.Table(
    "kms_signers",
    metadata,
    sa.Column("address", sa.String(42), primary_key=True),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("permissions", sa.JSON(), nullable=False),
    sa.Column("expires_at", _BIG, nullable=True),
    sa.Column("retires_at", _BIG, nullable=True),
    sa.Column("replaced_by", sa.String(42), nullable=True),
    sa.Column("created_at", _BIG, nullable=False),
)
schema = sa.Table(
    "kms_schema",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("version", sa.Integer(), nullable=False),
)


# the request path's statements, built once (a statement built per call costs more than running it)
_ACCOUNT = sa.select(accounts).where(accounts.c.account_id == sa.bindparam("id"))
_CREDENTIAL = sa.select(credentials).where(credentials.c.credential_id == sa.bindparam("id"))
_CHALLENGE = sa.select(challenges).where(challenges.c.challenge == sa.bindparam("id"))
_SIGNER = sa.select(signers).where(signers.c.address == sa.bindparam("id"))
_NONCE = sa.select(nonces.c.created_at).where(
    nonces.c.paymaster == sa.bindparam("p"), nonces.c.nonce == sa.bindparam("n")
)
_COUNTER_UP = (
    credentials.update()
    .where(credentials.c.credential_id == sa.bindparam("id"), credentials.c.sign_count < sa.bindparam("count"))
    .values(sign_count=sa.bindparam("count"))
)
_COUNTER_ZERO = credentials.update().where(
    credentials.c.credential_id == sa.bindparam("id"), credentials.c.sign_count == 0
)
_TAKE_CHALLENGE = (
    challenges.update()
    .where(challenges.c.challenge == sa.bindparam("id"), challenges.c.used_at.is_(None))
    .values(used_at=sa.bindparam("now"))
)
_INSERT_NONCE = {
    dialect.__name__.rsplit(".", 1)[-1]: dialect.insert(nonces).on_conflict_do_nothing().returning(nonces.c.created_at)
    for dialect in (postgresql, sqlite)
}


@functools.lru_cache(maxsize=4096)
def checksum(address: str | bytes) -> str:
    """``to_checksum_address``, remembered: the same few addresses come on every request."""
    return to_checksum_address(address)


@dataclass(frozen=True, slots=True)
class Account:
    account_id: str
    key_handle: str
    owner: str


@dataclass(frozen=True, slots=True)
class Credential:
    credential_id: str
    account_id: str
    public_key: bytes
    sign_count: int


@dataclass(frozen=True, slots=True)
class Challenge:
    challenge: str
    purpose: str
    account_id: str
    user_op_hash: str | None
    kms_nonce: str | None
    expires_at: int
    used_at: int | None


@dataclass(frozen=True, slots=True)
class AuthorizedSigner:
    address: str
    name: str
    permissions: tuple[str, ...]
    expires_at: int | None
    retires_at: int | None
    replaced_by: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "name": self.name,
            "permissions": list(self.permissions),
            "expiresAt": self.expires_at,
            "retiresAt": self.retires_at,
            "replacedBy": self.replaced_by,
        }


class Taken(Exception):
    """What was used already: ``"nonce"``, ``"counter"``, ``"challenge"`` or ``"credential"``."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def _signer(row: Any) -> AuthorizedSigner:
    return AuthorizedSigner(
        checksum(row.address),
        row.name,
        tuple(row.permissions),
        row.expires_at,
        row.retires_at,
        row.replaced_by,
    )


class KmsStore:
    def __init__(self, url: str, *, nonce_retention_seconds: int = 600) -> None:
        self.engine = create_engine(url)
        self._retention = nonce_retention_seconds
        self._purged = 0.0

    @contextlib.contextmanager
    def write(self) -> Iterator[sa.Connection]:
        """A write transaction (under the SQLite writer lock); a database error is ``StoreUnavailable``."""
        try:
            with write_lock(self.engine), self.engine.begin() as connection:
                yield connection
        except sa.exc.IntegrityError:
            raise
        except sa.exc.SQLAlchemyError as exc:
            raise StoreUnavailable(f"the KMS store failed ({type(exc).__name__})") from None

    def read(self) -> sa.Connection:
        try:
            return self.engine.connect()
        except sa.exc.SQLAlchemyError as exc:
            raise StoreUnavailable(f"the KMS store failed ({type(exc).__name__})") from None

    def migrate(self) -> None:
        from anode.kms.audit import create_head

        with write_lock(self.engine), self.engine.begin() as connection:
            metadata.create_all(connection)
            if connection.execute(sa.select(schema.c.version)).scalar_one_or_none() is None:
                connection.execute(schema.insert().values(id=1, version=SCHEMA_VERSION))
            create_head(connection)

    def ping(self) -> str | None:
        try:
            with self.engine.connect() as connection:
                connection.execute(sa.select(schema.c.version)).scalar_one()
        except sa.exc.SQLAlchemyError as exc:
            return f"store: {type(exc).__name__}"
        return None

    # -- accounts and passkeys ------------------------------------------------------------------

    def account(self, account_id: str) -> Account | None:
        """The account, once its key exists (a reserved row has no owner yet)."""
        with self.read() as connection:
            row = connection.execute(_ACCOUNT, {"id": account_id}).one_or_none()
        return None if row is None or not row.owner else Account(row.account_id, row.key_handle, row.owner)

    def reserve_account(self, account_id: str, backend: str) -> bool:
        """Claim the right to create ``account_id``'s key: ``True`` for exactly one caller, across
        processes and replicas (set-if-absent on the primary key)."""
        insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        values = {"account_id": account_id, "key_handle": "", "owner": "", "backend": backend,
                  "created_at": datetime.now(UTC)}  # fmt: skip
        statement = insert(accounts).values(**values).on_conflict_do_nothing().returning(accounts.c.account_id)
        with self.write() as connection:
            return connection.execute(statement).first() is not None

    def complete_account(self, account: Account) -> None:
        with self.write() as connection:
            connection.execute(
                accounts.update()
                .where(accounts.c.account_id == account.account_id)
                .values(key_handle=account.key_handle, owner=account.owner)
            )

    def release_account(self, account_id: str) -> None:
        """Give up a reservation whose key could not be made (nothing else refers to it)."""
        with self.write() as connection:
            connection.execute(accounts.delete().where(accounts.c.account_id == account_id, accounts.c.owner == ""))

    def credentials_of(self, account_id: str) -> list[Credential]:
        with self.read() as connection:
            rows = connection.execute(sa.select(credentials).where(credentials.c.account_id == account_id)).all()
        return [Credential(r.credential_id, r.account_id, r.public_key, int(r.sign_count)) for r in rows]

    def credential(self, credential_id: str) -> Credential | None:
        with self.read() as connection:
            row = connection.execute(_CREDENTIAL, {"id": credential_id}).one_or_none()
        return (
            None if row is None else Credential(row.credential_id, row.account_id, row.public_key, int(row.sign_count))
        )

    def add_challenge(self, challenge: Challenge) -> None:
        with self.write() as connection:
            connection.execute(challenges.insert().values(**{f: getattr(challenge, f) for f in Challenge.__slots__}))
            # expired challenges are of no use to anyone
            connection.execute(challenges.delete().where(challenges.c.expires_at < int(time.time()) - 3600))

    def challenge(self, challenge: str) -> Challenge | None:
        with self.read() as connection:
            row = connection.execute(_CHALLENGE, {"id": challenge}).one_or_none()
        return None if row is None else Challenge(*(getattr(row, f) for f in Challenge.__slots__))

    def register(self, challenge: str, credential: Credential) -> None:
        """Take the registration challenge and store the passkey, together. :class:`Taken`:
        ``"challenge"`` used already, ``"credential"`` registered already."""
        try:
            with self.write() as connection:
                taken = connection.execute(_TAKE_CHALLENGE, {"id": challenge, "now": int(time.time())}).rowcount
                if taken != 1:
                    raise Taken("challenge")
                connection.execute(
                    credentials.insert().values(
                        credential_id=credential.credential_id,
                        account_id=credential.account_id,
                        public_key=credential.public_key,
                        sign_count=credential.sign_count,
                        created_at=datetime.now(UTC),
                    )
                )
        except sa.exc.IntegrityError:
            raise Taken("credential") from None

    def take(
        self,
        *,
        paymaster: str,
        nonce: str,
        challenge: str,
        credential_id: str,
        sign_count: int,
        then: Callable[[sa.Connection], object],
    ) -> None:
        """Take the paymaster's nonce, the challenge and the passkey's counter, and run ``then`` (the
        audit record), all in one transaction: all of them or none.

        The counter must grow (an authenticator without a counter reports 0 each time and is held
        by the challenge alone). :class:`Taken` says what was used already.
        """
        with self.write() as connection:
            if not self._insert_nonce(connection, paymaster, nonce):
                raise Taken("nonce")
            counter = connection.execute(
                _COUNTER_UP if sign_count else _COUNTER_ZERO, {"id": credential_id, "count": sign_count}
            ).rowcount
            if counter != 1:
                raise Taken("counter")
            taken = connection.execute(_TAKE_CHALLENGE, {"id": challenge, "now": int(time.time())}).rowcount
            if taken != 1:
                raise Taken("challenge")
            then(connection)

    # -- paymaster nonces -----------------------------------------------------------------------

    def nonce_used(self, paymaster: str, nonce: str) -> bool:
        with self.read() as connection:
            found = connection.execute(_NONCE, {"p": paymaster.lower(), "n": nonce.lower()}).first()
        return found is not None

    def burn_nonce(self, connection: sa.Connection, paymaster: str, nonce: str) -> None:
        """Record the nonce as used (a refused request's too), if it is not already."""
        self._insert_nonce(connection, paymaster, nonce)

    def _insert_nonce(self, connection: sa.Connection, paymaster: str, nonce: str) -> bool:
        """Set-if-absent: ``True`` for the first (paymaster, nonce); old nonces go after the retention."""
        now = int(time.time())
        values = {"paymaster": paymaster.lower(), "nonce": nonce.lower(), "created_at": now}
        # a row back means it was inserted (psycopg reports no rowcount for ON CONFLICT DO NOTHING)
        added = connection.execute(_INSERT_NONCE[connection.dialect.name], values).first() is not None
        if added and now - self._purged > 60:
            self._purged = now
            connection.execute(nonces.delete().where(nonces.c.created_at < now - self._retention))
        return added

    # -- authorized signers ---------------------------------------------------------------------

    def signer(self, address: str) -> AuthorizedSigner | None:
        with self.read() as connection:
            row = connection.execute(_SIGNER, {"id": address.lower()}).one_or_none()
        return None if row is None else _signer(row)

    def signers(self) -> list[AuthorizedSigner]:
        with self.read() as connection:
            return [_signer(row) for row in connection.execute(sa.select(signers).order_by(signers.c.address))]

    def put_signer(self, connection: sa.Connection, signer: AuthorizedSigner) -> None:
        values = {
            "name": signer.name,
            "permissions": list(signer.permissions),
            "expires_at": signer.expires_at,
            "retires_at": signer.retires_at,
            "replaced_by": signer.replaced_by,
        }
        updated = connection.execute(
            signers.update().where(signers.c.address == signer.address.lower()).values(**values)
        ).rowcount
        if not updated:
            connection.execute(
                signers.insert().values(address=signer.address.lower(), created_at=int(time.time()), **values)
            )

    def remove_signer(self, connection: sa.Connection, address: str) -> bool:
        return bool(connection.execute(signers.delete().where(signers.c.address == address.lower())).rowcount)

    def close(self) -> None:
        self.engine.dispose()
