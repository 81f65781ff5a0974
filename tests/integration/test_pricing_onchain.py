"""The price book against real aggregator contracts on anvil, and its rate against the real charge.

Feeds are ``anode/devchain/contracts/PriceFeed.sol`` (AggregatorV3Interface; the owner sets
each round), tokens ``TestToken.sol`` with 6 and 18 decimals. The book reads them through a real
:class:`ChainClient`. Its clock is this host's, shifted by ``offset`` seconds, so a test can
step into the next quote window without waiting; the chain's own clock is moved by anvil's
``evm_increaseTime`` on an anvil of its own (the session's anvil must keep real time).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from eth_utils.address import to_checksum_address

from anode.chain.client import ChainClient
from anode.config import Erc20Settings
from anode.devchain.anvil import Anvil
from anode.devchain.deploy import Deployment
from anode.devchain.rpc import DevRpc, encode_call
from anode.devchain.solidity import dev_contracts
from anode.errors import PriceInvalid, PriceRoundIncomplete, PriceStale
from anode.paymasters.singleton_erc20 import Erc20Terms, max_token_cost
from anode.pricing import PriceBook
from tests.support.erc20 import (
    POST_OP_GAS,
    Erc20Sponsor,
    approve_paymaster,
    balance_of,
    expected_charge,
    fresh_address,
    latest_window,
    mint,
    new_op,
    post_op_call,
    sponsored_events,
)

PAYMASTER = bytes.fromhex("ab" * 20)  # the book does not read the paymaster; the charge test uses a real one
USD = 10**8  # the feeds' 8 decimals


def _deploy(rpc_url: str, name: str, types: list[str], args: list[Any]) -> str:
    with DevRpc(rpc_url) as rpc:
        receipt = rpc.transact(rpc.accounts()[0], None, dev_contracts()[name].creation_code(types, args))
    return to_checksum_address(receipt["contractAddress"])


def _send(rpc_url: str, to: str, signature: str, types: list[str], args: list[Any]) -> None:
    with DevRpc(rpc_url) as rpc:
        rpc.transact(rpc.accounts()[0], to, encode_call(signature, types, args))


def _block_time(rpc_url: str) -> int:
    with DevRpc(rpc_url) as rpc:
        return int(rpc.call("eth_getBlockByNumber", "latest", False)["timestamp"], 16)


@dataclass
class Market:
    """Two tokens (6 and 18 decimals), each with its USD feed, and one ETH/USD feed."""

    rpc_url: str
    usdc: str
    big: str
    usdc_feed: str
    big_feed: str
    native_feed: str

    @classmethod
    def deploy(cls, rpc_url: str) -> Market:
        with DevRpc(rpc_url) as rpc:
            owner = rpc.accounts()[0]
        feed = ["address", "uint8", "string", "int256"]
        return cls(
            rpc_url=rpc_url,
            usdc=_deploy(rpc_url, "TestToken", ["string", "string", "uint8"], ["USD Coin", "USDC", 6]),
            big=_deploy(rpc_url, "TestToken", ["string", "string", "uint8"], ["Big", "BIG", 18]),
            usdc_feed=_deploy(rpc_url, "PriceFeed", feed, [owner, 8, "USDC / USD", 1 * USD]),
            big_feed=_deploy(rpc_url, "PriceFeed", feed, [owner, 18, "BIG / USD", 25 * 10**16]),  # 0.25 USD
            native_feed=_deploy(rpc_url, "PriceFeed", feed, [owner, 8, "ETH / USD", 3000 * USD]),
        )

    def settings(self, markup: str = "10", valid: int = 60, max_age: int = 3600) -> Erc20Settings:
        def chainlink(feed: str) -> dict[str, Any]:
            return {"source": "chainlink", "token_usd_feed": feed, "native_usd_feed": self.native_feed,
                    "max_age_seconds": max_age}  # fmt: skip

        return Erc20Settings.model_validate(
            {
                "treasury": "0x" + "ee" * 20,
                "markup_percent": markup,
                "quote_valid_seconds": valid,
                "tokens": [
                    {"address": self.usdc, "price": chainlink(self.usdc_feed)},
                    {"address": self.big, "price": chainlink(self.big_feed)},
                ],
            }
        )

    def set_answer(self, feed: str, answer: int) -> None:
        _send(self.rpc_url, feed, "setAnswer(int256)", ["int256"], [answer])

    def set_round(self, feed: str, round_id: int, answer: int, updated_at: int, answered_in_round: int) -> None:
        _send(
            self.rpc_url, feed, "setRound(uint80,int256,uint256,uint256,uint80)",
            ["uint80", "int256", "uint256", "uint256", "uint80"],
            [round_id, answer, updated_at, updated_at, answered_in_round],
        )  # fmt: skip


class Clock:
    """This host's clock plus ``offset`` seconds."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def next_window(self, valid: int) -> None:
        """Jump to the start of the next quote window."""
        now = self()
        self.offset += (now // valid + 1) * valid - now


class Books:
    """Books on one chain; each is closed (and its client) at the end of the test."""

    def __init__(self, rpc_url: str) -> None:
        self.rpc_url = rpc_url
        self.opened: list[tuple[PriceBook, ChainClient]] = []

    def open(self, settings: Erc20Settings, clock: Clock | None = None, **options: Any) -> PriceBook:
        client = ChainClient(self.rpc_url)
        book = PriceBook({(31337, PAYMASTER): settings}, {31337: client}, clock=clock or Clock(), **options)
        self.opened.append((book, client))
        return book

    async def aclose(self) -> None:
        for book, client in self.opened:
            await book.aclose()
            await client.aclose()


@pytest.fixture
async def books(anvil: Anvil) -> AsyncIterator[Books]:
    opened = Books(anvil.rpc_url)
    yield opened
    await opened.aclose()


@pytest.fixture
def market(anvil: Anvil) -> Market:
    return Market.deploy(anvil.rpc_url)


def _address(text: str) -> bytes:
    return bytes.fromhex(text[2:])


async def test_rates_of_6_and_18_decimal_tokens_follow_the_feeds(market: Market, books: Books) -> None:
    clock = Clock()
    book = books.open(market.settings(markup="10"), clock)
    usdc = await book.quote(31337, PAYMASTER, _address(market.usdc))
    big = await book.quote(31337, PAYMASTER, _address(market.big))
    assert (usdc.decimals, usdc.market_rate, usdc.exchange_rate) == (6, 3000 * 10**6, 3300 * 10**6)
    assert (big.decimals, big.market_rate, big.exchange_rate) == (18, 12_000 * 10**18, 13_200 * 10**18)
    assert usdc.native_usd == Decimal(3000)

    market.set_answer(market.native_feed, 3500 * USD)  # ETH up
    market.set_answer(market.big_feed, 5 * 10**17)  # BIG doubles: half as many per ETH
    assert (await book.quote(31337, PAYMASTER, _address(market.usdc))) == usdc  # the window holds its rate
    clock.next_window(60)
    usdc = await book.quote(31337, PAYMASTER, _address(market.usdc))
    big = await book.quote(31337, PAYMASTER, _address(market.big))
    assert (usdc.market_rate, usdc.exchange_rate) == (3500 * 10**6, 3850 * 10**6)
    assert (big.market_rate, big.exchange_rate) == (7000 * 10**18, 7700 * 10**18)


async def test_a_round_dated_back_past_max_age_is_refused(market: Market, books: Books) -> None:
    long_ago = _block_time(market.rpc_url) - 3700
    market.set_round(market.native_feed, 2, 3000 * USD, long_ago, 2)
    with pytest.raises(PriceStale) as caught:
        await books.open(market.settings(max_age=3600)).quote(31337, PAYMASTER, _address(market.usdc))
    assert market.native_feed in caught.value.message
    assert (await books.open(market.settings(max_age=3800)).quote(31337, PAYMASTER, _address(market.usdc))).market_rate


async def test_an_incomplete_round_and_a_zero_answer_are_refused(market: Market, books: Books) -> None:
    now = _block_time(market.rpc_url)
    market.set_round(market.usdc_feed, 5, 1 * USD, now, 4)  # answeredInRound < roundId
    with pytest.raises(PriceRoundIncomplete) as incomplete:
        await books.open(market.settings()).quote(31337, PAYMASTER, _address(market.usdc))
    assert market.usdc_feed in incomplete.value.message
    market.set_answer(market.usdc_feed, 0)
    with pytest.raises(PriceInvalid):
        await books.open(market.settings()).quote(31337, PAYMASTER, _address(market.usdc))
    market.set_answer(market.usdc_feed, 1 * USD)
    assert (await books.open(market.settings()).quote(31337, PAYMASTER, _address(market.usdc))).market_rate > 0


@pytest.fixture
def traveller() -> Iterator[Anvil]:
    """An anvil of this test's own: its clock is moved ahead."""
    with Anvil() as node:
        yield node


async def test_a_round_goes_stale_when_the_chains_clock_moves_past_max_age(traveller: Anvil) -> None:
    market = Market.deploy(traveller.rpc_url)
    books = Books(traveller.rpc_url)
    clock = Clock()
    try:
        book = books.open(market.settings(max_age=3600), clock)
        assert (await book.quote(31337, PAYMASTER, _address(market.usdc))).market_rate == 3000 * 10**6
        with DevRpc(traveller.rpc_url) as rpc:
            rpc.call("evm_increaseTime", 3700)
            rpc.call("evm_mine")
        clock.next_window(60)  # the next read sees the chain's clock, 3700 s past the round
        with pytest.raises(PriceStale):
            await book.quote(31337, PAYMASTER, _address(market.usdc))
        market.set_answer(market.native_feed, 3000 * USD)  # fresh rounds on both feeds serve again
        market.set_answer(market.usdc_feed, 1 * USD)
        assert (await book.quote(31337, PAYMASTER, _address(market.usdc))).market_rate == 3000 * 10**6
    finally:
        await books.aclose()


async def test_the_background_refresh_reads_the_new_price_before_its_window(market: Market, books: Books) -> None:
    book = books.open(market.settings(markup="0", valid=3), refresh_ahead_seconds=1.5)
    await book.start()
    first = await book.quote(31337, PAYMASTER, _address(market.usdc))
    assert first.exchange_rate == 3000 * 10**6
    market.set_answer(market.native_feed, 3100 * USD)
    # requests keep asking; a window whose quote a request had to read itself (the machine was
    # too busy for the refresh to run in time) does not count: wait for one read ahead
    deadline = time.monotonic() + 30
    while True:
        quote = await book.quote(31337, PAYMASTER, _address(market.usdc))
        if quote.exchange_rate == 3100 * 10**6 and quote.quoted_at < quote.valid_from:
            break
        assert time.monotonic() < deadline, f"no quote was read ahead of its window (last: {quote})"
        await asyncio.sleep(0.05)
    assert quote.valid_from >= first.valid_until


async def test_the_signed_rate_is_what_the_contract_charges(
    anvil: Anvil, deployment: Deployment, paymaster_key: str, market: Market, books: Books
) -> None:
    sponsor = Erc20Sponsor(anvil, deployment, "v0.7", paymaster_key)
    quote = await books.open(market.settings(markup="12.5")).quote(31337, PAYMASTER, _address(market.usdc))
    assert quote.exchange_rate == 3375 * 10**6  # 3000 USDC per ETH + 12.5 %
    terms = Erc20Terms(
        token=_address(market.usdc),
        post_op_gas=POST_OP_GAS,
        exchange_rate=quote.exchange_rate,
        paymaster_validation_gas_limit=30_000,
        treasury=fresh_address(),
    )
    op = new_op(sponsor, approve_paymaster(market.usdc, sponsor.paymaster_address))
    mint(anvil, market.usdc, op.sender, 1000 * 10**6)
    outcome = sponsor.submit(sponsor.sponsor(op, latest_window(anvil), terms))
    assert outcome.success, outcome.reason
    assert outcome.tx_hash is not None
    ((mode, token, paid, rate),) = sponsored_events(anvil, outcome.tx_hash, sponsor.paymaster_address)
    assert (mode, token, rate) == (1, market.usdc, quote.exchange_rate)
    post_op = post_op_call(anvil, "v0.7", outcome.tx_hash, sponsor.paymaster_address)
    assert paid == expected_charge("v0.7", op, terms, post_op) > 0  # token_cost at the signed rate
    assert balance_of(anvil, market.usdc, terms.treasury) == paid
    assert paid <= max_token_cost(terms, sponsor.model(op, latest_window(anvil), terms))
