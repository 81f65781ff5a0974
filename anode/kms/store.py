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

The signing path's statements go straight to the DB-API driver as SQL text prepared once
(``anode/store/driver.py`` says why: SQLAlchemy Core costs ~50 µs of Python per statement): one
``SELECT`` reads the nonce, the paymaster signer, the challenge and the passkey together
(:meth:`KmsStore.lookup`), one transaction takes them and chains the record (:meth:`KmsStore.take`).
An account, once its key exists, never changes: it is remembered in the process. Nothing else
is cached: a signer's removal, expiry or rotation and a passkey's counter are read on every request.

On SQLite, concurrent signing transactions share one commit (:class:`_GroupCommit`): the one
writer at a time (the file's lock) pays the fsync and the lock once per group, not per request.
Each request's statements run in a savepoint of their own: one refused (a nonce, challenge or
counter taken already) is rolled back alone, and no answer leaves before the group's ``COMMIT``.
On PostgreSQL each request has its own transaction (row locks let them run side by side).
The tables are created by :func:`KmsStore.migrate` (``create_all`` on the KMS's own metadata, then
the version row); they live apart from the paymaster's migrations and may share its database.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import orjson
import sqlalchemy as sa
from eth_utils.address import to_checksum_address
from sqlalchemy.dialects import postgresql, sqlite

from anode.errors import StoreUnavailable
from anode.store.database import create_engine, write_lock
from anode.store.driver import Driver

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
_CHALLENGE = sa.select(challenges).where(challenges.c.challenge == sa.bindparam("id"))
_SIGNER = sa.select(signers).where(signers.c.address == sa.bindparam("id"))
_TAKE_CHALLENGE = (
    challenges.update()
    .where(challenges.c.challenge == sa.bindparam("id"), challenges.c.used_at.is_(None))
    .values(used_at=sa.bindparam("now"))
)


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


@dataclass(frozen=True, slots=True)
class Found:
    """What :meth:`KmsStore.lookup` read for one signing request, in one statement."""

    nonce_used: bool
    signer: AuthorizedSigner | None
    challenge: Challenge | None
    credential: Credential | None


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


class _Statements:
    """The signing path's statements as SQL text in the driver's parameter style (same tables and
    conditions as the SQLAlchemy statements above; the tests run both dialects)."""

    def __init__(self, driver: Driver) -> None:
        m = driver.mark
        self.lookup = (
            "SELECT n.created_at, s.address, s.name, s.permissions, s.expires_at, s.retires_at, s.replaced_by, "
            "c.challenge, c.purpose, c.account_id, c.user_op_hash, c.kms_nonce, c.expires_at, c.used_at, "
            "k.credential_id, k.account_id, k.public_key, k.sign_count "
            "FROM (SELECT 1 AS one) AS one "
            f"LEFT JOIN kms_nonces n ON n.paymaster = {m} AND n.nonce = {m} "
            f"LEFT JOIN kms_signers s ON s.address = {m} "
            f"LEFT JOIN kms_challenges c ON c.challenge = {m} "
            f"LEFT JOIN kms_credentials k ON k.credential_id = {m}"
        )
        self.insert_nonce = (
            f"INSERT INTO kms_nonces (paymaster, nonce, created_at) VALUES ({m}, {m}, {m}) "
            "ON CONFLICT DO NOTHING RETURNING created_at"
        )
        self.purge_nonces = f"DELETE FROM kms_nonces WHERE created_at < {m}"
        self.counter_up = f"UPDATE kms_credentials SET sign_count = {m} WHERE credential_id = {m} AND sign_count < {m}"
        self.counter_zero = f"UPDATE kms_credentials SET sign_count = 0 WHERE credential_id = {m} AND sign_count = 0"
        self.take_challenge = f"UPDATE kms_challenges SET used_at = {m} WHERE challenge = {m} AND used_at IS NULL"


T = TypeVar("T")


