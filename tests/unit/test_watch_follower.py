"""The follower's pieces that need no chain: decoding ``UserOperationEvent`` logs, and its settings.

The on-chain behaviour (inclusions, expiry, reorgs, restarts, the lease) is tested against anvil
in ``tests/integration/test_follower_onchain.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from eth_utils.crypto import keccak

from anode.chain.client import ChainClient
from anode.config import validate_settings
from anode.errors import ChainUnavailable
from anode.watch import events
from anode.wiring import build

NODE_MODULES = Path(__file__).parents[2] / "node_modules"
EP_V07 = "0x0000000071727De22E5E9d8BAf0edAc6f37da032"
PAYMASTER = "0x" + "ab" * 20
OP_HASH = "0x" + "11" * 32
TX_HASH = "0x" + "22" * 32
BLOCK_HASH = "0x" + "33" * 32


class FakeNode(ChainClient):
    """Answers ``eth_getLogs`` with the logs given whose first topic the query asks for; records the queries."""

    def __init__(self, logs: list[Any]) -> None:
        super().__init__("http://127.0.0.1:1")
        self.logs = logs
        self.queries: list[Any] = []

    async def request(self, method: str, params: list[Any]) -> Any:
        assert method == "eth_getLogs"
        self.queries.append(params[0])
        wanted = params[0]["topics"][0]
        return [log for log in self.logs if log["topics"][0] == wanted]


def word(value: int) -> str:
    return f"{value:064x}"


def event_log(block: int = 7, *, removed: bool = False, data: str | None = None) -> dict[str, Any]:
    return {
        "address": EP_V07.lower(),
        "topics": [
            "0x" + events.USER_OPERATION_EVENT.hex(),
            OP_HASH,
            "0x" + "00" * 12 + "cd" * 20,
            "0x" + "00" * 12 + PAYMASTER[2:],
        ],
        "data": data if data is not None else "0x" + word(5) + word(1) + word(123_456) + word(78),
        "blockNumber": hex(block),
        "blockHash": BLOCK_HASH,
        "transactionHash": TX_HASH,
        "removed": removed,
    }


@pytest.mark.parametrize("version", ["v06", "v07", "v08"])
def test_the_topic_is_every_entry_points_user_operation_event(version: str) -> None:
    abi = json.loads((NODE_MODULES / f"aa-contracts-{version}/artifacts/EntryPoint.json").read_text())["abi"]
    (event,) = [item for item in abi if item.get("name") == "UserOperationEvent"]
    signature = f"UserOperationEvent({','.join(arg['type'] for arg in event['inputs'])})"
    assert keccak(text=signature) == events.USER_OPERATION_EVENT
    assert [arg["indexed"] for arg in event["inputs"]] == [True, True, True, False, False, False, False]


async def test_a_log_decodes_to_an_inclusion_and_the_query_filters_on_the_paymaster() -> None:
    node = FakeNode([event_log(9), event_log(8, removed=True), event_log(7)])
    found = await events.inclusions(node, [bytes.fromhex(EP_V07[2:])], [bytes.fromhex(PAYMASTER[2:])], 5, 9)
    assert [event.block_number for event in found] == [7, 9]  # chain order; the removed log is left out
    first = found[0]
    assert (first.user_op_hash, first.tx_hash, first.block_hash) == (OP_HASH, TX_HASH, BLOCK_HASH)
    assert (first.nonce, first.success, first.actual_gas_cost, first.actual_gas_used) == (5, True, 123_456, 78)
    assert first.entry_point == EP_V07 and first.paymaster.lower() == PAYMASTER
    query, sponsored = node.queries  # the EntryPoint's events, then the paymasters' own
    assert (query["fromBlock"], query["toBlock"]) == ("0x5", "0x9")
    assert query["topics"][3] == ["0x" + "00" * 12 + PAYMASTER[2:]]
    assert (sponsored["address"], sponsored["fromBlock"], sponsored["toBlock"]) == ([PAYMASTER], "0x5", "0x9")
    assert first.token_amount_paid is None  # no UserOperationSponsored: not paid in a token


def sponsored_log(amount: int, op_hash: str = OP_HASH) -> dict[str, Any]:
    return {
        "address": PAYMASTER,
        "topics": ["0x" + events.USER_OPERATION_SPONSORED.hex(), op_hash, "0x" + "00" * 12 + "cd" * 20],
        "data": "0x" + word(1) + "00" * 12 + "ef" * 20 + word(amount) + word(10**18),
        "blockNumber": hex(7),
        "blockHash": BLOCK_HASH,
        "transactionHash": TX_HASH,
        "removed": False,
    }


async def test_the_token_amount_paid_comes_from_the_paymasters_user_operation_sponsored_event() -> None:
    other = "0x" + "44" * 32  # the same transaction's event for another operation
    node = FakeNode([event_log(7), sponsored_log(987_654_321), sponsored_log(5, other)])
    (found,) = await events.inclusions(node, [bytes.fromhex(EP_V07[2:])], [bytes.fromhex(PAYMASTER[2:])], 5, 9)
    assert found.token_amount_paid == 987_654_321


def test_the_sponsored_topic_is_the_singleton_paymasters_event() -> None:
    signature = "UserOperationSponsored(bytes32,address,uint8,address,uint256,uint256)"
    assert keccak(text=signature) == events.USER_OPERATION_SPONSORED


async def test_a_malformed_log_is_the_nodes_fault() -> None:
    node = FakeNode([event_log(data="0x1234")])
    with pytest.raises(ChainUnavailable, match="eth_getLogs"):
        await events.inclusions(node, [bytes(20)], [bytes(20)], 1, 2)


def settings_tree(tmp_path: Path, **watch: Any) -> dict[str, Any]:
    tree: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'anode.db'}",
        "signer": {"type": "local", "private_key": "0x" + "4c" * 32},
        "chains": [
            {
                "chain_id": 31337,
                "rpc_url": "http://127.0.0.1:8545",
                "paymasters": [{"entry_point": EP_V07, "address": PAYMASTER, "contract": "verifying"}],
            },
            {
                "chain_id": 10,
                "rpc_url": "http://127.0.0.1:8546",
                "confirmations": 12,
                "paymasters": [{"entry_point": EP_V07, "address": PAYMASTER, "contract": "verifying"}],
            },
        ],
    }
    if watch:
        tree["watch"] = watch
    return tree


async def test_the_follower_is_off_unless_enabled(tmp_path: Path) -> None:
    anode = build(validate_settings(settings_tree(tmp_path)))
    try:
        assert anode.follower is None
    finally:
        await anode.aclose()


async def test_confirmations_are_per_chain_with_the_watch_default(tmp_path: Path) -> None:
    anode = build(validate_settings(settings_tree(tmp_path, enabled=True, confirmations=2)))
    try:
        assert anode.follower is not None
        chains = {chain.chain_id: chain for chain in anode.follower.chains}
        assert (chains[31337].confirmations, chains[10].confirmations) == (2, 12)
        assert chains[31337].paymasters == (bytes.fromhex(PAYMASTER[2:]),)
    finally:
        await anode.aclose()
