"""What every price source gives the book, and the quote the book gives the request path.

A source answers one question: how many token base units are worth 1e18 wei (one whole native
coin) right now, exactly (a :class:`~fractions.Fraction`), and until when the reading behind it
may be used. The book adds the markup, rounds up and holds the result for a quote window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Protocol

from anode.errors import PriceInvalid

_UINT256 = 1 << 256


@dataclass(frozen=True, slots=True)
class MarketPrice:
    """One reading of a source."""

    #: token base units per 1e18 wei, exact, without markup
    rate: Fraction
    #: USD per whole native coin when a USD feed is known, else None
    native_usd: Decimal | None
    #: unix seconds (this host's clock) after which the rounds behind ``rate`` are stale; None: never
    stale_after: float | None
    #: what the reading came from, for messages ("Chainlink feeds 0x…/0x…", "fixed price")
    origin: str


class PriceSource(Protocol):
    """A source of one token's market price; ``read`` raises a ``PriceUnavailable`` to refuse."""

    async def read(self, token_decimals: int) -> MarketPrice: ...


@dataclass(frozen=True, slots=True)
class TokenQuote:
    """The rate aNode signs for one token of one paymaster, and for how long it does."""

    token: bytes  # 20 bytes
    #: read on chain (``decimals()``) once, cached
    decimals: int
    #: token base units per 1e18 wei, markup included, rounded up: the value aNode signs
    exchange_rate: int
    #: the same without markup (rounded up too)
    market_rate: int
    #: USD per whole native coin when a USD feed is known, else None
    native_usd: Decimal | None
    #: unix seconds: when the price behind this quote was read
    quoted_at: int
    #: unix seconds: from then on this is the rate aNode signs
    valid_from: int
    #: unix seconds: until then (exclusive), this is the rate aNode signs
    valid_until: int
    #: unix seconds after which the rounds behind the price are stale (None: a fixed price)
    stale_after: float | None = None


def signed_rate(rate: Fraction, markup_percent: Decimal) -> tuple[int, int]:
    """``(exchange_rate, market_rate)``: ``rate × (1 + markup/100)`` and ``rate``, each rounded UP.

    Rounding up means the sponsor never loses to rounding: the contract charges
    ``gas × exchangeRate / 1e18`` (rounded down), so a rate rounded down could charge one base
    unit less than the market per 1e18 wei. A rate below one base unit becomes 1 (the contract
    refuses 0). Raises :class:`PriceInvalid` when the rate does not fit the contract's uint256.
    """
    marked = rate * (1 + Fraction(markup_percent) / 100)
    exchange_rate, market_rate = max(1, math.ceil(marked)), max(1, math.ceil(rate))
    if exchange_rate >= _UINT256:
        raise PriceInvalid(f"the exchange rate {exchange_rate} does not fit a uint256: check the token's price")
    return exchange_rate, market_rate
