"""Reconciliation against anvil and the real EntryPoint: amount limits count what was really spent.

A real ``anode serve`` signs with a policy engine whose amount limits live in SQLite, PostgreSQL
or Redis (one server per backend); the test runs the follower itself, on the server's database
and with a limiter on the server's store, so each step is taken when the test says. Every
operation comes from a new account, and the server's policy ``per-wallet`` counts each wallet on
its own, so the tests share a server without sharing counters. Reorgs are anvil's
``evm_snapshot`` / ``evm_revert``; time passing is ``evm_increaseTime`` and ``evm_mine``.
Also here: ``anode policy status`` on the server's settings, the Redis lease, a range read twice,
and the token amount an ERC-20 operation paid (SingletonPaymaster's ``UserOperationSponsored``).
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml
from eth_utils.address import to_checksum_address
from redis.asyncio import Redis

from anode.chain.client import ChainClient
from anode.config import WatchSettings
from anode.devchain.anvil import Anvil
from anode.devchain.deploy import Deployment
from anode.devchain.rpc import DevRpc
from anode.policy.limits import Bucket, LimiterStore, RedisLimiter, SqlLimiter
from anode.store import reconcile as outbox
from anode.store.database import create_engine, upgrade
from anode.store.tables import sponsorships
from anode.store.watch import watch_cursors
from anode.userop.codec import parse_address
from anode.watch.follower import Follower, WatchedChain
from tests.contracts.solidity import compiled
from tests.integration import test_singleton_erc20_onchain as erc20_tests
from tests.support import erc20
from tests.support.onchain import HandleOpsResult, UserOp, get_user_op_hash
from tests.support.postgres import fresh_pg_database
from tests.support.server import running_server
from tests.support.wallet import Client, paymaster_of, rpc_op, server_config, with_paymaster

CONTRACT, VERSION = "singleton", "v0.7"
ADMIN_KEY = "admin-" + secrets.token_hex(16)
PROJECT_KEY = "project-" + secrets.token_hex(16)
REDIS_URL = "redis://127.0.0.1:6379/0"
#: the followers' lease (its key is ``anode:watch:follower``): a database of its own
LEASE_URL = "redis://127.0.0.1:6379/7"
#: room for a few operations per wallet (one costs at most ~10**15 wei here)
WALLET_LIMIT = 10**18


@dataclass
class Setup:
    url: str
    engine: sa.Engine
    backend: str
    redis_prefix: str | None
    #: the server's settings file, for ``anode`` commands
    config_path: Path


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "redis"])
def setup(
    request: pytest.FixtureRequest,
    anvil: Anvil,
    deployment: Deployment,
    paymaster_key: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Setup]:
    backend = request.param
    with fresh_pg_database("anode_reconcile") as pg_url:
        url = pg_url if backend == "postgresql" else f"sqlite:///{tmp_path_factory.mktemp('reconcile') / 'a.db'}"
        engine = create_engine(url)
        upgrade(engine)
        prefix = f"reconcile:{secrets.token_hex(4)}:{{limits}}:" if backend == "redis" else None
        limiter: dict[str, Any] = {"limiter": "redis", "redis_prefix": prefix} if prefix else {"limiter": "sql"}
        config = {
            **server_config(anvil, deployment, paymaster_key, [(CONTRACT, VERSION)]),
            "database_url": url,
            "auth": {"api_keys": [PROJECT_KEY], "admin_keys": [ADMIN_KEY]},
            "pipeline": {
                "modules": [
                    {"name": "policy_engine", "config": {**limiter, "refresh_seconds": 0}},
                    {"name": "paymaster_signer"},
                ]
            },
            "policies": [
                {
                    "id": "per-wallet",
                    "name": "per-wallet",
                    "type": "wallet",
                    "target": "*",
                    "rate_limits": [{"type": "amount", "limit": str(WALLET_LIMIT)}, {"type": "request", "limit": 100}],
                }
            ],
        }
        if prefix:
            config["redis_url"] = REDIS_URL
        config_path = tmp_path_factory.mktemp("config") / "anode.yaml"
        config_path.write_text(yaml.safe_dump(config))
        with running_server(config) as base:
            yield Setup(base, engine, backend, prefix, config_path)
        engine.dispose()


@pytest.fixture
async def limiter(setup: Setup) -> AsyncIterator[LimiterStore]:
    if setup.redis_prefix is not None:
        redis = Redis.from_url(REDIS_URL)
        yield RedisLimiter(redis, prefix=setup.redis_prefix)
        await redis.aclose()
    else:
        store = SqlLimiter(setup.engine)
        yield store
        await store.aclose()


@pytest.fixture
async def node(anvil: Anvil) -> AsyncIterator[ChainClient]:
    chain = ChainClient(anvil.rpc_url)
    yield chain
    await chain.aclose()


@pytest.fixture
def make_follower(
    setup: Setup, node: ChainClient, deployment: Deployment, limiter: LimiterStore, anvil: Anvil
) -> Iterator[Any]:
    """Followers on the server's database; their leases are handed back after the test."""
    start = head(anvil) + 1
    made: list[Follower] = []

    def make(holder: str = "test", redis_url: str | None = None) -> Follower:
        chain = WatchedChain(
            deployment.chain_id,
            node,
            (parse_address(deployment.entry_points[VERSION]),),
            (parse_address(paymaster_of(deployment, CONTRACT, VERSION)),),
            confirmations=0,
        )
        lease = "redis" if redis_url else "database"
        settings = WatchSettings(enabled=True, confirmations=0, start_block=start, lease_seconds=60, lease=lease)
        follower = Follower(setup.engine, [chain], settings, holder=holder, limiter=limiter, redis_url=redis_url)
        made.append(follower)
        return follower

    yield make
    for follower in made:
        follower.store.release_lease()


