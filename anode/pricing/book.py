"""The price book: one signed rate per token and quote window, read ahead of time.

Quote windows are aligned to the clock: with ``quote_valid_seconds = Q`` the windows are
``[k·Q, (k+1)·Q)``. Inside a window the book hands out one :class:`TokenQuote` per token, and
that is the rate every signature in the window uses: a quote given at any moment of the window
is the rate aNode signs until its ``valid_until``, never replaced by a new reading mid-window
(several server processes switch at the same instants, since the windows depend on the clock
only). A background task reads each price ``refresh_ahead`` seconds before the window ends and
keeps the result as the next window's quote, so no request waits on a feed while the book is
warm. Only a cold book (first request for a token, or every read since the last window failed)
reads on the request.

A quote is refused (:class:`PriceStale`) from the moment the rounds behind it turn stale, even
inside its window: a refresh that fails leaves the current quote serving only while it is valid
and its rounds are fresh. After the window, a failed refresh means a read on the request, which
raises the feed's refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from eth_utils.address import to_checksum_address

from anode.chain.client import ChainClient
from anode.config import ChainlinkPrice, Erc20Settings
from anode.errors import (
    ConfigError,
    Erc20NotConfigured,
    PriceFeedUnreachable,
    PriceStale,
    PriceUnavailable,
    ServiceUnavailable,
    TokenNotSupported,
    UpstreamRejected,
)
from anode.pricing.base import PriceSource, TokenQuote, signed_rate
from anode.pricing.chainlink import ChainlinkSource
from anode.pricing.fixed import FixedSource

log = logging.getLogger("anode.pricing")

_DECIMALS = bytes.fromhex("313ce567")  # decimals()
_MAX_SLEEP_S = 1.0
_MIN_SLEEP_S = 0.05


@dataclass(eq=False)
class _Slot:
    """One token of one paymaster: its source, the quote serving now and the next window's."""

    chain_id: int
    paymaster: bytes
    token: bytes
    settings: Erc20Settings
    source: PriceSource
    current: TokenQuote | None = None
    upcoming: TokenQuote | None = None
    retry_at: float = 0.0
    #: the last refresh's failure, while refreshes fail (logged once per streak)
    failure: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def name(self) -> str:
        return f"token {to_checksum_address(self.token)} of paymaster {to_checksum_address(self.paymaster)}"

    def serving(self, now: float) -> TokenQuote | None:
        """The quote whose window holds ``now`` (the next one takes over once its window starts)."""
        if self.upcoming is not None and self.upcoming.valid_from <= now:
            self.current, self.upcoming = self.upcoming, None
        quote = self.current
        if quote is not None and quote.valid_from <= now < quote.valid_until:
            return quote
        return None


