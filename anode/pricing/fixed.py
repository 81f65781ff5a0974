"""A price the operator sets: ``tokens_per_native`` whole tokens per one whole native coin."""

from __future__ import annotations

from fractions import Fraction

from anode.config import FixedPrice
from anode.pricing.base import MarketPrice


class FixedSource:
    """``rate = tokens_per_native × 10**decimals`` token base units per 1e18 wei; never stale."""

    def __init__(self, settings: FixedPrice) -> None:
        self._tokens_per_native = Fraction(settings.tokens_per_native)

    async def read(self, token_decimals: int) -> MarketPrice:
        rate = self._tokens_per_native * 10**token_decimals
        return MarketPrice(rate=rate, native_usd=None, stale_after=None, origin="fixed price")
