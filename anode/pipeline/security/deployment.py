"""How old a contract is: its deployment block, by binary search over ``eth_getCode`` at past blocks.

Code, once at an address, stays (barring ``SELFDESTRUCT`` in the deploying transaction), so "has
code at block b" is monotonic in b and the first such block is found in ``log2(range)`` reads.
The filter only needs to know whether a contract is younger than ``recent_blocks``: the search
starts at ``latest - recent_blocks``, so an older contract costs one read, and a node that keeps
only recent state (a pruned full node keeps about 128 blocks) can still answer for small windows.

A node's error is one of two kinds (:func:`no_history_reason`):

- *definite*: the node says it keeps no state that far back ("missing trie node", "historical
  state unavailable", "state at block #N is pruned", "pruned history unavailable" / 4444, "header
  not found" deeper than a load balancer's lag, ``-32601`` method not found). Only this turns the
  age check off, for :data:`NO_HISTORY_TTL` seconds per chain (:class:`HistorySupport`, which
  ``GET /health`` shows); the contract is then scored without an age factor.
- *transient*: anything else (rate limits such as HTTP 429 or ``-32005``, timeouts, 5xx, an
  unknown error). The read is retried (:data:`RETRY_DELAYS`), never cached as a fact, and when it
  still fails the check fails closed with ``ChainUnavailable`` (``ANODE_CHAIN_UNAVAILABLE``,
  -32603): nothing is signed rather than scored as if the contract were young or old.

Results go through the shared cache (in-process, or Redis when configured): a deployment block
never changes, so it is kept for a day; code presence at ``latest`` is kept for ``code_ttl``
(counterfactual contracts appear), the block number for a couple of seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from anode.chain.cache import TTLCache
from anode.chain.client import parse_result
from anode.errors import ChainUnavailable, UpstreamRejected
from anode.userop.codec import parse_bytes, parse_quantity

log = logging.getLogger("anode.security")

DEPLOYMENT_TTL = 86_400.0
BLOCK_NUMBER_TTL = 2.0
#: how long a chain's "no archive state" answer turns the age check off before a read tries again
NO_HISTORY_TTL = 600.0
#: pauses before the second and third attempt of a read that failed for a transient reason
RETRY_DELAYS = (0.05, 0.25)
#: "header not found" this many blocks or more below the head is a node without that history;
#: nearer the head it is a load-balanced provider whose answering node lags behind
HEADER_LAG_BLOCKS = 128
#: what nodes say when they keep no state at the block asked (geth, reth, erigon, openethereum)
_NO_HISTORY_WORDS = (
    "missing trie node",
    "historical state unavailable",
    "historical state not available",
    "is pruned",
    "pruned history unavailable",
    "state pruning",
)
_METHOD_NOT_FOUND = -32601
_PRUNED_HISTORY = 4444  # EIP-4444's code (geth, reth)


class NodeReader(Protocol):
    """What this module needs of a node client (``anode.chain.client.ChainClient`` has it)."""

    async def request(self, method: str, params: list[Any]) -> Any: ...


class NoHistory(Exception):
    """The node definitely keeps no state at the block asked; ``reason`` quotes it (no URL)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def no_history_reason(exc: UpstreamRejected, depth: int | None) -> str | None:
    """The node's words when ``exc`` (to a read ``depth`` blocks below the head) means "no such
    history here"; ``None`` when it may pass (then the read is retried, and fails closed)."""
    data = exc.data or {}
    code = data.get("code")
    message = str(data.get("message", exc.message))
    lowered = message.lower()
    definite = (
        code in (_METHOD_NOT_FOUND, _PRUNED_HISTORY)
        or any(words in lowered for words in _NO_HISTORY_WORDS)
        or ("header not found" in lowered and depth is not None and depth >= HEADER_LAG_BLOCKS)
    )
    return message[:160] if definite else None


async def _read(node: NodeReader, method: str, params: list[Any], *, depth: int | None = None) -> Any:
    """``node.request``, tried up to ``1 + len(RETRY_DELAYS)`` times; ``depth``: a historical read
    that many blocks below the head, whose definite refusal raises :class:`NoHistory`."""
    for attempt in range(len(RETRY_DELAYS) + 1):
        try:
            return await node.request(method, params)
        except UpstreamRejected as exc:
            reason = no_history_reason(exc, depth) if depth is not None else None
            if reason is not None:
                raise NoHistory(reason) from None
            failure = exc.message
        except ChainUnavailable as exc:
            failure = exc.message
        if attempt < len(RETRY_DELAYS):
            await asyncio.sleep(RETRY_DELAYS[attempt])
    raise ChainUnavailable(
        f"the security filter could not read {method} from the node ({failure}; "
        f"{len(RETRY_DELAYS) + 1} attempts): nothing is sponsored until it can, retry later"
    )


