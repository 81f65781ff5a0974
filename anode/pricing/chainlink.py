"""A price from two Chainlink ``AggregatorV3Interface`` feeds: token/USD and native/USD.

``tokens per native = native_usd / token_usd``, so in token base units per 1e18 wei::

    rate = (nativeAnswer / 10**nativeFeedDecimals) / (tokenAnswer / 10**tokenFeedDecimals) × 10**tokenDecimals

exact (a fraction; the book rounds). Each feed's ``decimals()`` is read once. Both
``latestRoundData()`` calls and the latest block are read together; a round is refused (never
signed on) when its ``answer <= 0``, when ``answeredInRound < roundId`` or ``updatedAt == 0``
(the round is not complete), or when ``updatedAt`` is more than ``max_age_seconds`` before now.
"Now" is the later of this host's clock and the latest block's timestamp, so neither a node
whose head lags nor a host clock that lags makes an old round look fresh.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from eth_utils.address import to_checksum_address

from anode.chain.client import ChainClient
from anode.config import ChainlinkPrice
from anode.errors import (
    PriceFeedUnreachable,
    PriceInvalid,
    PriceRoundIncomplete,
    PriceStale,
    ServiceUnavailable,
    UpstreamRejected,
)
from anode.pricing.base import MarketPrice
from anode.userop.codec import parse_quantity

_DECIMALS = bytes.fromhex("313ce567")  # decimals()
_LATEST_ROUND_DATA = bytes.fromhex("feaf968c")  # latestRoundData()


@dataclass(frozen=True, slots=True)
class Round:
    """``latestRoundData()``: (roundId, answer, startedAt, updatedAt, answeredInRound)."""

    round_id: int
    answer: int
    started_at: int
    updated_at: int
    answered_in_round: int

    @classmethod
    def decode(cls, raw: bytes) -> Round:
        if len(raw) < 160:
            raise ValueError(f"latestRoundData() returned {len(raw)} bytes, not 160")
        words = [raw[i : i + 32] for i in range(0, 160, 32)]
        return cls(
            round_id=int.from_bytes(words[0], "big"),
            answer=int.from_bytes(words[1], "big", signed=True),
            started_at=int.from_bytes(words[2], "big"),
            updated_at=int.from_bytes(words[3], "big"),
            answered_in_round=int.from_bytes(words[4], "big"),
        )


class ChainlinkSource:
    """Reads both feeds on one chain; ``read`` raises a ``PriceUnavailable`` naming the feed."""

    def __init__(self, chain: ChainClient, settings: ChainlinkPrice, *, clock: Callable[[], float] = time.time) -> None:
        self._chain = chain
        self._token_feed = bytes.fromhex(settings.token_usd_feed[2:])
        self._native_feed = bytes.fromhex(settings.native_usd_feed[2:])
        self._max_age = settings.max_age_seconds
        self._clock = clock
        self._feed_decimals: dict[bytes, int] = {}
        self.origin = (
            f"Chainlink feeds {to_checksum_address(self._token_feed)} (token/USD) and "
            f"{to_checksum_address(self._native_feed)} (native/USD)"
        )

    async def read(self, token_decimals: int) -> MarketPrice:
        token_round, native_round, chain_now, token_feed_decimals, native_feed_decimals = await asyncio.gather(
            self._round(self._token_feed, "token/USD"),
            self._round(self._native_feed, "native/USD"),
            self._chain_time(),
            self._decimals(self._token_feed, "token/USD"),
            self._decimals(self._native_feed, "native/USD"),
        )
        host_now = self._clock()
        now = max(host_now, chain_now)
        self._check(token_round, self._token_feed, "token/USD", now)
        self._check(native_round, self._native_feed, "native/USD", now)
        rate = Fraction(
            native_round.answer * 10 ** (token_feed_decimals + token_decimals),
            token_round.answer * 10**native_feed_decimals,
        )
        oldest = min(token_round.updated_at, native_round.updated_at)
        return MarketPrice(
            rate=rate,
            native_usd=Decimal(native_round.answer).scaleb(-native_feed_decimals),
            # in this host's clock: the chain may run ahead of it (``now - host_now`` seconds)
            stale_after=oldest + self._max_age - (now - host_now),
            origin=self.origin,
        )

    def _check(self, round_: Round, feed: bytes, label: str, now: float) -> None:
        name = f"Chainlink {label} feed {to_checksum_address(feed)}"
        if round_.answer <= 0:
            raise PriceInvalid(
                f"{name} answers {round_.answer} (round {round_.round_id}): a price must be positive; "
                "aNode will not sign on it",
                data={"feed": to_checksum_address(feed), "round_id": round_.round_id, "answer": str(round_.answer)},
            )
        if round_.updated_at == 0 or round_.answered_in_round < round_.round_id:
            raise PriceRoundIncomplete(
                f"{name} round {round_.round_id} is not complete (answeredInRound {round_.answered_in_round}, "
                f"updatedAt {round_.updated_at}); aNode will not sign on it",
                data={"feed": to_checksum_address(feed), "round_id": round_.round_id},
            )
        age = now - round_.updated_at
        if age > self._max_age:
            raise PriceStale(
                f"{name} was last updated {int(age)} s ago (round {round_.round_id}), more than "
                f"max_age_seconds {self._max_age}; aNode will not sign on it until the feed updates",
                data={
                    "feed": to_checksum_address(feed),
                    "updated_at": round_.updated_at,
                    "max_age_seconds": self._max_age,
                },
            )

    async def _round(self, feed: bytes, label: str) -> Round:
        raw = await self._call(feed, _LATEST_ROUND_DATA, label, "latestRoundData()")
        try:
            return Round.decode(raw)
        except ValueError as exc:
            raise self._unreachable(feed, label, f"{exc}: is it an AggregatorV3Interface on this chain?") from None

    async def _decimals(self, feed: bytes, label: str) -> int:
        cached = self._feed_decimals.get(feed)
        if cached is not None:
            return cached
        raw = await self._call(feed, _DECIMALS, label, "decimals()")
        if len(raw) < 32 or int.from_bytes(raw[:32], "big") > 77:
            raise self._unreachable(feed, label, "decimals() returned no valid value: is it a Chainlink feed?")
        value = self._feed_decimals[feed] = int.from_bytes(raw[:32], "big")
        return value

    async def _call(self, feed: bytes, selector: bytes, label: str, what: str) -> bytes:
        try:
            return await self._chain.call(feed, selector)
        except (ServiceUnavailable, UpstreamRejected) as exc:
            raise self._unreachable(feed, label, f"{what} failed: {exc.message}") from None

    async def _chain_time(self) -> float:
        try:
            block = await self._chain.request("eth_getBlockByNumber", ["latest", False])
        except (ServiceUnavailable, UpstreamRejected) as exc:
            raise PriceFeedUnreachable(
                f"cannot read the latest block to date the price rounds: {exc.message}"
            ) from None
        if not isinstance(block, dict):
            raise PriceFeedUnreachable("the node answered eth_getBlockByNumber without a block")
        try:
            return float(parse_quantity(block.get("timestamp")))
        except ValueError:
            raise PriceFeedUnreachable("the node's latest block has no valid timestamp") from None

    @staticmethod
    def _unreachable(feed: bytes, label: str, why: str) -> PriceFeedUnreachable:
        address = to_checksum_address(feed)
        return PriceFeedUnreachable(f"Chainlink {label} feed {address}: {why}", data={"feed": address})
