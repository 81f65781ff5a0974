"""The sponsorship ledger on the real databases: the Alembic schema, exact uint256 values, group
commit under concurrency, filters, and failing closed when the database is gone.

PostgreSQL tests run against the server at ``PGTEST_ADMIN_URL`` (default: trust-auth ``postgres``
on 127.0.0.1:5432): each test creates a database with a random name and drops it afterwards. They
are skipped, with that reason, when no server answers there. SQLite runs on a temporary file.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from anode.api.app import create_app
from anode.config import validate_settings
from anode.errors import StoreUnavailable
from anode.store.database import alembic_config, create_engine, upgrade
from anode.store.ledger import SponsorshipRecord, SqlLedger
from anode.store.tables import metadata
from anode.wiring import build
from tests.integration.test_api_errors import API_KEY, CHAIN_ID, EP07, settings_tree, user_op
from tests.support.postgres import ADMIN_URL, fresh_pg_database

UINT256_MAX = 2**256 - 1
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


# -- databases --------------------------------------------------------------------------------


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database (``postgresql://`` form, as users write it)."""
    with fresh_pg_database("anode_test") as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    return url


@pytest.fixture
async def ledger(database_url: str) -> AsyncIterator[SqlLedger]:
    engine = create_engine(database_url)
    upgrade(engine)
    ledger = SqlLedger(engine)
    yield ledger
    await ledger.aclose()


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port that refuses connections: bound (nobody else gets it), never listened on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def record(
    user_op_hash: str,
    *,
    sender: str = "0x" + "11" * 20,
    created_at: datetime = T0,
    nonce: int = 1,
    cost: int = 10**18,
) -> SponsorshipRecord:
    return SponsorshipRecord(
        created_at=created_at,
        user_op_hash=user_op_hash,
        chain_id=CHAIN_ID,
        entry_point=EP07,
        paymaster="0x" + "07" * 20,
        sender=sender,
        nonce=nonce,
        max_gas_cost_wei=cost,
        valid_until=2**48 - 1,
        valid_after=0,
        signer="0x" + "22" * 20,
        api_key_id="abcdef0123456789",
        method="pm_getPaymasterData",
    )


def op_hash(index: int) -> str:
    return "0x" + index.to_bytes(32, "big").hex()


# -- schema -----------------------------------------------------------------------------------


def test_migration_creates_the_schema_on_postgresql(pg_url: str) -> None:
    engine = create_engine(pg_url)
    try:
        upgrade(engine)
        upgrade(engine)  # idempotent: a restart does not fail or duplicate anything
        inspector = sa.inspect(engine)
        assert "sponsorships" in inspector.get_table_names()
        columns = {column["name"]: column for column in inspector.get_columns("sponsorships")}
        assert set(columns) == {column.name for column in metadata.tables["sponsorships"].columns}
        for name in ("nonce", "max_gas_cost_wei"):
            kind = columns[name]["type"]
            assert isinstance(kind, sa.Numeric)
            assert (kind.precision, kind.scale) == (78, 0), name
        assert columns["created_at"]["type"].timezone is True
        # the key (open servers have none) and the on-chain outcome (unknown until the follower reads it)
        optional = {"api_key_id", "tx_hash", "block_number", "success", "actual_gas_cost_wei", "actual_gas_used"}
        optional |= {"token_amount_paid", "sent_at"}  # ERC-20 mode's token paid; when the relay sent it
        optional |= {"token", "exchange_rate", "max_token_amount"}  # ERC-20 mode's terms (null in verifying mode)
        assert {name for name, column in columns.items() if column["nullable"]} == optional
        indexes = {index["name"] for index in inspector.get_indexes("sponsorships")}
        assert indexes == {
            "ix_sponsorships_sender_created",
            "ix_sponsorships_created",
            "ix_sponsorships_user_op_hash",
            "ix_sponsorships_chain_status",
            "ix_sponsorships_chain_block",
        }
        with engine.connect() as connection:
            applied = set(connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalars())
            heads = set(ScriptDirectory.from_config(alembic_config(str(engine.url))).get_heads())
            assert applied == heads and len(heads) == 1  # one line of history, at its head
    finally:
        engine.dispose()


