"""The audit chain covers ERC-20 mode's ledger fields: mode, token, exchange rate, maximum charge.

A signature record (format 3) carries them in its ``detail``, so ``anode audit verify`` names a
ledger row whose ERC-20 terms were changed in the database. A database written by earlier releases
holds records of format 1 (no ``detail``) and 2 (the money fields only); they still verify, and
their rows are checked on what those formats cover, beside new records, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from eth_account import Account

from anode.devchain.anvil import DEFAULT_ACCOUNT_KEYS
from anode.store import audit
from anode.store.audit_ledger import cross_check
from anode.store.database import create_engine, upgrade
from anode.store.ledger import SponsorshipRecord, SqlLedger
from anode.store.tables import sponsorships
from tests.support.databases import database_url, engine  # noqa: F401
from tests.support.postgres import fresh_pg_database

PAYMASTER = "0x" + "5A" * 20
#: anvil's account 9 (the CLI's configuration needs a signer)
SIGNER_KEY = DEFAULT_ACCOUNT_KEYS[9]
SIGNER = Account.from_key(SIGNER_KEY).address
TOKEN = "0x" + "7D" * 20
RATE = 3_300_000_000  # 6 decimals, 3000 per ETH plus 10 %
MAXIMUM = 4_818_000


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_pg_database("anode_erc20_audit") as url:
        yield url


def _record(index: int, **erc20: Any) -> SponsorshipRecord:
    return SponsorshipRecord(
        created_at=datetime.now(UTC),
        user_op_hash="0x" + index.to_bytes(32, "big").hex(),
        chain_id=31337,
        entry_point="0x0000000071727De22E5E9d8BAf0edAc6f37da032",
        paymaster=PAYMASTER,
        sender="0x" + "11" * 20,
        nonce=index,
        max_gas_cost_wei=10**15,
        valid_until=2_000_000_000 + index,
        valid_after=0,
        signer=SIGNER,
        api_key_id="abcdef0123456789",
        method="pm_getPaymasterData",
        backend="primary",
        request_id=f"req-{index}",
        **erc20,
    )


def _erc20(index: int) -> SponsorshipRecord:
    return _record(index, mode="erc20", token=TOKEN, exchange_rate=RATE, max_token_amount=MAXIMUM + index)


def _write_old(db: sa.Engine, entry: SponsorshipRecord, form: int) -> None:
    """``entry``'s row and its signature record as a release writing record format ``form`` (1 or 2) did."""
    row = {column.name: getattr(entry, column.name) for column in sponsorships.c if hasattr(entry, column.name)}
    detail = None
    if form == 2:
        detail = {
            "v": 2, "entry_point": entry.entry_point, "sender": entry.sender, "nonce": str(entry.nonce),
            "max_gas_cost_wei": str(entry.max_gas_cost_wei), "valid_until": entry.valid_until,
            "valid_after": entry.valid_after,
        }  # fmt: skip
    record = audit.AuditEntry(
        audit.SIGNATURE, entry.created_at, signer=entry.signer, backend=entry.backend,
        user_op_hash=entry.user_op_hash, chain_id=entry.chain_id, paymaster=entry.paymaster,
        api_key_id=entry.api_key_id, request_id=entry.request_id, detail=detail,
    )  # fmt: skip
    with db.begin() as connection:
        connection.execute(sponsorships.insert().values(**row))
        audit.append(connection, [record])


async def _write_new(url: str, entries: list[SponsorshipRecord]) -> None:
    ledger = SqlLedger(create_engine(url))
    try:
        for entry in entries:  # one at a time: ledger row id = audit seq
            await ledger.record(entry)
    finally:
        await ledger.aclose()


def _mixed(db: sa.Engine, url: str) -> None:
    """Rows 1-3 as older releases wrote them, 4-5 through today's ledger (verifying, ERC-20)."""
    _write_old(db, _record(1), form=1)
    _write_old(db, _record(2), form=2)
    _write_old(db, _erc20(3), form=2)  # ERC-20 mode before records carried its fields
    asyncio.run(_write_new(url, [_record(4), _erc20(5)]))


def _details(db: sa.Engine) -> dict[int, Any]:
    return {int(row["seq"]): row["detail"] for row in audit.records(db)}


