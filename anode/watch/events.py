"""The node reads the follower needs: the head, a block's hash and time, and ``UserOperationEvent`` logs.

``UserOperationEvent(bytes32 indexed userOpHash, address indexed sender, address indexed paymaster,
uint256 nonce, bool success, uint256 actualGasCost, uint256 actualGasUsed)`` is the same event in
EntryPoint v0.6, v0.7 and v0.8: one topic, one decoder. Logs are asked for by topic with the
configured paymasters as the third topic, so the node sends only the operations they paid for.

SingletonPaymaster also emits ``UserOperationSponsored(bytes32 indexed userOpHash, address indexed
user, uint8 paymasterMode, address token, uint256 tokenAmountPaid, uint256 exchangeRate)`` from
the paymaster's own address; the same range's events of the configured paymasters are read with
it, and each inclusion carries the ``tokenAmountPaid`` of the event with its userOpHash in the
same transaction (in ERC-20 mode; ``None`` when there is none).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from anode.chain.client import ChainClient
from anode.errors import ChainUnavailable
from anode.store.watch import Inclusion
from anode.userop.codec import checksum, parse_bytes, parse_quantity, to_hex, to_quantity
from anode.userop.keccak import keccak

USER_OPERATION_EVENT = keccak(b"UserOperationEvent(bytes32,address,address,uint256,bool,uint256,uint256)")
USER_OPERATION_SPONSORED = keccak(b"UserOperationSponsored(bytes32,address,uint8,address,uint256,uint256)")


@dataclass(frozen=True, slots=True)
class Block:
    number: int
    hash: str
    timestamp: int


async def head(chain: ChainClient) -> int:
    return chain.parsed("eth_blockNumber", await chain.request("eth_blockNumber", []), parse_quantity)


async def block(chain: ChainClient, number: int) -> Block | None:
    """The canonical block at ``number``, or ``None`` when the chain is not that long (any more)."""
    result = await chain.request("eth_getBlockByNumber", [to_quantity(number), False])
    if result is None:
        return None
    return chain.parsed("eth_getBlockByNumber", result, _block)


def _block(result: Any) -> Block:
    if not isinstance(result, dict):
        raise ValueError("not a block object")
    number, timestamp = parse_quantity(result.get("number")), parse_quantity(result.get("timestamp"))
    return Block(number, _hash(result.get("hash")), timestamp)


def _hash(value: Any) -> str:
    raw = parse_bytes(value)
    if len(raw) != 32:
        raise ValueError(f"a hash of {len(raw)} bytes")
    return to_hex(raw)


def _topic(address: bytes) -> str:
    return to_hex(b"\x00" * 12 + address)


async def inclusions(
    chain: ChainClient, entry_points: Sequence[bytes], paymasters: Sequence[bytes], first: int, last: int
) -> list[Inclusion]:
    """The configured paymasters' ``UserOperationEvent`` logs in blocks ``first..last``, in chain order."""
    query = {
        "fromBlock": to_quantity(first),
        "toBlock": to_quantity(last),
        "address": [to_hex(entry_point) for entry_point in entry_points],
        "topics": [to_hex(USER_OPERATION_EVENT), None, None, [_topic(paymaster) for paymaster in paymasters]],
    }
    result = await _logs(chain, query)
    found = [chain.parsed("eth_getLogs", log, _inclusion) for log in result if not _removed(log)]
    if found:
        paid = await token_amounts(chain, paymasters, first, last)
        found = [
            replace(event, token_amount_paid=paid[(event.tx_hash, event.user_op_hash)])
            if (event.tx_hash, event.user_op_hash) in paid
            else event
            for event in found
        ]
    return sorted(found, key=lambda event: event.block_number)


async def token_amounts(
    chain: ChainClient, paymasters: Sequence[bytes], first: int, last: int
) -> dict[tuple[str, str], int]:
    """``tokenAmountPaid`` of the paymasters' ``UserOperationSponsored`` events, by (transaction, userOpHash)."""
    query = {
        "fromBlock": to_quantity(first),
        "toBlock": to_quantity(last),
        "address": [to_hex(paymaster) for paymaster in paymasters],
        "topics": [to_hex(USER_OPERATION_SPONSORED)],
    }
    result = await _logs(chain, query)
    paid = [chain.parsed("eth_getLogs", log, _sponsored) for log in result if not _removed(log)]
    return {(tx_hash, op_hash): amount for tx_hash, op_hash, amount in paid}


async def _logs(chain: ChainClient, query: dict[str, Any]) -> list[Any]:
    result = await chain.request("eth_getLogs", [query])
    if not isinstance(result, list):
        raise ChainUnavailable(f"node at {chain.display_url} answered eth_getLogs with a malformed result")
    return result


def _sponsored(log: Any) -> tuple[str, str, int]:
    if not isinstance(log, dict):
        raise ValueError("not a log object")
    topics = [parse_bytes(topic) for topic in log.get("topics") or []]
    data = parse_bytes(log.get("data"))
    if len(topics) != 3 or topics[0] != USER_OPERATION_SPONSORED or len(data) != 128:
        raise ValueError("not a UserOperationSponsored event")
    return _hash(log.get("transactionHash")), to_hex(topics[1]), int.from_bytes(data[64:96], "big")


def _removed(log: Any) -> bool:
    return isinstance(log, dict) and bool(log.get("removed"))


def _inclusion(log: Any) -> Inclusion:
    if not isinstance(log, dict):
        raise ValueError("not a log object")
    topics = [parse_bytes(topic) for topic in log.get("topics") or []]
    data = parse_bytes(log.get("data"))
    if len(topics) != 4 or topics[0] != USER_OPERATION_EVENT or len(data) != 128:
        raise ValueError("not a UserOperationEvent")
    words = [int.from_bytes(data[i : i + 32], "big") for i in range(0, 128, 32)]
    return Inclusion(
        user_op_hash=to_hex(topics[1]),
        tx_hash=_hash(log.get("transactionHash")),
        block_number=parse_quantity(log.get("blockNumber")),
        block_hash=_hash(log.get("blockHash")),
        entry_point=checksum(parse_bytes(log.get("address"))),
        sender=checksum(topics[2][12:]),
        paymaster=checksum(topics[3][12:]),
        nonce=words[0],
        success=bool(words[1]),
        actual_gas_cost=words[2],
        actual_gas_used=words[3],
    )