def test_migration_matches_the_table_definitions(database_url: str) -> None:
    """The schema Alembic builds is the one ``tables.py`` describes: no drift between the two."""
    engine = create_engine(database_url)
    try:
        upgrade(engine)
        with engine.connect() as connection:
            diffs = compare_metadata(MigrationContext.configure(connection), metadata)
        assert diffs == []
    finally:
        engine.dispose()


# -- writing and reading ----------------------------------------------------------------------


async def test_concurrent_records_are_each_written_exactly_once(ledger: SqlLedger, database_url: str) -> None:
    await asyncio.gather(*(ledger.record(record(op_hash(i), nonce=i)) for i in range(200)))
    # committed: a separate engine sees every row, once
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT user_op_hash, nonce FROM sponsorships")).all()
    finally:
        engine.dispose()
    assert len(rows) == 200
    assert sorted(row[0] for row in rows) == sorted(op_hash(i) for i in range(200))
    assert sorted(int(row[1]) for row in rows) == list(range(200))


async def test_the_writer_stores_exactly_what_sqlalchemy_would(ledger: SqlLedger, database_url: str) -> None:
    """The ledger writes through the DB-API (``store/driver.py``); the stored values, read back
    raw, are the ones SQLAlchemy's own types would have stored, and the audit chain verifies."""
    from anode.store import audit
    from anode.store.ledger import _COLUMNS

    berlin = timezone(timedelta(hours=1))
    entry = record(op_hash(1), created_at=datetime(2030, 1, 1, 13, 0, 0, 123456, tzinfo=berlin), nonce=2**255 + 3)
    await ledger.record(entry)
    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            values = {name: getattr(entry, name) for name in _COLUMNS}
            values["created_at"] = entry.created_at.astimezone(UTC)  # SQLAlchemy drops offsets on SQLite
            values["user_op_hash"] = op_hash(2)
            connection.execute(metadata.tables["sponsorships"].insert(), [values])
            columns = ", ".join(name for name in _COLUMNS if name != "user_op_hash")
            raw = connection.execute(sa.text(f"SELECT {columns} FROM sponsorships ORDER BY id")).all()
        assert len(raw) == 2
        assert tuple(raw[0]) == tuple(raw[1])
        (row,) = await ledger.find(sender=entry.sender, limit=1, until=T0 + timedelta(hours=1))
        assert row["created_at"] == "2030-01-01T12:00:00.123456+00:00"
        assert row["nonce"] == 2**255 + 3
        checked = audit.verify(engine)
        assert checked.ok and checked.records == 1, checked.message
        (chained,) = audit.records(engine, kind=audit.SIGNATURE)
        assert chained["user_op_hash"] == op_hash(1) and chained["detail"]["nonce"] == str(2**255 + 3)
    finally:
        engine.dispose()


async def test_a_connection_lost_between_batches_is_replaced(pg_url: str) -> None:
    """The writer keeps its connection; when the server drops it, the next batch reconnects."""
    engine = create_engine(pg_url)
    upgrade(engine)
    ledger = SqlLedger(engine)
    try:
        await ledger.record(record(op_hash(1)))
        admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            killed = connection.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": sa.make_url(pg_url).database},
            ).scalar()
        admin.dispose()
        assert killed >= 1
        await ledger.record(record(op_hash(2)))
        assert sorted(row["user_op_hash"] for row in await ledger.find()) == [op_hash(1), op_hash(2)]
    finally:
        await ledger.aclose()


@pytest.mark.parametrize("value", [0, 1, 2**63, 2**64 + 1, 2**200 + 12345, 10**77 + 7, UINT256_MAX])
async def test_uint256_values_round_trip_exactly(ledger: SqlLedger, value: int) -> None:
    await ledger.record(record(op_hash(1), nonce=value, cost=UINT256_MAX - value))
    (row,) = await ledger.find()
    assert row["nonce"] == value
    assert row["max_gas_cost_wei"] == UINT256_MAX - value
    assert type(row["nonce"]) is int


