"""The EntryPoint follower (``anode/watch/``) against anvil and the real EntryPoints.

Operations are sponsored by a real ``anode serve`` (its own ledger) and sent with ``handleOps``;
the ledger rows under test are copied from that server's database into the test's database
(SQLite and PostgreSQL), so the follower sees exactly the rows aNode records. A row left out of
the test's database is an operation "aNode never signed". Reorgs are anvil's ``evm_snapshot`` /
``evm_revert``; time passing is ``evm_increaseTime`` and ``evm_mine``. The follower runs with 0
confirmations, so the block it just read is the one a reorg replaces.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml

from anode.chain.client import ChainClient
from anode.config import WatchSettings, validate_settings
from anode.devchain.anvil import Anvil
from anode.devchain.deploy import Deployment
from anode.devchain.rpc import DevRpc
from anode.metrics import Metrics
from anode.store.database import create_engine
from anode.store.tables import sponsorships
from anode.store.watch import watch_lease
from anode.userop.codec import parse_address
from anode.watch.follower import Follower, WatchedChain
from anode.wiring import build
from tests.support.databases import database_url, engine  # noqa: F401 (fixtures)
from tests.support.onchain import HandleOpsResult, UserOp, get_user_op_hash
from tests.support.postgres import emptied, fresh_pg_database
from tests.support.server import running_server
from tests.support.wallet import Client, paymaster_of, server_config

CONTRACT, VERSION = "singleton", "v0.7"


@pytest.fixture(scope="module")
def pg_module_url() -> Iterator[str]:
    with fresh_pg_database("anode_watch") as url:
        yield url


@pytest.fixture
def pg_url(pg_module_url: str) -> str:
    """The module's PostgreSQL database, emptied before each test."""
    return emptied(pg_module_url)


@pytest.fixture(scope="module")
def signing_server(
    anvil: Anvil, deployment: Deployment, paymaster_key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, sa.Engine]]:
    """A server that signs (no follower), and an engine on its ledger."""
    url = f"sqlite:///{tmp_path_factory.mktemp('signer') / 'anode.db'}"
    config = {**server_config(anvil, deployment, paymaster_key, [(CONTRACT, VERSION)]), "database_url": url}
    with running_server(config) as base:
        ledger = create_engine(url)
        yield base, ledger
        ledger.dispose()


@pytest.fixture
def client(signing_server: tuple[str, sa.Engine], anvil: Anvil, deployment: Deployment) -> Client:
    return Client(signing_server[0], anvil, deployment, VERSION)


def rpc(anvil: Anvil, method: str, *params: Any) -> Any:
    with DevRpc(anvil.rpc_url) as node:
        return node.call(method, *params)


def head(anvil: Anvil) -> int:
    return int(rpc(anvil, "eth_blockNumber"), 16)


def sponsor(client: Client, signing_server: tuple[str, sa.Engine]) -> tuple[UserOp, dict[str, Any]]:
    """A sponsored operation (not sent) and its row in the signing server's ledger."""
    op, _, _ = client.sponsor()
    op_hash = "0x" + get_user_op_hash(client.anvil.rpc_url, client.entry_point, VERSION, op).hex()
    with signing_server[1].connect() as connection:
        row = connection.execute(sa.select(sponsorships).where(sponsorships.c.user_op_hash == op_hash)).mappings().one()
    return op, {key: value for key, value in row.items() if key != "id"}


def record(db: sa.Engine, row: dict[str, Any], **changes: Any) -> None:
    with db.begin() as connection:
        connection.execute(sponsorships.insert(), [{**row, **changes}])


def ledger_row(db: sa.Engine, op_hash: str) -> dict[str, Any]:
    with db.connect() as connection:
        query = sa.select(sponsorships).where(sponsorships.c.user_op_hash == op_hash)
        return dict(connection.execute(query).mappings().one())


def submit(client: Client, op: UserOp) -> tuple[HandleOpsResult, int]:
    """Send ``op``; the result and the block it was included in."""
    result = client.submit(op)
    assert result.success, result.reason
    receipt = rpc(client.anvil, "eth_getTransactionReceipt", result.tx_hash)
    return result, int(receipt["blockNumber"], 16)


