"""The dashboard's queries (``anode/store/dashboard.py``) on SQLite and PostgreSQL.

Sums of wei past 2**64 are exact on both, every query stays in its window, counts from several
processes add up, and each query is answered from an index (read from ``EXPLAIN``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from anode.store.dashboard import MAX_WINDOW, DashboardStore, OutcomeCounter
from anode.store.deposits import deposit_samples
from anode.store.tables import sponsorships
from anode.store.watch import unknown_operations, watch_cursors
from tests.support.databases import database_url, engine  # noqa: F401 (fixtures)
from tests.support.postgres import emptied, fresh_pg_database

NOW = datetime.now(UTC).replace(minute=30, second=0, microsecond=0) - timedelta(hours=1)
BIG = 2**70 + 12345  # past 2**64: a float or a 64-bit integer would lose it


@pytest.fixture(scope="module")
def pg_module_url() -> Iterator[str]:
    with fresh_pg_database("anode_dashboard") as url:
        yield url


@pytest.fixture
def pg_url(pg_module_url: str) -> str:
    """The module's PostgreSQL database, emptied before each test (``engine`` migrates it again)."""
    return emptied(pg_module_url)


def row(at: datetime, chain_id: int = 1, key: str | None = "k1", max_wei: int = 10, **outcome: Any) -> dict[str, Any]:
    return {
        "created_at": at, "user_op_hash": "0x" + "ab" * 32, "chain_id": chain_id, "entry_point": "0x" + "01" * 20,
        "paymaster": "0x" + "02" * 20, "sender": "0x" + "03" * 20, "nonce": 0, "max_gas_cost_wei": max_wei,
        "valid_until": 0, "valid_after": 0, "signer": "0x" + "04" * 20, "api_key_id": key,
        "method": "pm_getPaymasterData", "status": "signed", "actual_gas_cost_wei": None, **outcome,
    }  # fmt: skip


