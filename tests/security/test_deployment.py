"""Finding a contract's deployment block on a real node (anvil): binary search over ``eth_getCode``
at past blocks, its cost in reads, and the cache that makes a second look free.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
from eth_utils.address import to_checksum_address

from anode.chain.cache import MemoryTTLCache
from anode.chain.client import ChainClient
from anode.devchain.anvil import Anvil
from anode.devchain.rpc import DevRpc
from anode.errors import ChainUnavailable, UpstreamRejected
from anode.pipeline.security.deployment import ContractInspector, block_number, code_size, first_code_block

#: init code returning a one-byte runtime (STOP): CODECOPY(0, 12, 1) RETURN(0, 1) ‖ 0x00
INIT_CODE = bytes.fromhex("6001600c60003960016000f3") + b"\x00"
CREATE2_DEPLOYER = "0x4e59b44847b379578588920ca78fbf26c0b4956c"  # in anvil's genesis
NOBODY = to_checksum_address("0x" + "ab" * 20)


def deploy(rpc_url: str) -> tuple[str, int]:
    """A fresh contract: its address and the block it was mined in."""
    with DevRpc(rpc_url) as rpc:
        receipt = rpc.transact(rpc.accounts()[3], None, INIT_CODE)
    return to_checksum_address(receipt["contractAddress"]), int(receipt["blockNumber"], 16)


def mine(rpc_url: str, blocks: int) -> int:
    with DevRpc(rpc_url) as rpc:
        rpc.call("anvil_mine", hex(blocks))
        return int(rpc.call("eth_blockNumber"), 16)


class CountingNode:
    """The real node client, counting what it is asked."""

    def __init__(self, inner: ChainClient, *, history: bool = True) -> None:
        self.inner = inner
        self.history = history
        self.calls: list[tuple[str, list[Any]]] = []

    async def request(self, method: str, params: list[Any]) -> Any:
        self.calls.append((method, params))
        if not self.history and method == "eth_getCode" and params[1] != "latest":
            raise UpstreamRejected("node refused eth_getCode: missing trie node")  # a pruned full node
        return await self.inner.request(method, params)


@pytest.fixture
async def node(anvil: Anvil) -> AsyncIterator[CountingNode]:
    client = ChainClient(anvil.rpc_url)
    yield CountingNode(client)
    await client.aclose()


async def test_binary_search_finds_the_deployment_block(anvil: Anvil, node: CountingNode) -> None:
    address, deployed = deploy(anvil.rpc_url)
    latest = mine(anvil.rpc_url, 300)
    assert await first_code_block(node, address, 0, latest) == deployed
    assert len(node.calls) <= 2 + math.ceil(math.log2(latest + 1))  # logarithmic, not a scan
    assert await first_code_block(node, address, deployed, latest) == deployed
    assert await first_code_block(node, address, deployed + 5, latest) == deployed + 5  # "at or before"
    assert await first_code_block(node, address, 0, deployed - 1) is None  # not there yet
    assert await first_code_block(node, NOBODY, 0, latest) is None
    assert await first_code_block(node, CREATE2_DEPLOYER, 0, latest) == 0  # genesis


async def test_inspector_reads_once_then_answers_from_the_cache(anvil: Anvil, node: CountingNode) -> None:
    address, deployed = deploy(anvil.rpc_url)
    latest = mine(anvil.rpc_url, 40)
    now = [0.0]
    cache = MemoryTTLCache(clock=lambda: now[0])
    inspector = ContractInspector(node, anvil.chain_id, cache, recent_blocks=1000, code_ttl=60)
    facts = await inspector.inspect(address)
    assert facts.has_code and facts.deployment_block == deployed
    assert facts.age_blocks == latest - deployed and not facts.older_than_window
    reads = len(node.calls)
    assert await inspector.inspect(address) == facts
    assert len(node.calls) == reads  # a hot target costs no RPC call

    # the deployment block is kept; the age follows the chain as it grows past the window
    short = ContractInspector(node, anvil.chain_id, cache, recent_blocks=latest - deployed + 5, code_ttl=60)
    assert not (await short.inspect(address)).older_than_window
    mine(anvil.rpc_url, 10)
    now[0] += 3  # the block number is reused for two seconds only
    aged = await short.inspect(address)
    assert aged.older_than_window and aged.age_blocks == latest + 10 - deployed


async def test_an_old_contract_costs_one_historical_read(anvil: Anvil, node: CountingNode) -> None:
    address, _ = deploy(anvil.rpc_url)
    mine(anvil.rpc_url, 50)
    inspector = ContractInspector(node, anvil.chain_id, MemoryTTLCache(), recent_blocks=10, code_ttl=60)
    facts = await inspector.inspect(address)
    assert facts.has_code and facts.older_than_window and facts.deployment_block is None
    historical = [params for method, params in node.calls if method == "eth_getCode" and params[1] != "latest"]
    assert len(historical) == 1


async def test_an_address_without_code(anvil: Anvil, node: CountingNode) -> None:
    inspector = ContractInspector(node, anvil.chain_id, MemoryTTLCache(), recent_blocks=10, code_ttl=60)
    facts = await inspector.inspect(NOBODY)
    assert not facts.has_code and facts.age_blocks is None
    assert [method for method, _ in node.calls] == ["eth_getCode"]


async def test_a_node_without_history_leaves_the_age_unknown(anvil: Anvil) -> None:
    address, _ = deploy(anvil.rpc_url)
    client = ChainClient(anvil.rpc_url)
    try:
        pruned = CountingNode(client, history=False)
        inspector = ContractInspector(pruned, anvil.chain_id, MemoryTTLCache(), recent_blocks=10_000, code_ttl=60)
        facts = await inspector.inspect(address)
    finally:
        await client.aclose()
    assert facts.has_code and facts.age_blocks is None and not facts.older_than_window


class MalformedNode:
    """A node that answers with results of the wrong shape."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    async def request(self, method: str, params: list[Any]) -> Any:
        return self.answer


@pytest.mark.parametrize("answer", [None, "0xzz", "0x123", 12])
async def test_a_malformed_node_answer_is_the_chain_unavailable(answer: Any) -> None:
    with pytest.raises(ChainUnavailable, match="malformed result"):
        await code_size(MalformedNode(answer), "0x" + "11" * 20)
    if answer in (None, "0xzz"):  # 12 and "0x123" are quantities (odd length is fine there)
        with pytest.raises(ChainUnavailable, match="malformed result"):
            await block_number(MalformedNode(answer))