class Wallet(Client):
    """The test's client, with the project key."""

    def call(self, method: str, op: UserOp, context: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": method,
            "params": [rpc_op(op, self.version), self.entry_point, hex(self.deployment.chain_id), context or {}],
        }
        reply = httpx.post(f"{self.url}/api/v1/rpc", json=body, headers=_auth(PROJECT_KEY), timeout=30).json()
        if "result" not in reply:
            raise Refused(reply["error"])
        result: dict[str, Any] = reply["result"]
        return result

    def sponsor_again(self, op: UserOp) -> tuple[UserOp, dict[str, Any], dict[str, Any]]:
        """A second signature for the same operation (same account, same nonce)."""
        stub = self.call("pm_getPaymasterStubData", op)
        final = self.call("pm_getPaymasterData", op)
        return with_paymaster(op, self.version, final), stub, final


class Refused(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message"))
        self.error = error


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture
def wallet(setup: Setup, anvil: Anvil, deployment: Deployment) -> Wallet:
    return Wallet(setup.url, anvil, deployment, VERSION)


def rpc(anvil: Anvil, method: str, *params: Any) -> Any:
    with DevRpc(anvil.rpc_url) as node:
        return node.call(method, *params)


def head(anvil: Anvil) -> int:
    return int(rpc(anvil, "eth_blockNumber"), 16)


def op_hash(wallet: Wallet, op: UserOp) -> str:
    return "0x" + get_user_op_hash(wallet.anvil.rpc_url, wallet.entry_point, VERSION, op).hex()


def row_of(engine: sa.Engine, user_op_hash: str) -> dict[str, Any]:
    with engine.connect() as connection:
        query = sa.select(sponsorships).where(sponsorships.c.user_op_hash == user_op_hash)
        return dict(connection.execute(query.order_by(sponsorships.c.id.desc())).mappings().first() or {})


def submit(wallet: Wallet, op: UserOp) -> HandleOpsResult:
    result = wallet.submit(op)
    assert result.success, result.reason
    return result


def status(setup: Setup, policy_id: str, sender: str) -> dict[str, Any]:
    reply = httpx.get(
        f"{setup.url}/api/v1/policies/{policy_id}/status", params={"wallet": sender}, headers=_auth(ADMIN_KEY)
    )
    assert reply.status_code == 200, reply.text
    (amount,) = [limit for limit in reply.json()["limits"] if limit["type"] == "amount"]
    return {key: int(amount[key]) for key in ("used", "spent", "reserved", "remaining")}


def counter_key(policy_id: str, sender: str) -> Bucket:
    return Bucket(f"{policy_id}:amount:0:{sender}", 0, 0, 0)


async def test_an_included_operation_counts_its_exact_actual_cost(
    setup: Setup, wallet: Wallet, make_follower: Any, limiter: LimiterStore
) -> None:
    op, _, _ = wallet.sponsor()
    signed = row_of(setup.engine, op_hash(wallet, op))
    maximum = signed["max_gas_cost_wei"]
    (reservation,) = outbox.reservations(setup.engine, signed["chain_id"], signed["user_op_hash"])
    assert (reservation["amount"], reservation["state"]) == (maximum, "reserved")
    assert status(setup, "per-wallet", signed["sender"]) == {
        "used": maximum, "spent": 0, "reserved": maximum, "remaining": WALLET_LIMIT - maximum,
    }  # fmt: skip
    follower = make_follower()
    await follower.step()
    (event,) = submit(wallet, op).events
    (progress,) = await follower.step() or []
    assert progress.reconciled == 1
    actual = row_of(setup.engine, signed["user_op_hash"])["actual_gas_cost_wei"]
    assert actual == event.actual_gas_cost < maximum
    assert status(setup, "per-wallet", signed["sender"]) == {
        "used": actual, "spent": actual, "reserved": 0, "remaining": WALLET_LIMIT - actual,
    }  # fmt: skip
    assert await follower.step() is not None  # a pass with nothing new changes nothing
    assert await limiter.usage([counter_key("per-wallet", signed["sender"])]) == [actual]
    command = ["policy", "status", "per-wallet", "--wallet", signed["sender"], "--config", str(setup.config_path)]
    shown = subprocess.run(
        [sys.executable, "-m", "anode.cli", *command], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    (amount,) = [line.split() for line in shown.splitlines() if line.startswith("amount")]
    assert amount[3:6] == [str(actual), str(actual), "0"]  # used, spent, reserved


async def test_an_expired_reservation_is_released_and_a_full_limit_accepts_again(
    setup: Setup, wallet: Wallet, make_follower: Any, anvil: Anvil
) -> None:
    op, _, _ = wallet.sponsor()
    first = row_of(setup.engine, op_hash(wallet, op))
    maximum, sender = first["max_gas_cost_wei"], first["sender"]
    tight = {
        "id": "tight-" + secrets.token_hex(4), "name": "tight", "type": "wallet", "target": sender,
        "rate_limits": [{"type": "amount", "limit": str(maximum * 3 // 2)}],
    }  # fmt: skip
    reply = httpx.post(f"{setup.url}/api/v1/policies", json=tight, headers=_auth(ADMIN_KEY))
    assert reply.status_code == 201, reply.text
    again, _, _ = wallet.sponsor_again(op)
    with pytest.raises(Refused) as refused:
        wallet.sponsor_again(op)  # the tight limit holds one reservation, not two
    assert "limit" in str(refused.value).lower()
    follower = make_follower()
    await follower.step()
    rpc(anvil, "evm_mine")
    now = int(rpc(anvil, "eth_getBlockByNumber", "latest", False)["timestamp"], 16)
    with setup.engine.begin() as connection:  # a short window, so the chain's clock moves only a little
        connection.execute(sa.update(sponsorships).where(sponsorships.c.sender == sender).values(valid_until=now + 5))
    rpc(anvil, "evm_increaseTime", 10)
    rpc(anvil, "evm_mine")
    await follower.step()
    assert row_of(setup.engine, op_hash(wallet, again))["status"] == "expired"
    assert status(setup, tight["id"], sender)["used"] == 0
    wallet.sponsor_again(op)  # the released room takes the operation again
    assert status(setup, tight["id"], sender)["reserved"] == maximum
    httpx.delete(f"{setup.url}/api/v1/policies/{tight['id']}", headers=_auth(ADMIN_KEY))


async def test_a_follower_that_crashes_before_recording_the_adjustment_counts_it_once(
    setup: Setup, wallet: Wallet, make_follower: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    op, _, _ = wallet.sponsor()
    signed = row_of(setup.engine, op_hash(wallet, op))
    follower = make_follower()
    await follower.step()
    (event,) = submit(wallet, op).events

    def crash(engine: sa.Engine, ids: Any) -> None:
        raise RuntimeError("killed between applying the adjustment and recording it")

    with monkeypatch.context() as patched:
        patched.setattr(outbox, "mark_applied", crash)
        with pytest.raises(RuntimeError):
            await follower.step()
    assert outbox.pending(setup.engine)  # applied to the limiter, not recorded as applied
    restarted = make_follower()
    await restarted.step()  # applies it again: the limiter store ignores an id it has applied
    assert outbox.pending(setup.engine) == []
    assert status(setup, "per-wallet", signed["sender"])["used"] == event.actual_gas_cost


async def test_a_reorg_past_an_inclusion_restores_the_reservation_and_reads_it_again(
    setup: Setup, wallet: Wallet, make_follower: Any, anvil: Anvil
) -> None:
    op, _, _ = wallet.sponsor()
    signed = row_of(setup.engine, op_hash(wallet, op))
    maximum, sender = signed["max_gas_cost_wei"], signed["sender"]
    follower = make_follower()
    await follower.step()
    snapshot = rpc(anvil, "evm_snapshot")
    (first,) = submit(wallet, op).events
    await follower.step()
    assert status(setup, "per-wallet", sender)["spent"] == first.actual_gas_cost
    assert rpc(anvil, "evm_revert", snapshot) is True
    for _ in range(3):
        rpc(anvil, "evm_mine")
    await follower.step()
    assert status(setup, "per-wallet", sender) == {
        "used": maximum, "spent": 0, "reserved": maximum, "remaining": WALLET_LIMIT - maximum,
    }  # fmt: skip
    (second,) = submit(wallet, op).events
    await follower.step()
    assert status(setup, "per-wallet", sender)["spent"] == second.actual_gas_cost
    assert status(setup, "per-wallet", sender)["used"] == second.actual_gas_cost


@pytest.fixture
def redis_lease() -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(LEASE_URL)
    client.delete("anode:watch:follower")
    yield LEASE_URL
    client.delete("anode:watch:follower")
    client.close()


async def test_with_the_redis_lease_one_follower_works_and_another_takes_over(
    setup: Setup, wallet: Wallet, make_follower: Any, redis_lease: str
) -> None:
    import redis

    first_op, _, _ = wallet.sponsor()
    second_op, _, _ = wallet.sponsor()
    first, second = (row_of(setup.engine, op_hash(wallet, op)) for op in (first_op, second_op))
    a, b = make_follower("a", redis_lease), make_follower("b", redis_lease)
    assert await a.step() is not None
    submit(wallet, first_op)
    assert await b.step() is None  # waits: a holds the lease in Redis
    assert row_of(setup.engine, first["user_op_hash"])["status"] == "signed"
    assert await a.step() is not None
    assert row_of(setup.engine, first["user_op_hash"])["status"] == "included"
    redis.Redis.from_url(redis_lease).delete("anode:watch:follower")  # a crashed and its lease ran out
    (event,) = submit(wallet, second_op).events
    (progress,) = await b.step() or []
    assert (progress.included, progress.reconciled) == (1, 1)
    assert status(setup, "per-wallet", second["sender"])["used"] == event.actual_gas_cost
    assert await a.step() is None  # a, back, now waits for b
    third_op, _, _ = wallet.sponsor()
    submit(wallet, third_op)
    a.store.take_lease = lambda: True  # type: ignore[method-assign]  # a believes it still leads
    assert await a.step() is None  # its transaction is fenced by the lease b holds
    assert row_of(setup.engine, op_hash(wallet, third_op))["status"] == "signed"


async def test_a_range_read_twice_counts_each_inclusion_once(
    setup: Setup, wallet: Wallet, make_follower: Any, redis_lease: str
) -> None:
    """A follower that reads blocks another already recorded (its cursor was older) changes nothing."""
    ops = [wallet.sponsor()[0] for _ in range(2)]
    rows = [row_of(setup.engine, op_hash(wallet, op)) for op in ops]
    a, b = make_follower("a", redis_lease), make_follower("b", redis_lease)
    await a.step()
    with setup.engine.connect() as connection:
        before = connection.execute(sa.select(watch_cursors.c.last_block)).scalar_one()
    events = [submit(wallet, op).events[0] for op in ops]
    await a.step()
    a.store.release_lease()
    with setup.engine.begin() as connection:
        connection.execute(sa.update(watch_cursors).values(last_block=before))
    (progress,) = await b.step() or []
    assert progress.included == 2  # read and written again
    assert progress.reconciled == 0  # but the reservations were already turned
    for row, event in zip(rows, events, strict=True):
        assert status(setup, "per-wallet", row["sender"])["used"] == event.actual_gas_cost
        assert status(setup, "per-wallet", row["sender"])["reserved"] == 0


async def test_an_erc20_inclusion_records_the_token_amount_of_user_operation_sponsored(
    setup: Setup, make_follower: Any, anvil: Anvil, deployment: Deployment, paymaster_key: str
) -> None:
    """An operation paid in a test ERC-20 (signed as aNode signs it, its row recorded by hand)."""
    with DevRpc(anvil.rpc_url) as node:
        receipt = node.transact(node.accounts()[0], None, compiled()["PointsToken"].creation_code())
    token = to_checksum_address(receipt["contractAddress"])
    sponsor = erc20.Erc20Sponsor(anvil, deployment, VERSION, paymaster_key)
    op = erc20.new_op(sponsor, erc20.approve_paymaster(token, sponsor.paymaster_address))
    erc20.mint(anvil, token, op.sender, erc20_tests.TOKENS_MINTED)
    window = erc20.latest_window(anvil)
    signed = sponsor.sponsor(op, window, erc20_tests._terms(token))
    user_op_hash = "0x" + get_user_op_hash(anvil.rpc_url, sponsor.entry_point, VERSION, signed).hex()
    with setup.engine.begin() as connection:
        connection.execute(
            sponsorships.insert().values(
                created_at=datetime.now(UTC), user_op_hash=user_op_hash, chain_id=deployment.chain_id,
                entry_point=sponsor.entry_point, paymaster=sponsor.paymaster_address, sender=op.sender, nonce=0,
                max_gas_cost_wei=10**18, valid_until=window.valid_until, valid_after=window.valid_after,
                signer="0x" + "00" * 20, method="pm_getPaymasterData", mode="erc20", token=token,
            )
        )  # fmt: skip
    follower = make_follower()
    await follower.step()
    outcome = sponsor.submit(signed)
    assert outcome.success, outcome.reason
    assert outcome.tx_hash is not None
    ((_, _, paid, _),) = erc20.sponsored_events(anvil, outcome.tx_hash, sponsor.paymaster_address)
    await follower.step()
    row = row_of(setup.engine, user_op_hash)
    assert (row["status"], row["token_amount_paid"]) == ("included", paid)
    assert paid > 0


def test_anode_serve_reconciles_on_its_own_with_the_redis_lease(
    setup: Setup, anvil: Anvil, deployment: Deployment, paymaster_key: str, redis_lease: str, tmp_path: Path
) -> None:
    """``watch.enabled`` with a policy engine: the server's own follower (leased in Redis) turns the
    reservation into the actual cost; the test only waits for it."""
    config = yaml.safe_load(setup.config_path.read_text())
    config["database_url"] = f"sqlite:///{tmp_path / 'own.db'}"
    config["redis_url"] = redis_lease
    config["watch"] = {
        "enabled": True, "confirmations": 0, "poll_seconds": 0.1, "start_block": head(anvil) + 1, "lease": "redis",
    }  # fmt: skip
    with running_server(config) as base:
        own = Setup(base, setup.engine, setup.backend, setup.redis_prefix, setup.config_path)
        wallet = Wallet(base, anvil, deployment, VERSION)
        op, _, _ = wallet.sponsor()
        sender = op.sender
        (event,) = submit(wallet, op).events
        deadline = time.monotonic() + 60
        while True:  # the follower polls every 0.1 s; wait for it, not for a fixed time
            shown = status(own, "per-wallet", sender)
            if shown["reserved"] == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert shown == {
        "used": event.actual_gas_cost, "spent": event.actual_gas_cost, "reserved": 0,
        "remaining": WALLET_LIMIT - event.actual_gas_cost,
    }  # fmt: skip