def insert(db: sa.Engine, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    with db.begin() as connection:
        connection.execute(table.insert(), rows)


def test_spend_is_exact_per_hour_chain_and_key(engine: sa.Engine) -> None:  # noqa: F811
    earlier = NOW - timedelta(hours=2)
    insert(engine, sponsorships, [
        row(NOW, max_wei=BIG, status="included", actual_gas_cost_wei=BIG - 7),
        row(NOW + timedelta(minutes=10), max_wei=BIG, status="included", actual_gas_cost_wei=BIG),
        row(NOW, max_wei=5),  # signed, not (yet) included: reserved, no actual spend
        row(NOW, chain_id=2, key="k2", max_wei=3, status="expired"),
        row(earlier, max_wei=1),
        row(NOW - MAX_WINDOW - timedelta(hours=1), max_wei=999),  # before any window
    ])  # fmt: skip
    store = DashboardStore(engine)
    got = {(r["bucket"], r["chainId"], r["apiKeyId"]): r for r in store.spend(NOW - timedelta(days=60), None, "hour")}
    hour = NOW.replace(minute=0).isoformat()
    assert got[(hour, 1, "k1")] == {
        "bucket": hour, "chainId": 1, "apiKeyId": "k1", "operations": 3, "included": 2,
        "reservedWei": str(2 * BIG + 5), "actualWei": str(2 * BIG - 7),
    }  # fmt: skip
    assert got[(hour, 2, "k2")]["reservedWei"] == "3" and got[(hour, 2, "k2")]["actualWei"] == "0"
    assert got[(earlier.replace(minute=0).isoformat(), 1, "k1")]["reservedWei"] == "1"
    assert len(got) == 3  # the row older than the longest window is left out

    daily = store.spend(NOW - timedelta(days=2), None, "day")
    day = NOW.replace(hour=0, minute=0).isoformat()
    assert sum(int(r["reservedWei"]) for r in daily if r["bucket"] == day and r["chainId"] == 1) == 2 * BIG + 5 + (
        1 if earlier.date() == NOW.date() else 0
    )


def test_outcome_counts_from_two_processes_add_up(engine: sa.Engine) -> None:  # noqa: F811
    first, second = OutcomeCounter(engine, interval=0), OutcomeCounter(engine, interval=0)
    for _ in range(3):
        first.add("pm_getPaymasterData", "ok")
    first.add("pm_getPaymasterData", "ANODE_001_SBT_NOT_FOUND")
    second.add("pm_getPaymasterData", "ok")
    first.flush()
    second.flush()
    second.add("pm_getPaymasterData", "ANODE_001_SBT_NOT_FOUND")
    second.close()  # closing flushes what is left
    counts = {(r["method"], r["result"]): r["count"] for r in DashboardStore(engine).outcomes(NOW - timedelta(hours=3))}
    assert counts == {("pm_getPaymasterData", "ok"): 4, ("pm_getPaymasterData", "ANODE_001_SBT_NOT_FOUND"): 2}


def test_a_failed_flush_keeps_its_counts(engine: sa.Engine) -> None:  # noqa: F811
    counter = OutcomeCounter(engine, interval=0)
    counter.add("pm_sponsorUserOperation", "ok")
    with engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE sponsorship_outcomes RENAME TO outcomes_away"))
    counter.flush()  # fails: the table is gone
    with engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE outcomes_away RENAME TO sponsorship_outcomes"))
    counter.flush()
    rows = DashboardStore(engine).outcomes(NOW - timedelta(hours=3))
    assert [(r["result"], r["count"]) for r in rows] == [("ok", 1)]


def test_deposit_samples_in_their_window_oldest_first(engine: sa.Engine) -> None:  # noqa: F811
    base = {"chain_id": 1, "entry_point": "0x" + "01" * 20, "paymaster": "0x" + "02" * 20}
    insert(engine, deposit_samples, [
        {**base, "deposit_wei": BIG, "sampled_at": NOW},
        {**base, "deposit_wei": 7, "sampled_at": NOW - timedelta(hours=1)},
        {**base, "deposit_wei": 9, "sampled_at": NOW - timedelta(hours=50)},
    ])  # fmt: skip
    samples = DashboardStore(engine).deposits(NOW - timedelta(hours=48))
    assert [s["depositWei"] for s in samples] == ["7", str(BIG)]


def test_recent_operations_newest_first_with_their_outcome(engine: sa.Engine) -> None:  # noqa: F811
    insert(engine, sponsorships, [row(NOW, max_wei=1), row(NOW, max_wei=2, status="included", actual_gas_cost_wei=BIG)])
    operations = DashboardStore(engine).operations(limit=1)
    shown = [(o["maxGasCostWei"], o["status"], o["actualGasCostWei"]) for o in operations]
    assert shown == [("2", "included", str(BIG))]


def test_the_follower_state_and_the_latest_unknown_inclusions(engine: sa.Engine) -> None:  # noqa: F811
    insert(engine, watch_cursors, [{"chain_id": 5, "last_block": 120, "updated_at": NOW}])
    unknown = {
        "chain_id": 5, "user_op_hash": "0x" + "cd" * 32, "block_number": 100, "entry_point": "0x" + "01" * 20,
        "paymaster": "0x" + "02" * 20, "sender": "0x" + "03" * 20, "nonce": 0, "success": True, "actual_gas_used": 1,
    }  # fmt: skip
    insert(engine, unknown_operations, [
        {**unknown, "seen_at": NOW, "tx_hash": "0x" + f"{i:064x}", "actual_gas_cost_wei": BIG + i} for i in range(3)
    ])  # fmt: skip
    state = DashboardStore(engine).follower(unknown_limit=2)
    assert state["chains"] == [{"chainId": 5, "lastBlock": 120, "updatedAt": NOW.isoformat()}]
    assert [u["actualGasCostWei"] for u in state["unknown"]] == [str(BIG + 2), str(BIG + 1)]


def _plans(db: sa.Engine, statements: list[tuple[str, Any]]) -> list[str]:
    """The plan of each statement, with the very parameters it ran with."""
    sqlite = db.dialect.name == "sqlite"
    plans = []
    with db.connect() as connection:
        if sqlite:
            raw: Any = connection.connection.dbapi_connection
            raw.create_aggregate("anode_uint_sum", 1, _Nothing)
        else:  # an empty table is cheapest to scan: ask whether an index can answer at all
            connection.exec_driver_sql("SET enable_seqscan = off")
        for statement, parameters in statements:
            explain = "EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN "
            rows = connection.exec_driver_sql(explain + statement, parameters).all()
            plans.append("\n".join(str(r[-1] if sqlite else r[0]) for r in rows))
    return plans


class _Nothing:
    def step(self, value: Any) -> None:
        pass

    def finalize(self) -> None:
        return None


def test_every_query_is_answered_from_an_index(engine: sa.Engine) -> None:  # noqa: F811
    """The store's own statements, captured as it sends them, then ``EXPLAIN``ed."""
    seen: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        seen.append((statement, parameters))

    store = DashboardStore(engine)
    since = NOW - timedelta(hours=48)
    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        store.spend(since, None, "hour")
        store.outcomes(since)
        store.deposits(since)
        store.operations()
        store.follower()
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    statements = [(q, p) for q, p in seen if q.lstrip().upper().startswith("SELECT")]
    assert len(statements) == 6, statements
    plans = _plans(engine, statements)
    indexes = [
        "ix_sponsorships_created", "sponsorship_outcomes", "ix_deposit_samples_time", "sponsorships", "watch_cursors",
        "unknown_operations",
    ]  # fmt: skip
    for plan, name in zip(plans, indexes, strict=True):
        assert name in plan, plan
        if engine.dialect.name == "postgresql":
            assert "Index" in plan and "Seq Scan" not in plan, plan
    if engine.dialect.name == "postgresql":  # the window bounds the index range, not a filter after it
        assert all("Index Cond" in plan for plan in plans[:3]), plans
    else:
        assert all("SEARCH" in plan and "USING" in plan for plan in plans[:3]), plans
        # newest first (or by chain), read from the primary key
        assert all("TEMP B-TREE" not in plan for plan in plans[3:]), plans