@pytest.fixture
async def node(anvil: Anvil) -> AsyncIterator[ChainClient]:
    chain = ChainClient(anvil.rpc_url)
    yield chain
    await chain.aclose()


@pytest.fixture
def make_follower(
    engine: sa.Engine,  # noqa: F811
    node: ChainClient,
    anvil: Anvil,
    deployment: Deployment,
) -> Any:
    start = head(anvil) + 1  # this test's blocks only

    def make(holder: str = "a", metrics: Metrics | None = None) -> Follower:
        chain = WatchedChain(
            deployment.chain_id,
            node,
            (parse_address(deployment.entry_points[VERSION]),),
            (parse_address(paymaster_of(deployment, CONTRACT, VERSION)),),
            confirmations=0,
        )
        settings = WatchSettings(enabled=True, confirmations=0, start_block=start, lease_seconds=60)
        return Follower(engine, [chain], settings, metrics or Metrics(), holder=holder)

    return make


def counter(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def expire_lease(db: sa.Engine) -> None:
    """What a crashed follower leaves once its lease time has passed."""
    with db.begin() as connection:
        connection.execute(sa.update(watch_lease).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))


async def test_an_included_operation_carries_the_events_actual_cost(
    engine: sa.Engine,  # noqa: F811
    client: Client,
    signing_server: tuple[str, sa.Engine],
    make_follower: Any,
) -> None:
    op, row = sponsor(client, signing_server)
    record(engine, row)
    metrics = Metrics()
    follower = make_follower(metrics=metrics)
    await follower.step()
    assert ledger_row(engine, row["user_op_hash"])["status"] == "signed"
    result, block = submit(client, op)
    (event,) = result.events
    await follower.step()
    outcome = ledger_row(engine, row["user_op_hash"])
    assert outcome["status"] == "included"
    assert outcome["actual_gas_cost_wei"] == event.actual_gas_cost > 0
    assert outcome["actual_gas_used"] == event.actual_gas_used
    assert outcome["actual_gas_cost_wei"] < outcome["max_gas_cost_wei"]
    assert outcome["tx_hash"] == result.tx_hash
    assert outcome["block_number"] == block
    assert outcome["success"] is True
    assert counter(metrics, "anode_watch_operations_total", chain=str(client.deployment.chain_id), outcome="included")
    assert follower.store.unknown() == []


async def test_a_signed_operation_never_sent_expires_after_its_valid_until(
    engine: sa.Engine,  # noqa: F811
    client: Client,
    signing_server: tuple[str, sa.Engine],
    make_follower: Any,
    anvil: Anvil,
) -> None:
    _, row = sponsor(client, signing_server)
    _, kept = sponsor(client, signing_server)
    record(engine, kept)  # its window (10 minutes) has not passed
    follower = make_follower()
    rpc(anvil, "evm_mine")
    now = int(rpc(anvil, "eth_getBlockByNumber", "latest", False)["timestamp"], 16)
    record(engine, row, valid_until=now + 5)  # a short window, so the chain's clock moves only a little
    await follower.step()
    assert ledger_row(engine, row["user_op_hash"])["status"] == "signed"
    rpc(anvil, "evm_increaseTime", 10)
    rpc(anvil, "evm_mine")
    await follower.step()
    assert ledger_row(engine, row["user_op_hash"])["status"] == "expired"
    assert ledger_row(engine, row["user_op_hash"])["tx_hash"] is None
    assert ledger_row(engine, kept["user_op_hash"])["status"] == "signed"