async def code_size(node: NodeReader, address: str, block: int | str = "latest", *, head: int | None = None) -> int:
    """Bytes of code at ``address``; ``head``: the latest block, for a historical ``block``."""
    tag = hex(block) if isinstance(block, int) else block
    depth = None if isinstance(block, str) else (head - block if head is not None else HEADER_LAG_BLOCKS)
    code = await _read(node, "eth_getCode", [address, tag], depth=depth)
    return len(parse_result("eth_getCode", code, parse_bytes))


async def block_number(node: NodeReader) -> int:
    return parse_result("eth_blockNumber", await _read(node, "eth_blockNumber", []), parse_quantity)


async def first_code_block(
    node: NodeReader, address: str, low: int, high: int, *, known_at_high: bool = False
) -> int | None:
    """The first block in ``[low, high]`` at which ``address`` has code; ``None`` if it has none at ``high``.

    ``low`` is returned when the code was already there at ``low`` (deployed then or before).
    ``known_at_high``: the caller saw the code at ``high`` or earlier; save that read.
    Raises :class:`NoHistory` when the node keeps no state at a block asked.
    """
    if low > high or not (known_at_high or await code_size(node, address, high, head=high)):
        return None
    if await code_size(node, address, low, head=high):
        return low
    without, with_code = low, high  # invariant: no code at `without`, code at `with_code`
    while with_code - without > 1:
        middle = (without + with_code) // 2
        if await code_size(node, address, middle, head=high):
            with_code = middle
        else:
            without = middle
    return with_code


class HistorySupport:
    """Per chain, whether its node answers historical reads, as this process last learned it.

    A definite "no archive state" turns the age check off for that chain for ``ttl`` seconds
    (then a read tries again); :meth:`status` is what ``GET /health`` shows.
    """

    def __init__(self, *, ttl: float = NO_HISTORY_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        #: chain → (the node's words, when learned); a chain that answered is in ``_answered``
        self._missing: dict[int, tuple[str, float]] = {}
        self._answered: set[int] = set()

    def missing(self, chain_id: int) -> str | None:
        """The node's words while the age check is off on ``chain_id``, else ``None``."""
        entry = self._missing.get(chain_id)
        if entry is None or self._clock() - entry[1] >= self._ttl:
            return None
        return entry[0]

    def lost(self, chain_id: int, reason: str) -> None:
        if chain_id not in self._missing or chain_id in self._answered:
            log.warning(
                "chain %d: the node keeps no state that far back, so contract ages are not scored "
                "(use an archive node, or lower recent_deployment_blocks): %s",
                chain_id,
                reason,
            )
        self._answered.discard(chain_id)
        self._missing[chain_id] = (reason, self._clock())

    def answered(self, chain_id: int) -> None:
        self._answered.add(chain_id)
        self._missing.pop(chain_id, None)

    def status(self, chain_id: int) -> str:
        reason = self.missing(chain_id)
        if reason is not None:
            return f"unavailable: node has no archive state ({reason})"
        return "available" if chain_id in self._answered else "not checked yet"


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
        self,
        node: NodeReader,
        chain_id: int,
        cache: TTLCache,
        *,
        recent_blocks: int,
        code_ttl: float,
        history: HistorySupport | None = None,
    ) -> None:
        self._node = node
        self._chain = chain_id
        self._cache = cache
        self._recent = recent_blocks
        self._code_ttl = code_ttl
        self.history = history if history is not None else HistorySupport()

    async def inspect(self, address: str) -> ContractFacts:
        key = address.lower()
        size = await self._cache.get_or_load(
            f"security:code:{self._chain}:{key}", self._code_ttl, lambda: code_size(self._node, address)
        )
        if not size:
            return ContractFacts(address, has_code=False)
        if self.history.missing(self._chain) is not None:
            return ContractFacts(address, has_code=True)  # the age check is off on this chain for now
        try:
            # v2: entries of older versions cached a rate limit as "no archive state" for a day
            block, exact = await self._cache.get_or_load(
                f"security:deployed:v2:{self._chain}:{key}:{self._recent}",
                DEPLOYMENT_TTL,
                lambda: self._deployment(address),
            )
        except NoHistory as exc:  # never cached per address: the chain's flag expires on its own
            self.history.lost(self._chain, exc.reason)
            return ContractFacts(address, has_code=True)
        self.history.answered(self._chain)
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
        # code seen at an earlier "latest" is still there (it only appears): no read at `latest`
        block = await first_code_block(self._node, address, low, latest, known_at_high=True)
        return [block, block is not None and (block > low or low == 0)]
