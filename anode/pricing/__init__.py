"""Token prices for ERC-20 mode: one module per source (fixed, Chainlink) and the cached book."""

from anode.pricing.base import MarketPrice, PriceSource, TokenQuote, signed_rate
from anode.pricing.book import PriceBook

__all__ = ["MarketPrice", "PriceBook", "PriceSource", "TokenQuote", "signed_rate"]
