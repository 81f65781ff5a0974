"""The hash-chained audit log on SQLite and PostgreSQL: every signature is chained in the ledger's
own transaction, concurrent writers keep one chain, and ``verify`` (and ``anode audit verify``)
names the first changed, removed or reordered record."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from anode.errors import StoreUnavailable
from anode.store import audit
from anode.store.audit_ledger import cross_check
from anode.store.database import create_engine, upgrade
from anode.store.ledger import SponsorshipRecord, SqlLedger
from anode.store.tables import sponsorships
from tests.keys.conftest import ADDRESS_9, KEY_9

PAYMASTER = "0x" + "5A" * 20
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def record(index: int, *, cost: int = 10**18, writer: str = "a") -> SponsorshipRecord:
    return SponsorshipRecord(
        created_at=datetime.now(UTC),
        user_op_hash="0x" + index.to_bytes(32, "big").hex(),
        chain_id=31337,
        entry_point="0x" + "00" * 20,
        paymaster=PAYMASTER,
        sender="0x" + "11" * 20,
        nonce=index,
        max_gas_cost_wei=cost,
        valid_until=2_000_000_000 + index,
        valid_after=0,
        signer=ADDRESS_9,
        api_key_id="abcdef0123456789",
        method="pm_getPaymasterData",
        backend=f"primary:{writer}",
        request_id=f"req-{writer}-{index}",
    )


async def write(url: str, indexes: range, writer: str = "a") -> None:
    """Records through a ledger of its own (its own engine: another server process, as far as the
    database can tell)."""
    ledger = SqlLedger(create_engine(url))
    try:
        await asyncio.gather(*(ledger.record(record(i, writer=writer)) for i in indexes))
    finally:
        await ledger.aclose()


def count(engine: sa.Engine, table: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


# -- writing ----------------------------------------------------------------------------------


async def test_every_signature_is_chained_with_its_ledger_row(engine: sa.Engine, database_url: str) -> None:
    await write(database_url, range(200))
    result = audit.verify(engine)
    assert result.ok and result.records == 200, result.message
    rows = {row["user_op_hash"]: row for row in audit.records(engine)}
    assert len(rows) == 200
    row = rows["0x" + (7).to_bytes(32, "big").hex()]
    assert (row["kind"], row["signer"], row["paymaster"], row["chain_id"]) == ("signature", ADDRESS_9, PAYMASTER, 31337)
    assert (row["backend"], row["request_id"], row["api_key_id"]) == ("primary:a", "req-a-7", "abcdef0123456789")
    assert [r["seq"] for r in audit.records(engine)] == list(range(1, 201))


async def test_two_writers_and_a_rotation_keep_one_unbroken_chain(engine: sa.Engine, database_url: str) -> None:
    """Two ledgers on two engines (two server processes) and a thread appending rotation records."""

    def rotations() -> None:
        for index in range(20):
            entry = audit.AuditEntry("rotation.proof", datetime.now(UTC), signer=ADDRESS_9, detail={"n": index})
            audit.append_now(engine, [entry])

    thread = threading.Thread(target=rotations)
    thread.start()
    await asyncio.gather(write(database_url, range(0, 300), "a"), write(database_url, range(300, 600), "b"))
    thread.join()
    result = audit.verify(engine)
    assert result.ok, result.message
    assert result.records == 620 == count(engine, "audit_log")
    assert count(engine, "sponsorships") == 600


async def test_when_the_audit_append_fails_the_signature_is_not_on_the_books(engine: sa.Engine) -> None:
    await write(str(engine.url.render_as_string(hide_password=False)), range(3))
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM audit_head"))
    ledger = SqlLedger(engine)
    with pytest.raises(StoreUnavailable, match="nothing was signed"):
        await ledger.record(record(99))
    assert count(engine, "sponsorships") == 3 and count(engine, "audit_log") == 3


async def test_a_row_the_ledger_refuses_leaves_no_audit_record(pg_url: str) -> None:
    """On PostgreSQL a max cost past NUMERIC(78) fails its row alone; its audit record goes with it."""
    engine = create_engine(pg_url)
    upgrade(engine)
    ledger = SqlLedger(engine)
    try:
        results = await asyncio.gather(
            ledger.record(record(1)), ledger.record(record(2, cost=2**300)), ledger.record(record(3)),
            return_exceptions=True,
        )  # fmt: skip
        assert results[0] is None and isinstance(results[1], StoreUnavailable) and results[2] is None
        assert sorted(r["nonce"] for r in await ledger.find()) == [1, 3]
        assert audit.verify(engine).records == 2 and audit.verify(engine).ok
    finally:
        await ledger.aclose()


# -- tampering --------------------------------------------------------------------------------


def _rehash(connection: sa.Connection, seq: int, **changes: object) -> None:
    row = dict(connection.execute(sa.select(audit.audit_log).where(audit.audit_log.c.seq == seq)).mappings().one())
    row.update(changes)
    new_hash = audit.chain_hash(row["prev_hash"], row)
    connection.execute(
        audit.audit_log.update().where(audit.audit_log.c.seq == seq).values(**changes, record_hash=new_hash)
    )


def _swap(connection: sa.Connection, a: int, b: int) -> None:
    log = audit.audit_log
    connection.execute(log.update().where(log.c.seq == a).values(seq=-1))
    connection.execute(log.update().where(log.c.seq == b).values(seq=a))
    connection.execute(log.update().where(log.c.seq == -1).values(seq=b))


TAMPERING: dict[str, tuple[Callable[[sa.Connection], object], str, int | None, str]] = {
    "a field changed": (
        lambda c: c.execute(sa.text("UPDATE audit_log SET signer = '0x000000000000000000000000000000000000dEaD' "
                                    "WHERE seq = 5")),
        "changed", 5, "record 5 was changed",
    ),
    "the time changed": (
        lambda c: c.execute(audit.audit_log.update().where(audit.audit_log.c.seq == 4).values(created_at=T0)),
        "changed", 4, "record 4 was changed",
    ),
    "changed and rehashed": (
        lambda c: _rehash(c, 5, user_op_hash="0x" + "ee" * 32), "changed", 5, "record 6 still follows the original"
    ),
    "a record removed": (lambda c: c.execute(sa.text("DELETE FROM audit_log WHERE seq = 5")), "removed", 5,
                         "record 5 was removed"),
    "two records removed": (lambda c: c.execute(sa.text("DELETE FROM audit_log WHERE seq IN (3, 4)")), "removed", 3,
                            "records 3–4 were removed"),
    "the tail removed": (lambda c: c.execute(sa.text("DELETE FROM audit_log WHERE seq > 8")), "removed", 9,
                         "the last 2 record(s) were removed"),
    "two records swapped": (lambda c: _swap(c, 5, 6), "reordered", 5, "record 5 is out of order"),
    "the head rewritten": (
        lambda c: c.execute(sa.text("UPDATE audit_head SET record_hash = :h"), {"h": "ab" * 32}), "head", 10,
        "the chain head does not match",
    ),
}  # fmt: skip


@pytest.mark.parametrize("tampering", list(TAMPERING))
async def test_verify_names_the_first_tampered_record(tampering: str, engine: sa.Engine, database_url: str) -> None:
    for index in range(10):  # one by one: one record per transaction, seq = index + 1
        await write(database_url, range(index, index + 1))
    assert audit.verify(engine).ok
    tamper, problem, seq, message = TAMPERING[tampering]
    with engine.begin() as connection:
        tamper(connection)
    result = audit.verify(engine)
    assert (result.problem, result.seq) == (problem, seq), result.message
    assert message in result.message


def _config(tmp_path: Path, database_url: str) -> Path:
    path = tmp_path / "config.yaml"
    chain = {
        "chain_id": 31337,
        "rpc_url": "http://127.0.0.1:9",
        "paymasters": [
            {"entry_point": "0x0000000071727De22E5E9d8BAf0edAc6f37da032", "address": PAYMASTER, "contract": "singleton"}
        ],
    }
    path.write_text(yaml.safe_dump({"database_url": database_url, "signer": {"type": "local", "private_key": KEY_9},
                                    "chains": [chain]}))  # fmt: skip
    return path


async def test_anode_audit_verify_exits_non_zero_on_a_broken_chain(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'anode.db'}"
    engine = create_engine(url)
    upgrade(engine)
    await write(url, range(5))
    config = _config(tmp_path, url)
    command = [sys.executable, "-m", "anode.cli", "audit", "verify", "--config", str(config)]
    intact = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert intact.returncode == 0, intact.stderr
    assert intact.stdout.startswith("audit chain intact: 5 record(s), head ")
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM audit_log WHERE seq = 2"))
    engine.dispose()
    broken = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert broken.returncode == 1
    assert "audit chain BROKEN (removed): record 2 was removed" in broken.stderr


# -- the ledger against the chain ---------------------------------------------------------------


async def test_each_signature_record_covers_its_rows_money_fields(engine: sa.Engine, database_url: str) -> None:
    await write(database_url, range(3))
    detail = {row["user_op_hash"]: row["detail"] for row in audit.records(engine)}["0x" + (2).to_bytes(32, "big").hex()]
    assert detail == {
        "v": 3, "entry_point": "0x" + "00" * 20, "sender": "0x" + "11" * 20, "nonce": "2",
        "max_gas_cost_wei": str(10**18), "valid_until": 2_000_000_002, "valid_after": 0,
        "mode": "verifying", "token": None, "exchange_rate": None, "max_token_amount": None,
    }  # fmt: skip
    check = cross_check(engine)
    assert check.ok and (check.rows, check.uncovered, check.predating) == (3, 0, 0), check.problems


LEDGER_TAMPERING: dict[str, tuple[str, str]] = {
    "the maximum cost lowered": (
        "UPDATE sponsorships SET max_gas_cost_wei = 1 WHERE id = 3",
        "ledger row 3 (userOp 0x{op3} on chain 31337) was changed: max_gas_cost_wei is 1 in the ledger, "
        "1000000000000000000 in the record (audit record 3)",
    ),
    "the sender changed": (
        "UPDATE sponsorships SET sender = '0x2222222222222222222222222222222222222222' WHERE id = 3",
        "ledger row 3 (userOp 0x{op3} on chain 31337) was changed: sender is 0x2222",
    ),
    "the nonce changed": ("UPDATE sponsorships SET nonce = 77 WHERE id = 3", "nonce is 77 in the ledger, 2 in"),
    "the window widened": (
        "UPDATE sponsorships SET valid_until = 2100000000, valid_after = 5 WHERE id = 3",
        "valid_until is 2100000000 in the ledger, 2000000002 in the record; valid_after is 5 in the ledger",
    ),
    "a row deleted": (
        "DELETE FROM sponsorships WHERE id = 3",
        "the ledger row of audit record 3 (userOp 0x{op3} on chain 31337, signed ",
    ),
    "a row's userOp hash changed": (
        "UPDATE sponsorships SET user_op_hash = '0x{ee}' WHERE id = 3",
        "ledger row 3 (userOp 0x{ee} on chain 31337) is in no audit record",
    ),
}


@pytest.mark.parametrize("tampering", list(LEDGER_TAMPERING))
async def test_cross_check_names_an_edited_or_deleted_ledger_row(
    tampering: str, engine: sa.Engine, database_url: str
) -> None:
    for index in range(5):  # one transaction each: ledger row id = audit seq = index + 1
        await write(database_url, range(index, index + 1))
    assert cross_check(engine).ok
    statement, message = LEDGER_TAMPERING[tampering]
    names = {"op3": (2).to_bytes(32, "big").hex(), "ee": "ee" * 32}
    with engine.begin() as connection:
        connection.execute(sa.text(statement.format(**names)))
    assert audit.verify(engine).ok  # the chain itself is untouched
    check = cross_check(engine)
    assert not check.ok
    assert any(message.format(**names) in problem for problem in check.problems), check.problems
    assert check.problem_count == len(check.problems) <= 2


def _ledger_values(entry: SponsorshipRecord) -> dict[str, object]:
    # the columns the ledger writes (the outcome columns are the follower's, with their defaults)
    return {column.name: getattr(entry, column.name) for column in sponsorships.c if hasattr(entry, column.name)}


async def test_records_of_the_first_format_still_verify_and_pair(engine: sa.Engine, database_url: str) -> None:
    """A database written before records carried money fields: its chain verifies, its rows pair
    on the fields their records cover, and a deleted one is still found."""
    await write(database_url, range(2))  # format 2
    old = record(7)
    with engine.begin() as connection:  # as the ledger wrote rows and records before format 2
        connection.execute(sponsorships.insert().values(**_ledger_values(old)))
        audit.append(
            connection,
            [
                audit.AuditEntry(
                    audit.SIGNATURE, old.created_at, signer=old.signer, backend=old.backend,
                    user_op_hash=old.user_op_hash, chain_id=old.chain_id, paymaster=old.paymaster,
                    api_key_id=old.api_key_id, request_id=old.request_id,
                )
            ],
        )  # fmt: skip
    assert audit.verify(engine).ok
    check = cross_check(engine)
    assert check.ok and (check.rows, check.uncovered) == (3, 1), check.problems
    with engine.begin() as connection:
        connection.execute(sponsorships.delete().where(sponsorships.c.user_op_hash == old.user_op_hash))
    check = cross_check(engine)
    assert not check.ok and "the ledger row of audit record 3" in check.problems[0]


async def test_ledger_rows_older_than_the_audit_log_are_counted_not_reported(engine: sa.Engine) -> None:
    old = record(1)
    with engine.begin() as connection:
        connection.execute(sponsorships.insert().values(**{**_ledger_values(old), "created_at": T0}))
    check = cross_check(engine)
    assert check.ok and (check.rows, check.predating) == (1, 1)


async def test_anode_audit_verify_exits_non_zero_on_an_edited_or_deleted_ledger_row(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'anode.db'}"
    engine = create_engine(url)
    upgrade(engine)
    for index in range(4):
        await write(url, range(index, index + 1))
    command = [sys.executable, "-m", "anode.cli", "audit", "verify", "--config", str(_config(tmp_path, url))]
    intact = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert intact.returncode == 0, intact.stderr
    assert "ledger matches the audit chain: 4 row(s)" in intact.stdout
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE sponsorships SET max_gas_cost_wei = 5 WHERE id = 2"))
        connection.execute(sa.text("DELETE FROM sponsorships WHERE id = 4"))
    engine.dispose()
    broken = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert broken.returncode == 1, broken.stdout
    assert "ledger does NOT match the audit chain: 2 problem(s)" in broken.stderr
    assert "ledger row 2 " in broken.stderr and "max_gas_cost_wei is 5 in the ledger" in broken.stderr
    assert "the ledger row of audit record 4 " in broken.stderr
