"""``pimlico_getTokenQuotes [{tokens: [...]}, entryPoint, chainId]``: the rates ERC-20 mode signs.

The answer is Pimlico's (permissionless.js ``getTokenQuotes``), every number a hex quantity::

    {"quotes": [{"paymaster", "token", "postOpGas", "exchangeRate", "exchangeRateNativeToUsd"}]}

``exchangeRate`` is token base units per 1e18 wei, markup included: the very value aNode signs
into ``paymasterData`` until the quote window ends. ``exchangeRateNativeToUsd`` is USD with 6
decimals per 1e18 wei (``0x0`` for a fixed price, which knows no USD value). ``balanceSlot`` and
``allowanceSlot`` (storage slots for state overrides) are left out: aNode does not know them.
"""

from __future__ import annotations

from typing import Any

from anode.api.jsonrpc.context import CallContext
from anode.api.jsonrpc.params import CHAIN_ID, ENTRY_POINT, Param, bind
from anode.errors import Erc20NotConfigured, InvalidRequest
from anode.userop.codec import checksum, parse_address

NAME = "pimlico_getTokenQuotes"
PARAMS = (Param("context", kinds=(dict,), expected='an object like {"tokens": ["0x…"]}'), ENTRY_POINT, CHAIN_ID)
_USD_DECIMALS = 10**6


async def handle(params: Any, ctx: CallContext) -> dict[str, Any]:
    p = bind(NAME, params, PARAMS)
    tokens = p["context"].get("tokens")
    if not isinstance(tokens, list) or not tokens:
        raise InvalidRequest(f"{NAME}: param 0 must carry tokens, a non-empty array of addresses", field="tokens")
    route = ctx.service.routes.resolve(p["entryPoint"], p["chainId"])
    mode = ctx.service.tokens
    if mode is None:
        raise Erc20NotConfigured("no paymaster on this server has ERC-20 mode (erc20: in its configuration)")
    quotes = []
    for index, token in enumerate(tokens):
        try:
            parse_address(token)
        except ValueError as exc:
            raise InvalidRequest(f"{NAME}: tokens[{index}]: {exc}", field="tokens") from None
        payment = await mode.payment(route, {"token": token})
        assert payment is not None
        quote = payment.quote
        native_usd = 0 if quote.native_usd is None else int(quote.native_usd * _USD_DECIMALS)
        quotes.append(
            {
                "paymaster": checksum(route.paymaster.address),
                "token": checksum(quote.token),
                "postOpGas": hex(payment.terms.post_op_gas),
                "exchangeRate": hex(quote.exchange_rate),
                "exchangeRateNativeToUsd": hex(native_usd),
            }
        )
    return {"quotes": quotes}