async def test_a_reorg_past_an_inclusion_is_undone_and_read_again(
    engine: sa.Engine,  # noqa: F811
    client: Client,
    signing_server: tuple[str, sa.Engine],
    make_follower: Any,
    anvil: Anvil,
    caplog: pytest.LogCaptureFixture,
) -> None:
    op, row = sponsor(client, signing_server)
    record(engine, row)
    follower = make_follower()
    await follower.step()
    snapshot = rpc(anvil, "evm_snapshot")
    first, block = submit(client, op)
    await follower.step()
    assert ledger_row(engine, row["user_op_hash"])["tx_hash"] == first.tx_hash
    assert rpc(anvil, "evm_revert", snapshot) is True
    for _ in range(3):  # the other branch: empty blocks at and past the inclusion's height
        rpc(anvil, "evm_mine")
    with caplog.at_level(logging.WARNING, logger="anode.watch"):
        await follower.step()
    assert "reorg" in caplog.text
    undone = ledger_row(engine, row["user_op_hash"])
    assert (undone["status"], undone["tx_hash"], undone["block_number"], undone["actual_gas_cost_wei"]) == (
        "signed", None, None, None,
    )  # fmt: skip
    # the operation lands again on the new branch: read again, at its new block
    second, again = submit(client, op)
    await follower.step()
    outcome = ledger_row(engine, row["user_op_hash"])
    assert outcome["status"] == "included"
    assert outcome["block_number"] == again > block
    assert outcome["actual_gas_cost_wei"] == second.events[0].actual_gas_cost


async def test_a_restarted_follower_resumes_without_counting_twice(
    engine: sa.Engine,  # noqa: F811
    client: Client,
    signing_server: tuple[str, sa.Engine],
    make_follower: Any,
    anvil: Anvil,
) -> None:
    first_op, first = sponsor(client, signing_server)
    second_op, second = sponsor(client, signing_server)
    record(engine, first)
    record(engine, second)
    before = make_follower("before")
    await before.step()
    submit(client, first_op)
    (progress,) = await before.step() or []
    assert progress.included == 1
    included_first = ledger_row(engine, first["user_op_hash"])
    # the process dies; its lease times out; a new one starts
    expire_lease(engine)
    submit(client, second_op)
    metrics = Metrics()
    after = make_follower("after", metrics=metrics)
    (progress,) = await after.step() or []
    assert progress.included == 1  # only the second: the first's blocks are behind the cursor
    assert ledger_row(engine, first["user_op_hash"]) == included_first
    assert ledger_row(engine, second["user_op_hash"])["status"] == "included"
    chain = str(client.deployment.chain_id)
    assert counter(metrics, "anode_watch_operations_total", chain=chain, outcome="included") == 1
    (progress,) = await after.step() or []
    assert progress.included == 0
    assert counter(metrics, "anode_watch_operations_total", chain=chain, outcome="included") == 1


async def test_an_inclusion_the_ledger_never_signed_is_recorded_and_alerted(
    engine: sa.Engine,  # noqa: F811
    client: Client,
    signing_server: tuple[str, sa.Engine],
    make_follower: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    op, row = sponsor(client, signing_server)  # signed elsewhere: not in this database
    metrics = Metrics()
    follower = make_follower(metrics=metrics)
    await follower.step()
    result, block = submit(client, op)
    with caplog.at_level(logging.WARNING, logger="anode.watch"):
        await follower.step()
    (unknown,) = follower.store.unknown()
    assert unknown["user_op_hash"] == row["user_op_hash"]
    assert unknown["tx_hash"] == result.tx_hash and unknown["block_number"] == block
    assert unknown["actual_gas_cost_wei"] == result.events[0].actual_gas_cost
    assert row["user_op_hash"] in caplog.text and "never signed" in caplog.text
    labels = {"chain": str(client.deployment.chain_id), "paymaster": row["paymaster"]}
    assert counter(metrics, "anode_watch_unknown_operations_total", **labels) == 1
    with engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(sponsorships)).scalar() == 0


async def test_two_followers_on_one_database_only_one_works(
    engine: sa.Engine,  # noqa: F811
    client: Client,
    signing_server: tuple[str, sa.Engine],
    make_follower: Any,
) -> None:
    first_op, first = sponsor(client, signing_server)
    second_op, second = sponsor(client, signing_server)
    record(engine, first)
    record(engine, second)
    a, b = make_follower("a"), make_follower("b")
    assert await a.step() is not None
    submit(client, first_op)
    assert await b.step() is None  # waits: a holds the lease
    assert ledger_row(engine, first["user_op_hash"])["status"] == "signed"
    assert await a.step() is not None
    assert ledger_row(engine, first["user_op_hash"])["status"] == "included"
    # a crashes: once its lease has expired, b takes over and resumes from a's cursor
    expire_lease(engine)
    submit(client, second_op)
    (progress,) = await b.step() or []
    assert progress.included == 1
    assert ledger_row(engine, second["user_op_hash"])["status"] == "included"
    assert await a.step() is None  # a, back, now waits for b


