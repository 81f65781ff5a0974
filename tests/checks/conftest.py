"""Fixtures for the SBT and PNT checks: the session's anvil with the check contracts deployed,
a node client that counts its calls, Redis, and contexts as the pipeline builds them.

Tests here that use ``anvil`` get the ``chain`` marker (and skip, saying why, without
``node_modules``), like those of ``tests/integration``. Redis tests skip, saying why, when no
Redis answers at ``$ANODE_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``).
"""

from __future__ import annotations

import os
import secrets
import socket
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from eth_utils.address import to_checksum_address
from redis.asyncio import Redis

from anode.chain.cache import TTLCache
from anode.chain.client import ChainClient
from anode.config import validate_settings
from anode.devchain.anvil import Anvil
from anode.paymasters.base import GasDefaults
from anode.pipeline.base import Context
from anode.pipeline.deps import Dependencies
from anode.pipeline.routes import Route, build_family
from anode.sponsorship import SponsorRequest
from anode.userop.codec import parse_address
from anode.userop.models import parse_user_op
from anode.userop.versions import EntryPointVersion
from tests.contracts.checks import CheckContracts, deploy_check_contracts
from tests.integration.conftest import anvil, deployment, paymaster_address, paymaster_key  # noqa: F401

REDIS_URL = os.environ.get("ANODE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CHAIN_ID = 31337
EP07 = "0x0000000071727De22E5E9d8BAf0edAc6f37da032"
PM07 = "0x0707070707070707070707070707070707070707"


class CountingChainClient(ChainClient):
    """A real node client that counts the JSON-RPC methods it sends."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.calls: Counter[str] = Counter()

    async def request(self, method: str, params: list[Any]) -> Any:
        self.calls[method] += 1
        return await super().request(method, params)


@pytest.fixture(scope="session")
def contracts(anvil: Anvil) -> CheckContracts:  # noqa: F811
    return deploy_check_contracts(anvil.rpc_url)


@pytest.fixture
async def node(anvil: Anvil) -> AsyncIterator[CountingChainClient]:  # noqa: F811
    client = CountingChainClient(anvil.rpc_url)
    yield client
    await client.aclose()


@pytest.fixture
def dead_node_url() -> Iterator[str]:
    """A node URL that refuses connections: the port is bound, never listened on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
async def dead_node(dead_node_url: str) -> AsyncIterator[CountingChainClient]:
    client = CountingChainClient(dead_node_url)
    yield client
    await client.aclose()


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        await client.ping()
    except Exception as exc:  # any failure to reach it: skip, saying why
        await client.aclose()
        pytest.skip(f"no Redis at {REDIS_URL} ({type(exc).__name__}): set ANODE_TEST_REDIS_URL")
    yield client
    await client.aclose()


@pytest.fixture
async def redis_prefix(redis: Redis) -> AsyncIterator[str]:
    """A key prefix of this test alone; its keys are deleted afterwards."""
    prefix = f"anode:test:{uuid.uuid4().hex}:"
    yield prefix
    keys = [key async for key in redis.scan_iter(match=prefix + "*")]
    if keys:
        await redis.delete(*keys)


def deps(cache: TTLCache) -> Dependencies:
    """What ``create(config, deps)`` gets from the server; the checks use only ``cache``."""
    settings = validate_settings(
        {
            "signer": {"type": "local", "private_key": "0x" + "5a" * 32},
            "chains": [
                {
                    "chain_id": CHAIN_ID,
                    "rpc_url": "http://127.0.0.1:1",
                    "paymasters": [{"entry_point": EP07, "address": PM07, "contract": "verifying"}],
                }
            ],
        }
    )
    return Dependencies(settings=settings, engine=sa.create_engine("sqlite://"), cache=cache)


def new_holder() -> str:
    """A fresh address: no test sees another test's tokens."""
    return to_checksum_address(secrets.token_bytes(20))


def context(chain: ChainClient, sender: str, *, final: bool = True) -> Context:
    """The context the pipeline hands modules for a v0.7 operation of ``sender`` on ``chain``."""
    family = build_family("verifying", parse_address(PM07), EntryPointVersion.V07, GasDefaults(100_000, 0))
    route = Route(CHAIN_ID, parse_address(EP07), EntryPointVersion.V07, family, chain, None)
    raw = {
        "sender": sender,
        "nonce": "0x0",
        "callData": "0x",
        "callGasLimit": "0x10000",
        "verificationGasLimit": "0x10000",
        "preVerificationGas": "0x5000",
        "maxFeePerGas": "0x3b9aca00",
        "maxPriorityFeePerGas": "0x1",
    }
    op = parse_user_op(raw, EntryPointVersion.V07)
    request = SponsorRequest(raw, EP07, CHAIN_ID, None, "test")
    return Context(route=route, op=op, request=request, api_key_id=None, final=final, max_gas_cost=10**15)