async def test_find_filters_by_sender_and_time_newest_first(ledger: SqlLedger) -> None:
    alice, bob = "0x" + "a1" * 20, "0x" + "b2" * 20
    for index, (sender, minutes) in enumerate([(alice, 0), (bob, 10), (alice, 20), (alice, 30)]):
        await ledger.record(record(op_hash(index), sender=sender, created_at=T0 + timedelta(minutes=minutes)))

    def hashes(rows: list[dict[str, Any]]) -> list[str]:
        return [row["user_op_hash"] for row in rows]

    assert hashes(await ledger.find()) == [op_hash(3), op_hash(2), op_hash(1), op_hash(0)]
    assert hashes(await ledger.find(sender=alice)) == [op_hash(3), op_hash(2), op_hash(0)]
    assert hashes(await ledger.find(sender=bob)) == [op_hash(1)]
    assert hashes(await ledger.find(since=T0 + timedelta(minutes=10))) == [op_hash(3), op_hash(2), op_hash(1)]
    assert hashes(await ledger.find(until=T0 + timedelta(minutes=10))) == [op_hash(0)]
    assert hashes(await ledger.find(sender=alice, since=T0 + timedelta(minutes=5), limit=1)) == [op_hash(3)]
    row = (await ledger.find(limit=1))[0]
    assert datetime.fromisoformat(row["created_at"]) == T0 + timedelta(minutes=30)


async def test_find_filters_by_nonce_past_a_busy_senders_newer_rows(ledger: SqlLedger) -> None:
    """One account's operation by (sender, nonce), however many newer rows the sender has."""
    alice = "0x" + "a1" * 20
    for index in range(5):
        await ledger.record(record(op_hash(index), sender=alice, nonce=index, created_at=T0 + timedelta(minutes=index)))
    assert [row["user_op_hash"] for row in await ledger.find(sender=alice, nonce=0, limit=2)] == [op_hash(0)]
    assert await ledger.find(sender=alice, nonce=7) == []


async def test_time_filters_honour_utc_offsets(ledger: SqlLedger) -> None:
    """``since=2030-01-01T14:00+02:00`` is noon UTC: a row written at 12:30 UTC is after it."""
    await ledger.record(record(op_hash(1), created_at=T0 + timedelta(minutes=30)))
    plus_two = timezone(timedelta(hours=2))
    assert len(await ledger.find(since=datetime(2030, 1, 1, 14, 0, tzinfo=plus_two))) == 1
    assert len(await ledger.find(until=datetime(2030, 1, 1, 14, 15, tzinfo=plus_two))) == 0


# -- failing closed ---------------------------------------------------------------------------


async def test_unreachable_database_fails_closed(refused_port: int) -> None:
    ledger = SqlLedger(create_engine(f"postgresql://postgres@127.0.0.1:{refused_port}/anode"))
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await ledger.record(record(op_hash(1)))
        assert "nothing was signed" in caught.value.message
        with pytest.raises(StoreUnavailable):
            await ledger.find()
    finally:
        await ledger.aclose()


async def test_dropped_database_fails_closed(pg_url: str) -> None:
    engine = create_engine(pg_url)
    upgrade(engine)
    ledger = SqlLedger(engine)
    try:
        await ledger.record(record(op_hash(1)))
        name = sa.make_url(pg_url).database
        admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
        with pytest.raises(StoreUnavailable):
            await ledger.record(record(op_hash(2)))
    finally:
        await ledger.aclose()


async def test_one_unwritable_row_does_not_fail_the_requests_committed_with_it(pg_url: str) -> None:
    """Group commit must not let one bad row (here a value past NUMERIC(78)) refuse its neighbours."""
    engine = create_engine(pg_url)
    upgrade(engine)
    ledger = SqlLedger(engine)
    try:
        results = await asyncio.gather(
            ledger.record(record(op_hash(1))),
            ledger.record(record(op_hash(2), cost=2**300)),
            ledger.record(record(op_hash(3))),
            return_exceptions=True,
        )
        assert isinstance(results[1], StoreUnavailable)
        assert results[0] is None, results[0]
        assert results[2] is None, results[2]
        assert sorted(row["user_op_hash"] for row in await ledger.find()) == [op_hash(1), op_hash(3)]
    finally:
        await ledger.aclose()