async def test_a_follower_that_lost_its_lease_writes_nothing(
    engine: sa.Engine,  # noqa: F811
    client: Client,
    signing_server: tuple[str, sa.Engine],
    make_follower: Any,
) -> None:
    op, row = sponsor(client, signing_server)
    record(engine, row)
    a, b = make_follower("a"), make_follower("b")
    assert await a.step() is not None
    expire_lease(engine)
    assert await b.step() is not None
    submit(client, op)
    a.store.take_lease = lambda: True  # type: ignore[method-assign]  # a believes it still leads
    assert await a.step() is None  # its transaction is fenced by the lease b holds
    assert ledger_row(engine, row["user_op_hash"])["status"] == "signed"
    assert await b.step() is not None
    assert ledger_row(engine, row["user_op_hash"])["status"] == "included"


def test_anode_serve_runs_the_follower_and_shows_the_outcome(
    database_url: str,  # noqa: F811
    anvil: Anvil,
    deployment: Deployment,
    paymaster_key: str,
    tmp_path: Path,
) -> None:
    """``watch.enabled``: ``anode serve`` follows the chain; the API and ``anode ops list`` show the outcome."""
    config = {
        **server_config(anvil, deployment, paymaster_key, [(CONTRACT, VERSION)]),
        "database_url": database_url,
        "watch": {"enabled": True, "confirmations": 0, "poll_seconds": 0.1, "start_block": head(anvil) + 1},
    }
    with running_server(config) as base:
        client = Client(base, anvil, deployment, VERSION)
        op, _, _ = client.sponsor()
        result, block = submit(client, op)
        deadline = time.monotonic() + 60
        while True:  # the follower polls every 0.1 s; wait for it, not for a fixed time
            (operation,) = httpx.get(f"{base}/api/v1/operations").json()["operations"]
            if operation["status"] != "signed" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert operation["status"] == "included"
    assert operation["actual_gas_cost_wei"] == str(result.events[0].actual_gas_cost)
    assert operation["actual_gas_used"] == str(result.events[0].actual_gas_used)
    assert (operation["tx_hash"], operation["block_number"], operation["success"]) == (result.tx_hash, block, True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    listed = subprocess.run(
        [sys.executable, "-m", "anode.cli", "ops", "list", "--config", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (line,) = [line for line in listed.splitlines() if line.endswith(operation["user_op_hash"])]
    assert f" included {result.events[0].actual_gas_cost:>22} " in line


async def test_the_follower_starts_and_stops_with_anode_and_hands_its_lease_back(
    database_url: str,  # noqa: F811
    engine: sa.Engine,  # noqa: F811
    anvil: Anvil,
    deployment: Deployment,
    paymaster_key: str,
) -> None:
    config = {
        **server_config(anvil, deployment, paymaster_key, [(CONTRACT, VERSION)]),
        "database_url": database_url,
        "watch": {"enabled": True, "confirmations": 0, "poll_seconds": 0.05},
    }
    anode = build(validate_settings(config))
    try:
        await anode.start()
        assert anode.follower is not None
        for _ in range(200):  # its first pass takes the lease
            if anode.follower.leading:
                break
            await asyncio.sleep(0.05)
        assert anode.follower.leading
        with engine.connect() as connection:
            assert connection.execute(sa.select(watch_lease.c.holder)).scalars().all() == [anode.follower.holder]
    finally:
        await anode.aclose()
    assert not anode.follower.leading
    with engine.connect() as connection:  # released: another process takes over at once
        assert connection.execute(sa.select(watch_lease.c.holder)).scalars().all() == []
