"""The price book against a fake node: rates, rounding, refusals, the quote window, refresh ahead.

The node is a fake (``FakeChain``: answers ``decimals()`` and ``latestRoundData()`` from a
table, counts calls); the clock is a number the test moves. The same book against real
aggregator contracts on anvil is ``tests/integration/test_pricing_onchain.py``.
"""

from __future__ import annotations

import math
from collections import Counter
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from eth_utils.address import to_checksum_address

from anode.config import Erc20Settings
from anode.errors import (
    ChainUnavailable,
    Erc20NotConfigured,
    PriceFeedUnreachable,
    PriceInvalid,
    PriceRoundIncomplete,
    PriceStale,
    TokenNotSupported,
)
from anode.pricing import PriceBook, signed_rate

CHAIN = 31337
PAYMASTER = bytes.fromhex("aa" * 20)
USDC = bytes.fromhex("11" * 20)  # 6 decimals, Chainlink-priced
PNT = bytes.fromhex("22" * 20)  # 18 decimals, fixed price
TOKEN_FEED = bytes.fromhex("f1" * 20)
NATIVE_FEED = bytes.fromhex("f2" * 20)
DECIMALS = bytes.fromhex("313ce567")
LATEST_ROUND = bytes.fromhex("feaf968c")
T0 = 1_800_000_000  # a window start for 60 s windows (divisible by 60)


def _word(value: int) -> bytes:
    return value.to_bytes(32, "big", signed=True)