# -- failing closed, as a client sees it ------------------------------------------------------


@pytest.fixture
def dead_node(refused_port: int) -> str:
    return f"http://127.0.0.1:{refused_port}"


async def _client(database_url: str, tmp_path: Path, dead_node: str, *, migrate: bool) -> tuple[Any, httpx.AsyncClient]:
    tree = settings_tree(tmp_path, dead_node) | {"database_url": database_url}
    node = build(validate_settings(tree), migrate=migrate)
    app = create_app(node, manage_lifecycle=False)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://anode.test",
        headers={"authorization": f"Bearer {API_KEY}"},
    )
    return node, client


async def _assert_refuses_to_sign(client: httpx.AsyncClient) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "pm_getPaymasterData", "params": [user_op(), EP07, hex(CHAIN_ID)]}
    reply = (await client.post("/api/v1/rpc", json=body)).json()
    assert "result" not in reply, "paymaster data left the server without a ledger row"
    assert reply["error"]["code"] == -32603
    assert reply["error"]["data"]["anodeCode"] == "ANODE_STORE_UNAVAILABLE"

    response = await client.post("/api/v1/paymaster/sponsor", json={"userOperation": user_op(), "entryPoint": EP07})
    assert response.status_code == 503
    assert "paymasterData" not in response.text
    assert response.json()["error"]["code"] == "ANODE_STORE_UNAVAILABLE"

    # stub data carries no signature and needs no ledger: still served
    body["method"] = "pm_getPaymasterStubData"
    assert "result" in (await client.post("/api/v1/rpc", json=body)).json()


async def test_api_refuses_to_sign_when_the_database_is_unreachable(
    tmp_path: Path, dead_node: str, refused_port: int
) -> None:
    node, client = await _client(
        f"postgresql://postgres@127.0.0.1:{refused_port}/anode", tmp_path, dead_node, migrate=False
    )
    async with client:
        await _assert_refuses_to_sign(client)
        assert (await client.get("/api/v1/operations")).status_code == 503
    await node.aclose()


async def test_api_refuses_to_sign_when_the_ledger_table_is_gone(
    tmp_path: Path, dead_node: str, sqlite_url: str
) -> None:
    node, client = await _client(sqlite_url, tmp_path, dead_node, migrate=True)
    async with client:
        body = {"jsonrpc": "2.0", "id": 1, "method": "pm_getPaymasterData", "params": [user_op(), EP07, hex(CHAIN_ID)]}
        assert "result" in (await client.post("/api/v1/rpc", json=body)).json()
        engine = sa.create_engine(sqlite_url)
        with engine.begin() as connection:
            connection.execute(sa.text("DROP TABLE sponsorships"))
        engine.dispose()
        await _assert_refuses_to_sign(client)
    await node.aclose()


async def test_gas_values_the_entry_point_refuses_are_refused_up_front(
    tmp_path: Path, dead_node: str, pg_url: str
) -> None:
    """EntryPoints reject any gas field above 2**120-1 (AA94). aNode must say which field is wrong,
    not sign it and then fail to record its max cost (past NUMERIC(78)) with a 'store unavailable'."""
    node, client = await _client(pg_url, tmp_path, dead_node, migrate=True)
    async with client:
        op = user_op(preVerificationGas=hex(2**255), maxFeePerGas=hex(2**127))
        body = {"jsonrpc": "2.0", "id": 1, "method": "pm_getPaymasterData", "params": [op, EP07, hex(CHAIN_ID)]}
        reply = (await client.post("/api/v1/rpc", json=body)).json()
        assert reply["error"]["code"] == -32602, reply
        assert reply["error"]["data"]["field"] in ("userOp.preVerificationGas", "userOp.maxFeePerGas")
    await node.aclose()
