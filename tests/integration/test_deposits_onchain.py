"""Paymaster deposits (``anode/watch/deposits.py``) against anvil and the real EntryPoints.

The deposit each test expects is read from the EntryPoint with the dev chain's own client
(``DevRpc``), not through aNode. Thresholds are set around the sandbox's real deposit (100 ETH),
so a deposit is "low" without draining it; the monitor's clock is the test's, so "ten minutes
later" needs no waiting. Alerts go to a local receiver (``tests/support/http_server.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
import yaml
from aiohttp import web
from pydantic import SecretStr

from anode.chain.client import ChainClient
from anode.config import AlertSettings, DepositSettings, SecretEndpoint
from anode.devchain.anvil import DEFAULT_ACCOUNT_KEYS, Anvil
from anode.devchain.deploy import Deployment
from anode.devchain.rpc import DevRpc
from anode.errors import DepositTooLow
from anode.metrics import Metrics
from anode.policy.webhooks import verify_signature
from anode.store.database import create_engine
from anode.store.deposits import DepositStore
from anode.store.tables import sponsorships
from anode.userop.codec import parse_address
from anode.watch.deposits import DepositMonitor, WatchedDeposit
from tests.support.databases import database_url, engine  # noqa: F401 (fixtures)
from tests.support.http_server import serving_posts
from tests.support.postgres import emptied, fresh_pg_database
from tests.support.server import rpc, running_server
from tests.support.wallet import Client, paymaster_of, rpc_op, server_config

VERSION = "v0.7"
SECRET = "alert-secret-3b1f0c"  # never in a log line
FUNDING_KEY = DEFAULT_ACCOUNT_KEYS[3]
T0 = 1_800_000_000.0


@pytest.fixture(scope="module")
def pg_module_url() -> Iterator[str]:
    with fresh_pg_database("anode_deposits") as url:
        yield url


@pytest.fixture
def pg_url(pg_module_url: str) -> str:
    """The module's PostgreSQL database, emptied before each test."""
    return emptied(pg_module_url)


def onchain_deposit(anvil: Anvil, entry_point: str, paymaster: str) -> int:
    with DevRpc(anvil.rpc_url) as node:
        (value,) = node.call_function(entry_point, "balanceOf(address)", ["address"], [paymaster], ["uint256"])
    return int(value)