class _Job(Generic[T]):
    __slots__ = ("error", "event", "lead", "result", "work")

    def __init__(self, work: Callable[[Any], T]) -> None:
        self.work = work
        self.event = threading.Event()
        self.lead = False
        self.result: T | None = None
        self.error: BaseException | None = None


class _GroupCommit:
    """Leader and followers: the caller that finds no group being written writes every job queued
    so far (its own first) in one transaction, one savepoint per job, commits, answers them all,
    and hands the lead to the first job queued meanwhile. A job that raises is rolled back to its
    savepoint and gets its exception; a database error or a failed ``COMMIT`` fails the group."""

    def __init__(
        self, begin: Callable[[], contextlib.AbstractContextManager[Any]], fatal: tuple[type[BaseException], ...]
    ) -> None:
        self._begin = begin
        #: the database's errors: the transaction may be broken, so they fail the whole group
        self._fatal = fatal
        self._lock = threading.Lock()
        self._queue: list[_Job[Any]] = []
        self._writing = False

    def run(self, work: Callable[[Any], T]) -> T:
        job: _Job[T] = _Job(work)
        with self._lock:
            self._queue.append(job)
            leader = not self._writing
            self._writing = True
        if not leader:
            job.event.wait()
        if not job.event.is_set() or job.lead:
            self._write()
        if job.error is not None:
            raise job.error
        return job.result  # type: ignore[return-value]

    def _write(self) -> None:
        with self._lock:
            group, self._queue = self._queue, []
        try:
            with self._begin() as cursor:
                for job in group:
                    cursor.execute("SAVEPOINT kms_job")
                    try:
                        job.result = job.work(cursor)
                    except self._fatal:
                        raise
                    except Exception as exc:  # this job's own refusal or fault: the others go on
                        cursor.execute("ROLLBACK TO SAVEPOINT kms_job")
                        job.error = exc
                    cursor.execute("RELEASE SAVEPOINT kms_job")
        except BaseException as exc:
            for job in group:  # each its own exception: they are raised in as many threads
                job.result = None
                job.error = StoreUnavailable(exc.message, code=exc.code) if isinstance(exc, StoreUnavailable) else exc
        finally:
            with self._lock:
                if self._queue:
                    self._queue[0].lead = True
                    self._queue[0].event.set()
                else:
                    self._writing = False
            for job in group:
                if not job.lead:
                    job.event.set()
                job.lead = False


def _json(value: Any) -> Any:
    """A JSON column as read by the driver: text on SQLite, already decoded by psycopg."""
    return orjson.loads(value) if isinstance(value, str | bytes) else value