class PriceBook:
    """Quotes for every ERC-20 paymaster: ``paymasters`` maps ``(chain_id, address)`` to its settings."""

    def __init__(
        self,
        paymasters: Mapping[tuple[int, bytes], Erc20Settings],
        chains: Mapping[int, ChainClient],
        *,
        clock: Callable[[], float] = time.time,
        refresh_ahead_seconds: float | None = None,
        retry_seconds: float = 1.0,
    ) -> None:
        self._clock = clock
        self._chains = chains
        self._refresh_ahead = refresh_ahead_seconds
        self._retry_seconds = retry_seconds
        self._slots: dict[tuple[int, bytes], dict[bytes, _Slot]] = {}
        self._decimals: dict[tuple[int, bytes], int] = {}
        self._task: asyncio.Task[None] | None = None
        for (chain_id, paymaster), settings in paymasters.items():
            chain = chains.get(chain_id)
            if chain is None:
                raise ConfigError(f"ERC-20 paymaster {to_checksum_address(paymaster)}: no node for chain {chain_id}")
            slots = self._slots.setdefault((chain_id, bytes(paymaster)), {})
            for token in settings.tokens:
                address = bytes.fromhex(token.address[2:])
                source: PriceSource = (
                    ChainlinkSource(chain, token.price, clock=clock)
                    if isinstance(token.price, ChainlinkPrice)
                    else FixedSource(token.price)
                )
                slots[address] = _Slot(chain_id, bytes(paymaster), address, settings, source)

    # -- the request path ---------------------------------------------------------------------

    def tokens(self, chain_id: int, paymaster: bytes) -> list[str]:
        """The tokens ``paymaster`` accepts, checksummed, in configuration order."""
        return [to_checksum_address(token) for token in self._paymaster(chain_id, paymaster)]

    async def quote(self, chain_id: int, paymaster: bytes, token: bytes) -> TokenQuote:
        """The rate aNode signs now for ``token``; raises ``PriceUnavailable`` rather than sign on a bad price."""
        slots = self._paymaster(chain_id, paymaster)
        slot = slots.get(bytes(token))
        if slot is None:
            supported = [to_checksum_address(t) for t in slots]
            raise TokenNotSupported(
                f"token {_display(token)} is not accepted by paymaster {to_checksum_address(paymaster)} on chain "
                f"{chain_id}; pay with one of: {', '.join(supported)}",
                field="token",
                data={"supported": supported},
            )
        now = self._clock()
        quote = slot.serving(now)
        if quote is None:  # a cold book: read on the request (one read for every request waiting)
            async with slot.lock:
                now = self._clock()
                quote = slot.serving(now)
                if quote is None:
                    quote = slot.current = await self._read(slot, now, self._window(slot, now))
        if quote.stale_after is not None and now > quote.stale_after:
            why = f" (the last refresh failed: {slot.failure})" if slot.failure else ""
            raise PriceStale(
                f"the price of {slot.name} rests on a feed round that is now older than max_age_seconds{why}; "
                "aNode will not sign on it until the feed updates",
                data={"token": to_checksum_address(slot.token)},
            )
        return quote

    def failures(self) -> dict[str, str]:
        """Tokens whose last background read failed (checksummed token → reason), for ``/health``."""
        return {to_checksum_address(slot.token): slot.failure for slot in self._all() if slot.failure is not None}

    # -- the background refresh -----------------------------------------------------------------

    async def start(self) -> None:
        """Read every price once (failures are logged and retried, not raised) and start refreshing."""
        await self.refresh()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="anode-price-refresh")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def refresh(self) -> None:
        """One pass: read every price whose next window starts within ``refresh_ahead``, or that has none."""
        now = self._clock()
        due = [slot for slot in self._all() if now >= slot.retry_at and self._next_window(slot, now) is not None]
        await asyncio.gather(*(self._refresh(slot) for slot in due))

    async def _refresh(self, slot: _Slot) -> None:
        async with slot.lock:
            now = self._clock()
            window = self._next_window(slot, now)
            if window is None:
                return
            try:
                quote = await self._read(slot, now, window)
            except PriceUnavailable as exc:
                if slot.failure is None:
                    log.warning("price of %s not refreshed: %s", slot.name, exc.message)
                slot.failure = exc.message
                slot.retry_at = now + self._retry_seconds
                return
            if slot.failure is not None:
                log.info("price of %s refreshed again", slot.name)
            slot.failure = None
            if quote.valid_from <= now:
                slot.current = quote
            else:
                slot.upcoming = quote

    def _next_window(self, slot: _Slot, now: float) -> tuple[int, int] | None:
        """The window a refresh should read for now, or None when nothing is due."""
        current = slot.serving(now)
        if current is None:
            return self._window(slot, now)
        if slot.upcoming is None and now >= current.valid_until - self._ahead(slot):
            return current.valid_until, current.valid_until + slot.settings.quote_valid_seconds
        return None

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # a bug must not end the refresh: requests would then read on their own
                log.exception("price refresh failed")
            await asyncio.sleep(self._sleep_seconds())

    def _sleep_seconds(self) -> float:
        now = self._clock()
        due = now + _MAX_SLEEP_S
        for slot in self._all():
            if slot.failure is not None:
                due = min(due, slot.retry_at)
            elif slot.upcoming is not None:
                due = min(due, slot.upcoming.valid_from)
            elif slot.current is not None:
                due = min(due, slot.current.valid_until - self._ahead(slot))
        return min(_MAX_SLEEP_S, max(_MIN_SLEEP_S, due - now))

    # -- reading --------------------------------------------------------------------------------

    async def _read(self, slot: _Slot, now: float, window: tuple[int, int]) -> TokenQuote:
        decimals = await self._token_decimals(slot)
        price = await slot.source.read(decimals)
        exchange_rate, market_rate = signed_rate(price.rate, slot.settings.markup_percent)
        return TokenQuote(
            token=slot.token,
            decimals=decimals,
            exchange_rate=exchange_rate,
            market_rate=market_rate,
            native_usd=price.native_usd,
            quoted_at=int(now),
            valid_from=window[0],
            valid_until=window[1],
            stale_after=price.stale_after,
        )

    async def _token_decimals(self, slot: _Slot) -> int:
        key = (slot.chain_id, slot.token)
        cached = self._decimals.get(key)
        if cached is not None:
            return cached
        address = to_checksum_address(slot.token)
        try:
            raw = await self._chains[slot.chain_id].call(slot.token, _DECIMALS)
        except (ServiceUnavailable, UpstreamRejected) as exc:
            raise PriceFeedUnreachable(f"token {address}: decimals() failed: {exc.message}") from None
        if len(raw) < 32 or int.from_bytes(raw[:32], "big") > 77:
            raise PriceFeedUnreachable(
                f"token {address} answers no decimals(): is it an ERC-20 deployed on chain {slot.chain_id}?"
            )
        value = self._decimals[key] = int.from_bytes(raw[:32], "big")
        return value

    # -- lookups ----------------------------------------------------------------------------------

    def _paymaster(self, chain_id: int, paymaster: bytes) -> dict[bytes, _Slot]:
        slots = self._slots.get((chain_id, bytes(paymaster)))
        if slots is None:
            offered = [to_checksum_address(pm) for (chain, pm) in self._slots if chain == chain_id]
            hint = (
                f"paymasters with ERC-20 mode on this chain: {', '.join(offered)}"
                if offered
                else ("no paymaster on this chain has ERC-20 mode")
            )
            raise Erc20NotConfigured(
                f"paymaster {_display(paymaster)} on chain {chain_id} has no ERC-20 mode ({hint})",
                data={"paymasters": offered},
            )
        return slots

    def _all(self) -> list[_Slot]:
        return [slot for slots in self._slots.values() for slot in slots.values()]

    def _window(self, slot: _Slot, now: float) -> tuple[int, int]:
        length = slot.settings.quote_valid_seconds
        start = int(now // length) * length
        return start, start + length

    def _ahead(self, slot: _Slot) -> float:
        if self._refresh_ahead is not None:
            return self._refresh_ahead
        return min(10.0, slot.settings.quote_valid_seconds / 2)


def _display(address: bytes) -> str:
    return to_checksum_address(address) if len(address) == 20 else "0x" + bytes(address).hex()