@pytest.fixture
async def node(anvil: Anvil) -> AsyncIterator[ChainClient]:
    chain = ChainClient(anvil.rpc_url)
    yield chain
    await chain.aclose()


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Receiver:
    """The operator's webhook: every POST kept; answers ``statuses`` in turn, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.statuses = list(statuses or [])

    async def handle(self, request: web.Request) -> web.Response:
        self.posts.append((dict(request.headers), await request.read()))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)


def watched(
    node: ChainClient, deployment: Deployment, contract: str = "singleton", threshold: int | None = None
) -> WatchedDeposit:
    return WatchedDeposit(
        deployment.chain_id,
        node,
        parse_address(deployment.entry_points[VERSION]),
        parse_address(paymaster_of(deployment, contract, VERSION)),
        threshold,
    )


def monitor(
    engine: sa.Engine,  # noqa: F811
    targets: list[WatchedDeposit],
    clock: Clock,
    url: str | None = None,
    *,
    secret: str = SECRET,
    repeat_minutes: float = 10,
    metrics: Metrics | None = None,
) -> DepositMonitor:
    alerts = AlertSettings(
        webhook_url=SecretEndpoint(url) if url else None,
        webhook_secret=SecretStr(secret) if url else None,
        repeat_minutes=repeat_minutes,
    )
    return DepositMonitor(targets, DepositSettings(poll_seconds=30), alerts, engine, metrics, clock=clock)


async def test_the_gauge_and_the_samples_hold_the_onchain_deposit(
    engine: sa.Engine,  # noqa: F811
    node: ChainClient,
    anvil: Anvil,
    deployment: Deployment,
) -> None:
    target = watched(node, deployment)
    expected = onchain_deposit(anvil, deployment.entry_points[VERSION], paymaster_of(deployment, "singleton", VERSION))
    metrics, clock = Metrics(), Clock()
    deposits = monitor(engine, [target], clock, metrics=metrics)
    try:
        (reading,) = await deposits.refresh()
        labels = {
            "chain": str(deployment.chain_id),
            "entry_point": target.key.entry_point,
            "paymaster": target.key.paymaster,
        }
        assert reading.deposit_wei == expected
        assert metrics.registry.get_sample_value("anode_paymaster_deposit_wei", labels) == float(expected)
        assert metrics.registry.get_sample_value("anode_paymaster_deposit_low", labels) == 0.0
        clock.now += 5  # within the interval: no second sample
        await deposits.refresh()
        clock.now += 30
        await deposits.refresh()
        samples = DepositStore(engine).samples(paymaster=target.key.paymaster)
        assert [(s.deposit_wei, s.sampled_at.timestamp()) for s in samples] == [(expected, T0), (expected, T0 + 35)]
        clock.now += 31 * 86_400  # past the 30 days kept
        await deposits.refresh()
        assert [s.sampled_at.timestamp() for s in DepositStore(engine).samples()] == [clock.now]
    finally:
        await deposits.aclose()


async def test_a_low_deposit_alerts_once_per_interval_with_a_valid_signature(
    engine: sa.Engine,  # noqa: F811
    node: ChainClient,
    anvil: Anvil,
    deployment: Deployment,
    caplog: pytest.LogCaptureFixture,
) -> None:
    paymaster = paymaster_of(deployment, "singleton", VERSION)
    deposit = onchain_deposit(anvil, deployment.entry_points[VERSION], paymaster)
    receiver, clock = Receiver(), Clock()
    async with serving_posts(receiver.handle) as url:
        low = monitor(engine, [watched(node, deployment, threshold=deposit + 1)], clock, url)
        funded = monitor(engine, [watched(node, deployment, threshold=1)], clock, url)
        try:
            with caplog.at_level(logging.WARNING, logger="anode.deposits"):
                await low.refresh()
                clock.now += 60
                await low.refresh()  # a minute later: still low, not alerted again
                assert len(receiver.posts) == 1
                assert len([r for r in caplog.records if "below its low_balance_wei" in r.message]) == 1
                clock.now += 10 * 60
                await low.refresh()  # past repeat_minutes: alerted again
                assert len(receiver.posts) == 2
                clock.now += 60
                await funded.refresh()  # recovered (here: a lower threshold) ...
                await low.refresh()  # ... and low again a minute later: alerted at once
                assert len(receiver.posts) == 3
        finally:
            await low.aclose()
            await funded.aclose()
    headers, body = receiver.posts[0]
    assert verify_signature(SECRET.encode(), body, headers, now=T0)
    assert not verify_signature(b"another-secret", body, headers, now=T0)
    assert not verify_signature(SECRET.encode(), body.replace(b'"depositWei"', b'"depositWEI"'), headers, now=T0)
    alert = orjson.loads(body)
    assert alert["type"] == "paymaster.deposit.low"
    assert alert["timestamp"] == int(T0) and headers["X-Anode-Timestamp"] == str(int(T0))
    assert (alert["chainId"], alert["paymaster"], alert["entryPoint"]) == (
        deployment.chain_id,
        paymaster,
        deployment.entry_points[VERSION],
    )
    assert (alert["depositWei"], alert["lowBalanceWei"]) == (str(deposit), str(deposit + 1))
    assert len({h["X-Anode-Delivery"] for h, _ in receiver.posts}) == 3


async def test_several_processes_on_one_database_send_one_alert(
    engine: sa.Engine,  # noqa: F811
    node: ChainClient,
    deployment: Deployment,
) -> None:
    receiver, clock = Receiver(), Clock()
    async with serving_posts(receiver.handle) as url:
        servers = [monitor(engine, [watched(node, deployment, threshold=10**30)], clock, url) for _ in range(3)]
        try:
            await asyncio.gather(*(server.refresh() for server in servers))
            assert len(receiver.posts) == 1
            samples = DepositStore(engine).samples()
            assert len(samples) == 1
        finally:
            for server in servers:
                await server.aclose()


async def test_a_failed_alert_is_sent_again_at_the_next_read_and_no_secret_is_logged(
    engine: sa.Engine,  # noqa: F811
    node: ChainClient,
    deployment: Deployment,
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver, clock = Receiver([500]), Clock()
    async with serving_posts(receiver.handle) as url:
        hook = f"{url}?token=hook-token-77"
        deposits = monitor(engine, [watched(node, deployment, threshold=10**30)], clock, hook)
        try:
            with caplog.at_level(logging.DEBUG):
                await deposits.refresh()
                clock.now += 30
                await deposits.refresh()
        finally:
            await deposits.aclose()
    assert len(receiver.posts) == 2  # the first answered 500: sent again 30 s later, not 10 minutes
    # every line but the test receiver's own access log (it is the operator's server, not aNode)
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name != "aiohttp.access")
    assert "answered HTTP 500" in logged
    assert SECRET not in logged and "hook-token-77" not in logged
    assert SECRET not in repr(deposits.alerts) and "hook-token-77" not in repr(deposits.alerts)


@pytest.fixture(scope="module")
def served(
    anvil: Anvil, deployment: Deployment, paymaster_key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, sa.Engine]]:
    """A server with two paymasters: the singleton v0.7's threshold above its deposit, the verifying v0.6's below."""
    database = f"sqlite:///{tmp_path_factory.mktemp('deposits') / 'anode.db'}"
    config = server_config(anvil, deployment, paymaster_key, [("singleton", VERSION), ("verifying", "v0.6")])
    config["database_url"] = database
    config["chains"][0]["paymasters"][0]["low_balance_wei"] = 10**30
    config["chains"][0]["paymasters"][1]["low_balance_wei"] = 1
    config["server"] = {"health_cache_seconds": 0}
    with running_server(config) as base:
        ledger = create_engine(database)
        yield base, ledger
        ledger.dispose()


def test_health_and_metrics_show_each_deposit_with_its_threshold(
    served: tuple[str, sa.Engine], anvil: Anvil, deployment: Deployment
) -> None:
    base, _ = served
    singleton, verifying = paymaster_of(deployment, "singleton", VERSION), paymaster_of(deployment, "verifying", "v0.6")
    reply = httpx.get(f"{base}/health")
    assert reply.status_code == 503 and reply.json()["status"] == "degraded"
    entries = {entry["address"]: entry for entry in reply.json()["chains"][0]["paymasters"]}
    low = onchain_deposit(anvil, deployment.entry_points[VERSION], singleton)
    assert entries[singleton]["deposit"] == str(low)
    assert (entries[singleton]["lowBalanceWei"], entries[singleton]["depositStatus"]) == (str(10**30), "low")
    assert (entries[verifying]["lowBalanceWei"], entries[verifying]["depositStatus"]) == ("1", "ok")
    metrics = httpx.get(f"{base}/metrics").text
    labels = f'chain="{deployment.chain_id}",entry_point="{deployment.entry_points[VERSION]}",paymaster="{singleton}"'
    gauge = next(line for line in metrics.splitlines() if line.startswith(f"anode_paymaster_deposit_wei{{{labels}}}"))
    assert float(gauge.split()[-1]) == float(low)
    assert f"anode_paymaster_deposit_low{{{labels}}} 1.0" in metrics


def test_an_operation_the_deposit_cannot_pay_for_is_refused_and_not_recorded(
    served: tuple[str, sa.Engine], anvil: Anvil, deployment: Deployment
) -> None:
    base, ledger = served
    client = Client(base, anvil, deployment, VERSION)
    paymaster = paymaster_of(deployment, "singleton", VERSION)
    deposit = onchain_deposit(anvil, client.entry_point, paymaster)
    op = client.new_op()
    fee = deposit // 1_000_000  # the op's 1.36M gas at this fee cost more than the whole deposit
    costly = rpc_op(op, VERSION) | {"maxFeePerGas": hex(fee), "maxPriorityFeePerGas": hex(fee)}
    params = [costly, client.entry_point, hex(deployment.chain_id), {}]
    reply = rpc(base, "pm_getPaymasterData", params)
    error = reply["error"]
    assert (error["code"], error["data"]["anodeCode"]) == (-32501, "ANODE_050_DEPOSIT_TOO_LOW"), error
    assert error["data"]["depositWei"] == str(deposit)
    assert int(error["data"]["requiredWei"]) > deposit
    assert str(deposit) in error["message"] and error["data"]["requiredWei"] in error["message"]
    with ledger.connect() as connection:
        rows = connection.execute(sa.select(sponsorships).where(sponsorships.c.sender == op.sender)).all()
    assert rows == []
    signed, _, _ = client.sponsor()  # an operation within the deposit is signed (and recorded) as ever
    assert client.submit(signed).success
    with ledger.connect() as connection:
        rows = connection.execute(sa.select(sponsorships).where(sponsorships.c.sender == signed.sender)).all()
    assert len(rows) == 1


def cli(*args: str, config: Path, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANODE_FUNDING__PRIVATE_KEY": FUNDING_KEY}
    return subprocess.run(
        [sys.executable, "-m", "anode.cli", "deposit", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        input=stdin,
        env=env,
    )


@pytest.fixture
def cli_config(anvil: Anvil, deployment: Deployment, paymaster_key: str, tmp_path: Path) -> Path:
    config: dict[str, Any] = server_config(anvil, deployment, paymaster_key, [("verifying", VERSION)])
    config["chains"][0]["paymasters"][0]["low_balance_wei"] = 10**30
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_deposit_add_raises_the_deposit_and_show_prints_it(
    cli_config: Path, anvil: Anvil, deployment: Deployment
) -> None:
    paymaster, entry_point = paymaster_of(deployment, "verifying", VERSION), deployment.entry_points[VERSION]
    before = onchain_deposit(anvil, entry_point, paymaster)
    added = cli("add", "--paymaster", paymaster.lower(), "--amount", "1.5eth", "--yes", config=cli_config)
    assert added.returncode == 0, added.stderr
    after = onchain_deposit(anvil, entry_point, paymaster)
    assert after == before + 15 * 10**17
    tx_hash = next(line.split()[1] for line in added.stdout.splitlines() if line.startswith("transaction "))
    with DevRpc(anvil.rpc_url) as node:
        receipt = node.call("eth_getTransactionReceipt", tx_hash)
    assert receipt["to"].lower() == entry_point.lower() and receipt["status"] == "0x1"
    assert f"is now {after} wei" in added.stdout
    shown = cli("show", config=cli_config)
    assert shown.returncode == 0, shown.stderr
    row = next(line for line in shown.stdout.splitlines() if paymaster in line).split()
    assert row[-3:] == [str(after), str(10**30), "low"]
    for output in (added.stdout + added.stderr, shown.stdout + shown.stderr):
        assert FUNDING_KEY.removeprefix("0x") not in output


def test_deposit_add_sends_nothing_unless_confirmed(cli_config: Path, anvil: Anvil, deployment: Deployment) -> None:
    paymaster, entry_point = paymaster_of(deployment, "verifying", VERSION), deployment.entry_points[VERSION]
    before = onchain_deposit(anvil, entry_point, paymaster)
    for answer in ("", "n\n", "no\n"):
        refused = cli("add", "--paymaster", paymaster, "--amount", "1eth", config=cli_config, stdin=answer)
        assert refused.returncode == 1 and "not sent" in refused.stderr
        assert "send this transaction? [y/N]" in refused.stdout
    assert onchain_deposit(anvil, entry_point, paymaster) == before
    confirmed = cli("add", "--paymaster", paymaster, "--amount", "1gwei", config=cli_config, stdin="y\n")
    assert confirmed.returncode == 0, confirmed.stderr
    assert onchain_deposit(anvil, entry_point, paymaster) == before + 10**9


async def test_two_server_processes_on_one_database_send_one_alert(
    anvil: Anvil, deployment: Deployment, paymaster_key: str, pg_url: str
) -> None:
    """``anode serve --workers 2`` on PostgreSQL: each worker reads the low deposit as it starts,
    and the receiver gets one alert, not one per process."""
    receiver = Receiver()
    config = server_config(anvil, deployment, paymaster_key, [("singleton", VERSION)])
    config["chains"][0]["paymasters"][0]["low_balance_wei"] = 10**30
    config |= {"database_url": pg_url, "deposits": {"poll_seconds": 3600}}
    pids: set[str] = set()
    async with serving_posts(receiver.handle) as url:
        config["alerts"] = {"webhook_url": url, "webhook_secret": SECRET}
        with contextlib.ExitStack() as stack:
            base = await asyncio.to_thread(stack.enter_context, running_server(config, workers=2))
            async with httpx.AsyncClient() as scraper:
                for _ in range(200):  # every scrape a new connection, which either worker may take
                    text = (await scraper.get(f"{base}/metrics", headers={"connection": "close"})).text
                    pids |= set(re.findall(r'^anode_worker_info\{pid="(\d+)"\} 1\.0$', text, re.MULTILINE))
                    if len(pids) == 2:
                        break
            await asyncio.to_thread(stack.close)
    assert len(pids) == 2, "one worker answered every scrape of /metrics"
    assert len(receiver.posts) == 1  # both workers had started (and read the deposit) before they answered
    headers, body = receiver.posts[0]
    assert verify_signature(SECRET.encode(), body, headers)


async def test_the_guard_counts_what_was_signed_since_the_deposit_was_read(
    engine: sa.Engine,  # noqa: F811
    node: ChainClient,
    anvil: Anvil,
    deployment: Deployment,
) -> None:
    target = watched(node, deployment)
    deposit = onchain_deposit(anvil, deployment.entry_points[VERSION], paymaster_of(deployment, "singleton", VERSION))
    deposits = monitor(engine, [target], Clock())
    try:
        deposits.guard(deployment.chain_id, target.entry_point, deposit + 1)  # nothing read yet: nothing to judge
        await deposits.refresh()
        with pytest.raises(DepositTooLow) as caught:
            deposits.guard(deployment.chain_id, target.entry_point, deposit + 1)
        assert caught.value.data is not None and caught.value.data["inFlightWei"] == "0"
        deposits.guard(deployment.chain_id, target.entry_point, deposit * 6 // 10)
        with pytest.raises(DepositTooLow) as caught:  # fits the deposit alone, not beside the first
            deposits.guard(deployment.chain_id, target.entry_point, deposit * 6 // 10)
        assert caught.value.code == "ANODE_050_DEPOSIT_TOO_LOW"
        assert caught.value.data is not None and caught.value.data["inFlightWei"] == str(deposit * 6 // 10)
        await deposits.refresh()  # a new read: what was signed before it is in (or out of) the new value
        deposits.guard(deployment.chain_id, target.entry_point, deposit * 6 // 10)
    finally:
        await deposits.aclose()
