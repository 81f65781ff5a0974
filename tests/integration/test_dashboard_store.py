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
from anode.store.reconcile import limit_reservations, reconcile
from anode.store.signer_events import SignerEventLog
from anode.store.tables import signer_events, sponsorships
from anode.store.watch import unknown_operations, watch_cursors
from tests.integration.test_dashboard_browser import until
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


def op_hash(n: int) -> str:
    return "0x" + f"{n:064x}"


def reserve(n: int, counters: list[str], amount: int, chain_id: int = 1) -> list[dict[str, Any]]:
    return [
        {"chain_id": chain_id, "user_op_hash": op_hash(n), "counter": c, "window_start": 0, "amount": amount}
        for c in counters
    ]


def test_policy_spend_is_exact_per_hour_chain_and_policy(engine: sa.Engine) -> None:  # noqa: F811
    """Reserved at signing, actual as reconciliation settled it; a policy with two amount limits
    counts an operation once, an operation signed twice (two ledger rows) twice."""
    cap = ["cap:amount:86400:*", "cap:amount:3600:*"]  # two amount limits of one policy
    wallet = ["wallet:amount:0:0x" + "03" * 20]  # a per-wallet policy's counter
    earlier = NOW - timedelta(hours=2)
    insert(engine, sponsorships, [
        row(NOW, max_wei=BIG, user_op_hash=op_hash(1), status="included", actual_gas_cost_wei=BIG - 7),
        row(NOW, max_wei=5, user_op_hash=op_hash(2)),  # signed, not yet included
        row(NOW, chain_id=2, max_wei=3, user_op_hash=op_hash(3), status="expired"),
        row(earlier, max_wei=9, user_op_hash=op_hash(4), status="included", actual_gas_cost_wei=20),  # capped at 9
        row(NOW, max_wei=4, user_op_hash=op_hash(6)),  # the same operation signed twice
        row(NOW + timedelta(minutes=1), max_wei=4, user_op_hash=op_hash(6)),
        row(NOW - MAX_WINDOW - timedelta(hours=1), max_wei=999, user_op_hash=op_hash(5)),
    ])  # fmt: skip
    insert(engine, limit_reservations, [
        *reserve(1, cap + wallet, BIG), *reserve(2, cap, 5), *reserve(3, cap, 3, chain_id=2), *reserve(4, cap, 9),
        *reserve(6, cap, 4), *reserve(6, cap, 4), *reserve(5, cap, 999),
    ])  # fmt: skip
    with engine.begin() as connection:  # what the follower does when it records outcomes
        assert reconcile(connection, 1, [op_hash(n) for n in (1, 2, 4, 6)]) == 5
        assert reconcile(connection, 2, [op_hash(3)]) == 2
    store = DashboardStore(engine)
    got = {
        (r["bucket"], r["chainId"], r["policyId"]): r
        for r in store.policy_spend(NOW - timedelta(days=60), None, "hour")
    }
    hour, before = NOW.replace(minute=0).isoformat(), earlier.replace(minute=0).isoformat()
    assert got == {
        (hour, 1, "cap"): {
            "bucket": hour, "chainId": 1, "policyId": "cap", "operations": 4, "included": 1,
            "reservedWei": str(BIG + 5 + 2 * 4), "actualWei": str(BIG - 7),
        },
        (hour, 1, "wallet"): {
            "bucket": hour, "chainId": 1, "policyId": "wallet", "operations": 1, "included": 1,
            "reservedWei": str(BIG), "actualWei": str(BIG - 7),
        },
        (hour, 2, "cap"): {
            "bucket": hour, "chainId": 2, "policyId": "cap", "operations": 1, "included": 0,
            "reservedWei": "3", "actualWei": "0",
        },
        (before, 1, "cap"): {
            "bucket": before, "chainId": 1, "policyId": "cap", "operations": 1, "included": 1,
            "reservedWei": "9", "actualWei": "9",
        },
    }  # fmt: skip
    daily = store.policy_spend(NOW - timedelta(days=2), None, "day")
    day = NOW.replace(hour=0, minute=0).isoformat()
    cap_today = [r for r in daily if r["bucket"] == day and r["chainId"] == 1 and r["policyId"] == "cap"]
    same_day = earlier.date() == NOW.date()
    assert [(r["operations"], r["reservedWei"]) for r in cap_today] == [
        (4 + same_day, str(BIG + 5 + 8 + (9 if same_day else 0)))
    ]