def test_a_signature_record_carries_the_mode_and_the_erc20_terms(engine: sa.Engine, database_url: str) -> None:  # noqa: F811
    asyncio.run(_write_new(database_url, [_record(1), _erc20(2)]))
    details = _details(engine)
    assert details[1]["v"] == details[2]["v"] == 3
    assert {name: details[1][name] for name in ("mode", "token", "exchange_rate", "max_token_amount")} == {
        "mode": "verifying", "token": None, "exchange_rate": None, "max_token_amount": None,
    }  # fmt: skip
    assert {name: details[2][name] for name in ("mode", "token", "exchange_rate", "max_token_amount")} == {
        "mode": "erc20", "token": TOKEN, "exchange_rate": str(RATE), "max_token_amount": str(MAXIMUM + 2),
    }  # fmt: skip
    assert details[2]["max_gas_cost_wei"] == str(10**15)  # the money fields of format 2 stay
    check = cross_check(engine)
    assert check.ok and (check.rows, check.uncovered) == (2, 0), check.problems


ERC20_TAMPERING: dict[str, tuple[str, str]] = {
    "the rate lowered": (
        "UPDATE sponsorships SET exchange_rate = 1 WHERE id = {row}",
        f"exchange_rate is 1 in the ledger, {RATE} in the record",
    ),
    "the maximum raised": (
        "UPDATE sponsorships SET max_token_amount = 99999999 WHERE id = {row}",
        "max_token_amount is 99999999 in the ledger, ",
    ),
    "the token changed": (
        "UPDATE sponsorships SET token = '0x" + "42" * 20 + "' WHERE id = {row}",
        f"token is 0x{'42' * 20} in the ledger, {TOKEN} in the record",
    ),
    "verifying made erc20": (
        "UPDATE sponsorships SET mode = 'erc20' WHERE id = 4",
        "mode is erc20 in the ledger, verifying in the record",
    ),
    "erc20 made verifying": (
        "UPDATE sponsorships SET mode = 'verifying', token = NULL, exchange_rate = NULL, max_token_amount = NULL "
        "WHERE id = {row}",
        "mode is verifying in the ledger, erc20 in the record; token is null in the ledger",
    ),
}


@pytest.mark.parametrize("tampering", list(ERC20_TAMPERING))
def test_verify_passes_over_old_and_new_records_and_names_changed_erc20_terms(
    tampering: str,
    engine: sa.Engine,  # noqa: F811
    database_url: str,  # noqa: F811
) -> None:
    _mixed(engine, database_url)
    assert [d if d is None else d["v"] for d in _details(engine).values()] == [None, 2, 2, 3, 3]
    assert audit.verify(engine).ok
    check = cross_check(engine)
    assert check.ok and (check.rows, check.uncovered, check.predating) == (5, 1, 0), check.problems

    statement, message = ERC20_TAMPERING[tampering]
    with engine.begin() as connection:
        connection.execute(sa.text(statement.format(row=5)))
        # the same change to the ERC-20 row of format 2: those fields are not in its record
        connection.execute(sa.text(statement.format(row=3)))
    assert audit.verify(engine).ok  # the chain itself is untouched
    check = cross_check(engine)
    assert not check.ok and check.problem_count == 1, check.problems
    (problem,) = check.problems
    assert problem.startswith(f"ledger row {4 if 'id = 4' in statement else 5} ") and message in problem, problem


def test_anode_audit_verify_over_a_database_of_old_and_new_records(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'anode.db'}"
    db = create_engine(url)
    try:
        upgrade(db)
        _mixed(db, url)
    finally:
        db.dispose()
    config = tmp_path / "config.yaml"
    chain = {
        "chain_id": 31337,
        "rpc_url": "http://127.0.0.1:9",
        "paymasters": [
            {"entry_point": "0x0000000071727De22E5E9d8BAf0edAc6f37da032", "address": PAYMASTER, "contract": "singleton"}
        ],
    }
    config.write_text(
        yaml.safe_dump({"database_url": url, "signer": {"type": "local", "private_key": SIGNER_KEY}, "chains": [chain]})
    )
    command = [sys.executable, "-m", "anode.cli", "audit", "verify", "--config", str(config)]
    intact = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert intact.returncode == 0, intact.stderr
    assert intact.stdout.startswith("audit chain intact: 5 record(s), head ")
    assert "ledger matches the audit chain: 5 row(s) (1 signed before records carried money fields)" in intact.stdout

    db = create_engine(url)
    with db.begin() as connection:
        connection.execute(sa.text(f"UPDATE sponsorships SET exchange_rate = {RATE // 2} WHERE id = 5"))
    db.dispose()
    broken = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert broken.returncode == 1, broken.stdout
    assert "ledger does NOT match the audit chain: 1 problem(s)" in broken.stderr
    assert "ledger row 5 " in broken.stderr and f"exchange_rate is {RATE // 2} in the ledger" in broken.stderr
