"""Limits that hold across processes: two ``anode serve`` processes share one PostgreSQL database and
one Redis, and 200 concurrent ``pm_getPaymasterData`` calls (100 to each) meet an amount limit
that fits exactly N operations. Exactly N are signed, the ledger holds exactly N rows, and the
policy's counter holds exactly N times the operation's maximum gas cost — once with the counters
in Redis, once in PostgreSQL, and once in one SQLite file behind ``anode serve --workers 2``.

Needs anvil with the sandbox contracts (skipped without ``node_modules``), PostgreSQL and Redis
(skipped, with the reason, when they do not answer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from redis.asyncio import Redis

from anode.devchain.anvil import DEFAULT_ACCOUNT_KEYS, Anvil
from anode.devchain.artifacts import node_modules_available
from anode.devchain.deploy import Deployment, deploy_sandbox
from anode.policy.limits import Bucket, RedisLimiter, SqlLimiter
from anode.store.database import create_engine
from tests.integration.test_api_errors import user_op
from tests.policy.conftest import fresh_pg_database
from tests.support.server import running_server

pytestmark = pytest.mark.skipif(not node_modules_available(), reason="node_modules missing: run `npm install`")

PAYMASTER_KEY = DEFAULT_ACCOUNT_KEYS[9]
PROJECT_KEY = "two-servers-project-key"
ADMIN_KEY = "two-servers-admin-key-01"
REQUESTS = 200
N = 23
# user_op(): callGas 100k + verificationGas 200k + preVerificationGas 50k, plus the paymaster's
# default verification gas 100k (post-op 0), all at maxFeePerGas 1 gwei
MAX_GAS_COST = 450_000 * 10**9


@pytest.fixture(scope="module")
def chain() -> Iterator[tuple[Anvil, Deployment]]:
    with Anvil() as anvil:
        yield anvil, deploy_sandbox(anvil.rpc_url, [Account.from_key(PAYMASTER_KEY).address])


def server_config(
    anvil: Anvil, deployment: Deployment, database_url: str, redis_url: str | None, **engine: Any
) -> dict[str, Any]:
    return {
        "database_url": database_url,
        "redis_url": redis_url,
        "signer": {"type": "local", "private_key": PAYMASTER_KEY},
        "auth": {"api_keys": [PROJECT_KEY], "admin_keys": [ADMIN_KEY]},
        "chains": [
            {
                "chain_id": deployment.chain_id,
                "rpc_url": anvil.rpc_url,
                "paymasters": [
                    {
                        "entry_point": deployment.entry_points["v0.7"],
                        "address": deployment.verifying_paymasters["v0.7"],
                        "contract": "verifying",
                    }
                ],
            }
        ],
        "pipeline": {"modules": [{"name": "policy_engine", "config": engine}, {"name": "paymaster_signer"}]},
        "policies": [
            {
                "id": "budget",
                "name": "budget",
                "type": "project",
                "rate_limits": [
                    # no window: the counters never reset mid-test
                    {"type": "amount", "limit": str(N * MAX_GAS_COST)},
                    {"type": "request", "limit": N + 50},
                ],
            }
        ],
    }


@contextmanager
def side_by_side(config: dict[str, Any], count: int = 2) -> Iterator[list[str]]:
    """``count`` servers on one config, started at once (the database is migrated beforehand)."""
    managers = [running_server(config) for _ in range(count)]
    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(manager.__enter__) for manager in managers]
        wait(futures)
    with ExitStack() as stack:
        for manager, future in zip(managers, futures, strict=True):
            if future.exception() is None:
                stack.push(manager)
        for future in futures:
            if future.exception() is not None:
                raise future.exception()  # type: ignore[misc]
        yield [future.result() for future in futures]


async def _storm(urls: list[str], entry_point: str, chain_id: int) -> list[dict[str, Any]]:
    params = [user_op(), entry_point, hex(chain_id), {}]
    body = {"jsonrpc": "2.0", "id": 1, "method": "pm_getPaymasterData", "params": params}
    headers = {"authorization": f"Bearer {PROJECT_KEY}"}
    limits = httpx.Limits(max_connections=REQUESTS)
    async with httpx.AsyncClient(headers=headers, timeout=60, limits=limits) as client:

        async def one(n: int) -> dict[str, Any]:
            reply = await client.post(f"{urls[n % 2]}/api/v1/rpc", json=body)
            answer: dict[str, Any] = reply.json()
            return answer

        return await asyncio.gather(*(one(n) for n in range(REQUESTS)))


@pytest.mark.parametrize("limiter", ["redis", "sql"])
def test_two_servers_sponsor_exactly_n_of_200(
    chain: tuple[Anvil, Deployment], redis_url: str, redis_prefix: str, limiter: str
) -> None:
    anvil, deployment = chain
    with fresh_pg_database("anode_two_servers") as database_url:
        prefix = {"redis_prefix": redis_prefix} if limiter == "redis" else {}  # a prefix with sql is refused
        config = server_config(anvil, deployment, database_url, redis_url, limiter=limiter, **prefix)
        with side_by_side(config) as (first, second):
            replies = asyncio.run(_storm([first, second], deployment.entry_points["v0.7"], deployment.chain_id))
            signed = [r for r in replies if "result" in r]
            refused = [r["error"] for r in replies if "error" in r]
            assert len(signed) == N
            assert {e["data"]["anodeCode"] for e in refused} == {"ANODE_010_POLICY_LIMIT_EXCEEDED"}
            assert all("amount limit of 0.01035 ETH in total reached" in e["message"] for e in refused)

            admin = {"authorization": f"Bearer {ADMIN_KEY}"}
            ledger = httpx.get(f"{first}/api/v1/operations", params={"limit": "1000"}, headers=admin).json()
            assert ledger["count"] == N
        assert asyncio.run(_usage(limiter, database_url, redis_url, redis_prefix)) == [N * MAX_GAS_COST, N]


def test_two_workers_on_one_sqlite_file_sponsor_exactly_n_of_200(
    chain: tuple[Anvil, Deployment], tmp_path: Path
) -> None:
    """``anode serve --workers 2`` on SQLite: two processes, one database file, one limit."""
    anvil, deployment = chain
    database_url = f"sqlite:///{tmp_path / 'shared.db'}"
    config = server_config(anvil, deployment, database_url, None, limiter="sql")
    with running_server(config, workers=2) as url:
        replies = asyncio.run(_storm([url, url], deployment.entry_points["v0.7"], deployment.chain_id))
        signed = [r for r in replies if "result" in r]
        refused = [r["error"] for r in replies if "error" in r]
        assert len(signed) == N
        assert {e["data"]["anodeCode"] for e in refused} == {"ANODE_010_POLICY_LIMIT_EXCEEDED"}
        admin = {"authorization": f"Bearer {ADMIN_KEY}"}
        ledger = httpx.get(f"{url}/api/v1/operations", params={"limit": "1000"}, headers=admin).json()
        assert ledger["count"] == N
    assert asyncio.run(_usage("sql", database_url, "", "")) == [N * MAX_GAS_COST, N]


async def _usage(limiter: str, database_url: str, redis_url: str, prefix: str) -> list[int]:
    """The policy's counters, read straight from the store the servers shared."""
    buckets = [Bucket("budget:amount:0:*", 0, 0, 0), Bucket("budget:request:0:*", 0, 0, 0)]
    if limiter == "redis":
        client = Redis.from_url(redis_url)
        try:
            return await RedisLimiter(client, prefix=prefix).usage(buckets)
        finally:
            await client.aclose()
    engine = create_engine(database_url)
    store = SqlLimiter(engine)
    try:
        return await store.usage(buckets)
    finally:
        await store.aclose()
        engine.dispose()