def test_signer_events_from_two_processes_add_up(engine: sa.Engine) -> None:  # noqa: F811
    first = SignerEventLog(engine, interval=0, process="host-a:1")
    second = SignerEventLog(engine, interval=0, process="host-b:2")
    primary, backup = ("primary:remote", "0x" + "09" * 20), ("backup1:local", "0x" + "09" * 20)
    first.record("unhealthy", *primary, detail="primary:remote: connection refused")
    for _ in range(3):  # three requests failed over: one row
        first.record("failover", *primary, to_backend=backup[0], to_address=backup[1], detail="refused")
    second.record("failover", *primary, to_backend=backup[0], to_address=backup[1])
    first.flush()
    second.close()
    first.record("failover", *backup, to_backend="backup2:local", to_address="0x" + "08" * 20)
    first.close()
    store = DashboardStore(engine)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0).isoformat()
    assert store.signer_failovers(NOW - timedelta(hours=3)) == [
        {"hour": hour, "backend": "backup1:local", "toBackend": "backup2:local", "count": 1},
        {"hour": hour, "backend": "primary:remote", "toBackend": "backup1:local", "count": 4},
    ]
    events = store.signer_events(limit=10)
    assert [(e["kind"], e["backend"], e["count"], e["process"]) for e in events] == [
        ("failover", "backup1:local", 1, "host-a:1"),
        ("failover", "primary:remote", 1, "host-b:2"),
        ("failover", "primary:remote", 3, "host-a:1"),
        ("unhealthy", "primary:remote", 1, "host-a:1"),
    ]
    assert events[-1]["detail"] == "primary:remote: connection refused" and events[-1]["address"] == primary[1]


def test_a_failed_signer_event_write_keeps_its_events(engine: sa.Engine) -> None:  # noqa: F811
    log = SignerEventLog(engine, interval=0, process="host-a:1")
    log.record("failover", "primary", "0x" + "09" * 20, to_backend="backup1", to_address="0x" + "09" * 20)
    with engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE signer_events RENAME TO signer_events_away"))
    log.flush()  # fails: the table is gone
    log.record("failover", "primary", "0x" + "09" * 20, to_backend="backup1", to_address="0x" + "09" * 20)
    with engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE signer_events_away RENAME TO signer_events"))
    log.flush()
    assert [(f["backend"], f["count"]) for f in DashboardStore(engine).signer_failovers(NOW)] == [("primary", 2)]
    assert len(DashboardStore(engine).signer_events()) == 1


def test_the_writer_thread_deletes_signer_events_past_the_retention_not_per_event(
    engine: sa.Engine,  # noqa: F811
) -> None:
    now = datetime.now(UTC)
    address = "0x" + "09" * 20

    def event(at: datetime, kind: str) -> dict[str, Any]:
        return {"at": at, "kind": kind, "backend": "primary", "address": address, "count": 1, "process": "host-a:1"}

    insert(engine, signer_events, [
        event(now - timedelta(days=31), "circuit_open"), event(now - timedelta(days=30, minutes=1), "unhealthy"),
        event(now - timedelta(days=29), "healthy"), event(now - timedelta(minutes=1), "circuit_closed"),
    ])  # fmt: skip

    def kinds() -> list[str]:
        with engine.connect() as connection:
            return list(connection.execute(sa.select(signer_events.c.kind).order_by(signer_events.c.id)).scalars())

    log = SignerEventLog(engine, interval=0.01, process="host-a:1")  # 30 days, pruned at start then hourly
    log.start()
    try:
        until("the writer thread's first prune", lambda: len(kinds()) == 2, within=10)
        assert kinds() == ["healthy", "circuit_closed"]  # a day inside the retention stays
        insert(engine, signer_events, [event(now - timedelta(days=40), "unhealthy")])
        log.record("failover", "primary", address, to_backend="backup1", to_address=address)
        until("the failover's write", lambda: len(kinds()) == 4, within=10)
        assert kinds() == ["healthy", "circuit_closed", "unhealthy", "failover"]  # a write prunes nothing
    finally:
        log.close()


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
        store.policy_spend(since, None, "day")
        store.signer_failovers(since)
        store.signer_events()
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    statements = [(q, p) for q, p in seen if q.lstrip().upper().startswith("SELECT")]
    assert len(statements) == 9, statements
    plans = _plans(engine, statements)
    policy_spend, failovers, events = plans[6:]
    plans = plans[:6]
    for name in ("ix_sponsorships_created", "ix_limit_reservations_op"):  # the window, then each one's reservations
        assert name in policy_spend, policy_spend
    assert "ix_signer_events_at" in failovers and "signer_events" in events, (failovers, events)
    if engine.dialect.name == "postgresql":
        assert "Seq Scan" not in policy_spend + failovers + events, (policy_spend, failovers, events)
        assert "Index Cond" in failovers, failovers
    else:
        assert "SCAN limit_reservations" not in policy_spend and "SCAN sponsorships" not in policy_spend, policy_spend
        assert "SEARCH signer_events USING INDEX ix_signer_events_at" in failovers, failovers
        assert "TEMP B-TREE" not in events, events
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