class FakeChain:
    """``call`` and ``request`` of a ChainClient, from a table; ``down`` makes every read fail."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.answers: dict[tuple[bytes, bytes], bytes] = {}
        self.calls: Counter[tuple[bytes, bytes]] = Counter()
        self.down = False
        self.chain_ahead = 0  # the latest block's timestamp minus the host clock

    def set_decimals(self, contract: bytes, decimals: int) -> None:
        self.answers[(contract, DECIMALS)] = _word(decimals)

    def set_round(
        self, feed: bytes, answer: int, updated_at: float, round_id: int = 7, answered_in_round: int | None = None
    ) -> None:
        answered = round_id if answered_in_round is None else answered_in_round
        words = [round_id, answer, int(updated_at), int(updated_at), answered]
        self.answers[(feed, LATEST_ROUND)] = b"".join(_word(w) for w in words)

    async def call(self, to: bytes, data: bytes) -> bytes:
        self.calls[(to, data)] += 1
        if self.down:
            raise ChainUnavailable("node at http://127.0.0.1:1 is unreachable (connection refused)")
        return self.answers.get((to, data), b"")  # no code there: an empty result, as a node answers

    async def request(self, method: str, params: list[Any]) -> Any:
        assert method == "eth_getBlockByNumber"
        if self.down:
            raise ChainUnavailable("node at http://127.0.0.1:1 is unreachable (connection refused)")
        return {"timestamp": hex(int(self.clock.now) + self.chain_ahead)}

    def reads(self) -> int:
        return sum(count for (_, selector), count in self.calls.items() if selector == LATEST_ROUND)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _settings(
    markup: str = "0", valid: int = 60, max_age: int = 3600, tokens_per_native: str = "3000.5"
) -> Erc20Settings:
    return Erc20Settings.model_validate(
        {
            "treasury": "0x" + "ee" * 20,
            "markup_percent": markup,
            "quote_valid_seconds": valid,
            "tokens": [
                {
                    "address": to_checksum_address(USDC),
                    "price": {
                        "source": "chainlink",
                        "token_usd_feed": to_checksum_address(TOKEN_FEED),
                        "native_usd_feed": to_checksum_address(NATIVE_FEED),
                        "max_age_seconds": max_age,
                    },
                },
                {
                    "address": to_checksum_address(PNT),
                    "price": {"source": "fixed", "tokens_per_native": tokens_per_native},
                },
            ],
        }
    )


class World:
    def __init__(self, settings: Erc20Settings | None = None, now: float = T0 + 5) -> None:
        self.clock = Clock(now)
        self.chain = FakeChain(self.clock)
        self.chain.set_decimals(USDC, 6)
        self.chain.set_decimals(PNT, 18)
        self.chain.set_decimals(TOKEN_FEED, 8)
        self.chain.set_decimals(NATIVE_FEED, 8)
        self.set_prices(native_usd=300_000_000_000, token_usd=100_000_000)  # 3000 USD per ETH, 1 USD per token
        self.settings = settings or _settings()
        self.book = PriceBook({(CHAIN, PAYMASTER): self.settings}, {CHAIN: self.chain}, clock=self.clock)  # type: ignore[dict-item]

    def set_prices(self, native_usd: int, token_usd: int, updated_at: float | None = None) -> None:
        when = self.clock.now if updated_at is None else updated_at
        self.chain.set_round(NATIVE_FEED, native_usd, when)
        self.chain.set_round(TOKEN_FEED, token_usd, when)

    async def quote(self, token: bytes = USDC) -> int:
        return (await self.book.quote(CHAIN, PAYMASTER, token)).exchange_rate


# -- rates ----------------------------------------------------------------------------------------


async def test_fixed_price_is_tokens_per_native_in_base_units_with_the_markup() -> None:
    world = World(_settings(markup="10"))
    quote = await world.book.quote(CHAIN, PAYMASTER, PNT)
    assert quote.decimals == 18
    assert quote.market_rate == 3000_500000000000000000  # 3000.5 × 10**18 per 1e18 wei
    assert quote.exchange_rate == 3300_550000000000000000  # × 1.10
    assert quote.native_usd is None
    assert (quote.valid_from, quote.valid_until) == (T0, T0 + 60)
    six = World(_settings(markup="10"))
    six.chain.set_decimals(PNT, 6)  # the decimals come from the token
    quote = await six.book.quote(CHAIN, PAYMASTER, PNT)
    assert (quote.decimals, quote.market_rate, quote.exchange_rate) == (6, 3000_500000, 3300_550000)


async def test_rates_round_up_so_the_sponsor_never_loses_to_rounding() -> None:
    world = World(_settings(markup="3.3", tokens_per_native="0.0000000000000000011"))  # 1.1 base units
    quote = await world.book.quote(CHAIN, PAYMASTER, PNT)
    assert (quote.market_rate, quote.exchange_rate) == (2, 2)  # 1.1 → 2, 1.1363 → 2
    assert signed_rate(Fraction(10), Decimal("0.01")) == (11, 10)  # 10.001 → 11
    assert signed_rate(Fraction(1, 10**9), Decimal(0)) == (1, 1)  # never 0: the contract refuses it
    with pytest.raises(PriceInvalid):
        signed_rate(Fraction(2**256), Decimal(0))


async def test_chainlink_rate_is_native_usd_over_token_usd_in_token_base_units() -> None:
    world = World(_settings(markup="5"))
    world.chain.set_decimals(TOKEN_FEED, 18)  # feeds of different decimals
    world.chain.set_round(TOKEN_FEED, 999_800_000_000_000_000, world.clock.now)  # 0.9998 USD per token
    world.chain.set_round(NATIVE_FEED, 300_012_345_678, world.clock.now)  # 3000.12345678 USD per ETH
    quote = await world.book.quote(CHAIN, PAYMASTER, USDC)
    exact = Fraction(300_012_345_678, 10**8) / Fraction(9998, 10**4) * 10**6
    assert quote.market_rate == math.ceil(exact) == 3_000_723_602
    assert quote.exchange_rate == math.ceil(exact * Fraction(105, 100))
    assert quote.native_usd == Decimal("3000.12345678")
    assert quote.decimals == 6


# -- refusals ---------------------------------------------------------------------------------------


async def test_a_stale_round_is_refused_naming_the_feed() -> None:
    world = World()
    world.chain.set_round(TOKEN_FEED, 100_000_000, world.clock.now - 3601)
    with pytest.raises(PriceStale) as caught:
        await world.quote()
    assert caught.value.code == "ANODE_PRICE_STALE"
    assert to_checksum_address(TOKEN_FEED) in caught.value.message
    assert "token/USD" in caught.value.message
    world.chain.set_round(TOKEN_FEED, 100_000_000, world.clock.now - 3600)  # exactly max_age: still fresh
    assert await world.quote() > 0


async def test_a_round_is_stale_by_the_chains_clock_when_it_runs_ahead() -> None:
    world = World()
    world.chain.chain_ahead = 4000  # the latest block is 4000 s ahead of this host
    with pytest.raises(PriceStale):
        await world.quote()


async def test_an_incomplete_round_is_refused() -> None:
    world = World()
    world.chain.set_round(NATIVE_FEED, 300_000_000_000, world.clock.now, round_id=9, answered_in_round=8)
    with pytest.raises(PriceRoundIncomplete) as caught:
        await world.quote()
    assert caught.value.code == "ANODE_PRICE_ROUND_INCOMPLETE"
    assert to_checksum_address(NATIVE_FEED) in caught.value.message
    world.chain.set_round(NATIVE_FEED, 300_000_000_000, 0)  # updatedAt 0: never completed
    with pytest.raises(PriceRoundIncomplete):
        await world.quote()


@pytest.mark.parametrize("answer", [0, -1])
async def test_a_price_that_is_not_positive_is_refused(answer: int) -> None:
    world = World()
    world.chain.set_round(TOKEN_FEED, answer, world.clock.now)
    with pytest.raises(PriceInvalid) as caught:
        await world.quote()
    assert caught.value.code == "ANODE_PRICE_INVALID"
    assert caught.value.http_status == 503


async def test_an_unreachable_or_missing_feed_is_refused() -> None:
    world = World()
    world.chain.down = True
    with pytest.raises(PriceFeedUnreachable) as caught:
        await world.quote()
    assert caught.value.code == "ANODE_PRICE_FEED_UNREACHABLE"
    world.chain.down = False
    del world.chain.answers[(NATIVE_FEED, LATEST_ROUND)]  # no contract at the feed's address
    with pytest.raises(PriceFeedUnreachable) as caught:
        await world.quote()
    assert to_checksum_address(NATIVE_FEED) in caught.value.message


async def test_an_unknown_token_is_refused_with_the_supported_ones() -> None:
    world = World()
    with pytest.raises(TokenNotSupported) as caught:
        await world.quote(bytes.fromhex("33" * 20))
    assert caught.value.code == "ANODE_ERC20_TOKEN_NOT_SUPPORTED"
    assert caught.value.http_status == 400
    supported = [to_checksum_address(USDC), to_checksum_address(PNT)]
    assert caught.value.data == {"field": "token", "supported": supported}
    assert all(address in caught.value.message for address in supported)
    assert world.book.tokens(CHAIN, PAYMASTER) == supported


async def test_a_paymaster_without_erc20_mode_is_refused() -> None:
    world = World()
    with pytest.raises(Erc20NotConfigured) as caught:
        await world.book.quote(CHAIN, bytes.fromhex("bb" * 20), USDC)
    assert caught.value.code == "ANODE_ERC20_NOT_CONFIGURED"
    assert to_checksum_address(PAYMASTER) in caught.value.message  # the one that has it
    with pytest.raises(Erc20NotConfigured):
        world.book.tokens(1, PAYMASTER)  # same address, another chain


# -- the quote window, the cache, refresh ahead -----------------------------------------------------


async def test_a_warm_book_answers_without_reading_the_chain() -> None:
    world = World()
    await world.book.refresh()  # what start() does first
    before = sum(world.chain.calls.values())
    for _ in range(5):
        await world.quote()
        await world.quote(PNT)
    assert sum(world.chain.calls.values()) == before
    assert world.chain.calls[(USDC, DECIMALS)] == 1  # decimals read once, ever
    assert world.chain.calls[(TOKEN_FEED, DECIMALS)] == 1


async def test_a_quote_is_the_signed_rate_until_its_window_ends_and_refresh_ahead_prepares_the_next() -> None:
    world = World()
    first = await world.book.quote(CHAIN, PAYMASTER, USDC)
    assert first.exchange_rate == 3000 * 10**6
    world.set_prices(native_usd=330_000_000_000, token_usd=100_000_000)  # the market moves up 10 %
    world.clock.now = T0 + 40  # not yet within refresh_ahead (10 s) of the window's end
    await world.book.refresh()
    assert world.chain.reads() == 2  # nothing read
    assert await world.quote() == first.exchange_rate
    world.clock.now = T0 + 51
    await world.book.refresh()  # reads the new price for the next window
    assert world.chain.reads() == 4
    assert await world.book.quote(CHAIN, PAYMASTER, USDC) == first  # still what was quoted
    world.clock.now = T0 + 59.999
    assert await world.quote() == first.exchange_rate
    world.clock.now = T0 + 60  # the next window: its rate, without a read on the request
    second = await world.book.quote(CHAIN, PAYMASTER, USDC)
    assert (second.exchange_rate, second.valid_from, second.valid_until) == (3300 * 10**6, T0 + 60, T0 + 120)
    assert world.chain.reads() == 4
    # two readings, one decimals() of the token and of each feed
    assert [world.chain.calls[(c, DECIMALS)] for c in (USDC, TOKEN_FEED, NATIVE_FEED)] == [1, 1, 1]


async def test_a_failed_refresh_keeps_the_quote_while_its_window_lasts_then_refuses() -> None:
    world = World()
    await world.book.start()
    try:
        quoted = await world.quote()
        world.chain.down = True
        world.clock.now = T0 + 55
        await world.book.refresh()
        assert "unreachable" in world.book.failures()[to_checksum_address(USDC)]
        assert await world.quote() == quoted  # still valid, its rounds still fresh
        world.clock.now = T0 + 60  # the window is over: a read on the request, which fails
        with pytest.raises(PriceFeedUnreachable):
            await world.quote()
        world.chain.down = False
        assert await world.quote() == quoted  # the feed is back
    finally:
        await world.book.aclose()


async def test_a_quote_whose_round_turns_stale_inside_its_window_is_refused() -> None:
    world = World(_settings(valid=60, max_age=100))
    world.set_prices(300_000_000_000, 100_000_000, updated_at=T0 - 50)  # 55 s old when read
    assert await world.quote() == 3000 * 10**6
    world.clock.now = T0 + 50  # 100 s old: still fresh
    assert await world.quote() == 3000 * 10**6
    world.clock.now = T0 + 51  # the window lasts until T0 + 60, the round does not
    with pytest.raises(PriceStale) as caught:
        await world.quote()
    assert to_checksum_address(USDC) in caught.value.message
    assert await world.quote(PNT) > 0  # a fixed price never turns stale


async def test_start_does_not_fail_on_a_feed_that_is_down_and_the_book_recovers() -> None:
    world = World()
    world.chain.down = True
    await world.book.start()
    try:
        assert set(world.book.failures()) == {to_checksum_address(USDC), to_checksum_address(PNT)}
        world.chain.down = False
        world.clock.now += 1.5  # past the retry delay
        await world.book.refresh()
        assert world.book.failures() == {}
        reads = world.chain.reads()
        assert await world.quote() == 3000 * 10**6
        assert world.chain.reads() == reads
    finally:
        await world.book.aclose()
