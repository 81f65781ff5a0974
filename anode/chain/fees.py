"""Fee suggestions for an operation that names none, from the node's ``eth_feeHistory``.

    maxPriorityFeePerGas = the median of the last blocks' 50th-percentile tips
    maxFeePerGas         = 2 × the next block's base fee + maxPriorityFeePerGas

Twice the base fee keeps an operation includable through about six full blocks of base-fee rises
(12.5 % each); the wallet may price it otherwise, and the signature covers what it sends.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import median_low
from typing import Any

from anode.chain.client import ChainClient
from anode.errors import ChainUnavailable
from anode.userop.codec import parse_quantity

#: blocks of history the suggestion looks at
BLOCKS = 10


@dataclass(frozen=True, slots=True)
class FeeSuggestion:
    max_fee_per_gas: int
    max_priority_fee_per_gas: int
    #: the base fee the next block will have (the last entry of ``baseFeePerGas``)
    base_fee: int


async def suggest_fees(chain: ChainClient) -> FeeSuggestion:
    history = await chain.request("eth_feeHistory", [hex(BLOCKS), "latest", [50]])
    try:
        base_fee = parse_quantity(_last(history["baseFeePerGas"]))
        tips = [parse_quantity(row[0]) for row in history.get("reward") or [] if row]
    except (KeyError, TypeError, ValueError, IndexError):
        raise ChainUnavailable(f"the node at {chain.display_url} answered a malformed eth_feeHistory") from None
    tip = median_low(tips) if tips else 0
    return FeeSuggestion(2 * base_fee + tip, tip, base_fee)


def _last(values: Any) -> Any:
    if not isinstance(values, list) or not values:
        raise ValueError("no base fee")
    return values[-1]