class KmsStore:
    def __init__(self, url: str, *, nonce_retention_seconds: int = 600) -> None:
        self.engine = create_engine(url)
        self.driver = Driver(self.engine.dialect)
        self._sql = _Statements(self.driver)
        self._dbapi_errors: tuple[type[BaseException], ...] = (self.engine.dialect.loaded_dbapi.Error,)
        self._errors = (*self._dbapi_errors, sa.exc.SQLAlchemyError)
        self._retention = nonce_retention_seconds
        self._purged = 0.0
        #: completed accounts (immutable once their key exists), by id
        self._accounts: dict[str, Account] = {}
        self._group = (
            _GroupCommit(functools.partial(self.cursor, begin=True), self._dbapi_errors) if self.driver.sqlite else None
        )

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

    def transact(self, work: Callable[[Any], T]) -> T:
        """``work(cursor)`` in a write transaction, committed before this returns (on SQLite in one
        group with concurrent callers'); what ``work`` raises is rolled back and re-raised."""
        if self._group is not None:
            return self._group.run(work)
        with self.cursor() as cursor:
            return work(cursor)

    @contextlib.contextmanager
    def cursor(self, *, begin: bool = False) -> Iterator[Any]:
        """A DB-API cursor in a write transaction (under the SQLite writer lock), committed when
        the block ends, rolled back when it raises; a database error is ``StoreUnavailable``.
        ``begin``: open the transaction now (SQLite's driver would only before the first write)."""
        try:
            with write_lock(self.engine):
                raw = self.engine.raw_connection()
                try:
                    cursor = raw.cursor()
                    if begin:
                        cursor.execute("BEGIN")
                    yield cursor
                    raw.commit()
                except BaseException:
                    with contextlib.suppress(*self._dbapi_errors):
                        raw.rollback()
                    raise
                finally:
                    raw.close()
        except self._errors as exc:
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
        """The account, once its key exists (a reserved row has no owner yet). A completed row never
        changes (nothing updates or deletes it), so it is remembered; a missing one is not."""
        known = self._accounts.get(account_id)
        if known is not None:
            return known
        with self.read() as connection:
            row = connection.execute(_ACCOUNT, {"id": account_id}).one_or_none()
        if row is None or not row.owner:
            return None
        if len(self._accounts) >= 65_536:
            self._accounts.clear()
        account = self._accounts[account_id] = Account(row.account_id, row.key_handle, row.owner)
        return account

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

    def lookup(self, paymaster: str, nonce: str, challenge: str, credential_id: str) -> Found:
        """Whether the paymaster's nonce was used, the paymaster's signer, the challenge and the
        passkey, read together (one statement, no transaction: :meth:`take` decides)."""
        params = (paymaster.lower(), nonce.lower(), paymaster.lower(), challenge, credential_id)
        try:
            raw = self.engine.raw_connection()
            try:
                cursor = raw.cursor()
                cursor.execute(self._sql.lookup, params)
                row: Any = cursor.fetchone()
            finally:
                raw.close()
        except self._errors as exc:
            raise StoreUnavailable(f"the KMS store failed ({type(exc).__name__})") from None
        signer = None
        if row[1] is not None:
            signer = AuthorizedSigner(checksum(row[1]), row[2], tuple(_json(row[3])), row[4], row[5], row[6])
        return Found(
            nonce_used=row[0] is not None,
            signer=signer,
            challenge=None if row[7] is None else Challenge(*row[7:14]),
            credential=None if row[14] is None else Credential(row[14], row[15], bytes(row[16]), int(row[17])),
        )

    def take(
        self,
        *,
        paymaster: str,
        nonce: str,
        challenge: str,
        credential_id: str,
        sign_count: int,
        then: Callable[[Any], object],
    ) -> None:
        """Take the paymaster's nonce, the challenge and the passkey's counter, and run ``then`` (the
        audit record, on the transaction's DB-API cursor), all in one transaction: all of them or none.

        The counter must grow (an authenticator without a counter reports 0 each time and is held
        by the challenge alone). :class:`Taken` says what was used already.
        """
        sql = self._sql

        def work(cursor: Any) -> None:
            if not self._insert_nonce(cursor, paymaster, nonce):
                raise Taken("nonce")
            if sign_count:
                cursor.execute(sql.counter_up, (sign_count, credential_id, sign_count))
            else:
                cursor.execute(sql.counter_zero, (credential_id,))
            if cursor.rowcount != 1:
                raise Taken("counter")
            cursor.execute(sql.take_challenge, (int(time.time()), challenge))
            if cursor.rowcount != 1:
                raise Taken("challenge")
            then(cursor)

        self.transact(work)

    # -- paymaster nonces -----------------------------------------------------------------------

    def burn_nonce(self, cursor: Any, paymaster: str, nonce: str) -> None:
        """Record the nonce as used (a refused request's too), if it is not already (on the
        DB-API cursor of :meth:`cursor`)."""
        self._insert_nonce(cursor, paymaster, nonce)

    def _insert_nonce(self, cursor: Any, paymaster: str, nonce: str) -> bool:
        """Set-if-absent: ``True`` for the first (paymaster, nonce); old nonces go after the retention."""
        now = int(time.time())
        # a row back means it was inserted (psycopg reports no rowcount for ON CONFLICT DO NOTHING)
        cursor.execute(self._sql.insert_nonce, (paymaster.lower(), nonce.lower(), now))
        added = cursor.fetchone() is not None
        if added and now - self._purged > 60:
            self._purged = now
            cursor.execute(self._sql.purge_nonces, (now - self._retention,))
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
