"""How old a contract is: its deployment block, by binary search over ``eth_getCode`` at past blocks.

Code, once at an address, stays (barring ``SELFDESTRUCT`` in the deploying transaction), so "has
code at block b" is monotonic in b and the first such block is found in ``log2(range)`` reads.
The filter only needs to know whether a contract is younger than ``recent_blocks``: the search
starts at ``latest - recent_blocks``, so an older contract costs one read, and a node that keeps
only recent state (a pruned full node keeps about 128 blocks) can still answer for small windows.
Where the node refuses a historical read, the age is *unknown* and no age factor is counted.

Results go through the shared cache (in-process, or Redis when configured): a deployment block
never changes, so it is kept for a day; code presence at ``latest`` is kept for ``code_ttl``
(counterfactual contracts appear), the block number for a couple of seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from anode.chain.client import parse_result
from anode.errors import UpstreamRejected
from anode.pipeline.deps import TTLCache
from anode.userop.codec import parse_bytes, parse_quantity

DEPLOYMENT_TTL = 86_400.0
BLOCK_NUMBER_TTL = 2.0


class NodeReader(Protocol):
    """What this module needs of a node client (``anode.chain.client.ChainClient`` has it)."""

    async def request(self, method: str, params: list[Any]) -> Any: ...


async def code_size(node: NodeReader, address: str, block: int | str = "latest") -> int:
    tag = hex(block) if isinstance(block, int) else block
    return len(parse_result("eth_getCode", await node.request("eth_getCode", [address, tag]), parse_bytes))


async def block_number(node: NodeReader) -> int:
    return parse_result("eth_blockNumber", await node.request("eth_blockNumber", []), parse_quantity)


async def first_code_block(
    node: NodeReader, address: str, low: int, high: int, *, known_at_high: bool = False
) -> int | None:
    """The first block in ``[low, high]`` at which ``address`` has code; ``None`` if it has none at ``high``.

    ``low`` is returned when the code was already there at ``low`` (deployed then or before).
    ``known_at_high``: the caller saw the code at ``high`` or earlier; save that read.
    """
    if low > high or not (known_at_high or await code_size(node, address, high)):
        return None
    if await code_size(node, address, low):
        return low
    without, with_code = low, high  # invariant: no code at `without`, code at `with_code`
    while with_code - without > 1:
        middle = (without + with_code) // 2
        if await code_size(node, address, middle):
            with_code = middle
        else:
            without = middle
    return with_code


@dataclass(frozen=True, slots=True)
class ContractFacts:
    """What the chain says about one call target."""

    address: str
    has_code: bool
    #: the block the code appeared in, when it fell in the window searched (the last ``recent_blocks``)
    deployment_block: int | None = None
    #: blocks since deployment; ``None`` when no code, or older than the window, or the node could not tell
    age_blocks: int | None = None
    #: ``True`` when the contract is at least ``recent_blocks`` old
    older_than_window: bool = False


class ContractInspector:
    """Code presence and deployment age of addresses on one chain, through the shared cache."""

    def __init__(
        self, node: NodeReader, chain_id: int, cache: TTLCache, *, recent_blocks: int, code_ttl: float
    ) -> None:
        self._node = node
        self._chain = chain_id
        self._cache = cache
        self._recent = recent_blocks
        self._code_ttl = code_ttl

    async def inspect(self, address: str) -> ContractFacts:
        key = address.lower()
        size = await self._cache.get_or_load(
            f"security:code:{self._chain}:{key}", self._code_ttl, lambda: code_size(self._node, address)
        )
        if not size:
            return ContractFacts(address, has_code=False)
        block, exact = await self._cache.get_or_load(
            f"security:deployed:{self._chain}:{key}:{self._recent}",
            DEPLOYMENT_TTL,
            lambda: self._deployment(address),
        )
        if block is None:  # the node keeps no history that far back
            return ContractFacts(address, has_code=True)
        if not exact:
            return ContractFacts(address, has_code=True, older_than_window=True)
        latest = await self._cache.get_or_load(
            f"security:block:{self._chain}", BLOCK_NUMBER_TTL, lambda: block_number(self._node)
        )
        age = max(0, latest - block)
        return ContractFacts(address, True, block, age, older_than_window=age >= self._recent)

    async def _deployment(self, address: str) -> list[Any]:
        """``[block, exact]``: ``exact`` when ``block`` is the deployment block, else "at or before"."""
        latest = await block_number(self._node)  # fresh: the cached one may predate the code we saw
        low = max(0, latest - self._recent)
        try:
            # code seen at an earlier "latest" is still there (it only appears): no read at `latest`
            block = await first_code_block(self._node, address, low, latest, known_at_high=True)
        except UpstreamRejected:  # "missing trie node" and the like: no archive state
            return [None, False]
        return [block, block is not None and (block > low or low == 0)]
