"""The relay: the chain's bundler methods through aNode's own JSON-RPC endpoint.

A client points its bundler transport and its paymaster transport at the same URL. Each
``eth_*`` method (one module each in ``methods/``) passes its params unchanged to the bundler of
one chain and answers the bundler's result, or its error with the bundler's code, message and
data (``BundlerRejected``). The chain is the URL's ``?chainId=`` (decimal or ``0x`` hex), or the
server's only chain when it serves one; with several and none named, the call is refused with
``ANODE_RELAY_CHAIN_REQUIRED``. The same API keys apply as for the paymaster methods.

``eth_sendUserOperation``: when the bundler accepts an operation whose paymaster data aNode
signed, its ledger rows (same chain, the userOpHash the bundler returned) get ``sent_at``.
"""

from __future__ import annotations

import logging
from typing import Any

from anode.api.jsonrpc.context import CallContext
from anode.chain.bundler import BundlerClient
from anode.errors import AnodeError, BundlerUnavailable, InvalidRequest, RelayChainRequired, UnsupportedChain
from anode.userop.codec import parse_quantity

log = logging.getLogger("anode.api")


def chain_of(ctx: CallContext) -> int:
    """The chain a relayed call goes to: ``?chainId=``, or the only chain served."""
    chains = sorted({route.chain_id for route in ctx.service.routes})
    if ctx.chain_id is None:
        if len(chains) == 1:
            return chains[0]
        raise RelayChainRequired(
            "this server serves several chains: name the bundler's chain in the URL, /api/v1/rpc?chainId=<id>",
            field="chainId",
            data={"supportedChainIds": [hex(c) for c in chains]},
        )
    try:
        number = int(ctx.chain_id, 10) if ctx.chain_id.isdigit() else parse_quantity(ctx.chain_id, bits=64)
    except ValueError as exc:
        raise InvalidRequest(f"chainId in the URL: {exc}", field="chainId") from None
    if number not in chains:
        served = ", ".join(str(c) for c in chains)
        raise UnsupportedChain(
            f"chainId {number} in the URL is not served here (served: {served})",
            field="chainId",
            data={"supportedChainIds": [hex(c) for c in chains]},
        )
    return number


def bundler_of(ctx: CallContext, chain_id: int) -> BundlerClient:
    for route in ctx.service.routes:
        if route.chain_id == chain_id and route.bundler is not None:
            return route.bundler
    raise BundlerUnavailable(
        f"no bundler_url is configured for chain {chain_id}: aNode has no bundler to relay this call to"
    )


def _params(method: str, params: Any) -> list[Any]:
    if params is None:
        return []
    if not isinstance(params, list):
        raise InvalidRequest(f"{method}: params must be an array (positional), as the bundler takes them")
    return params


async def relay(method: str, params: Any, ctx: CallContext) -> Any:
    """``method`` on the chain's bundler, params unchanged."""
    chain_id = chain_of(ctx)
    return await bundler_of(ctx, chain_id).relay(method, _params(method, params))


async def send(method: str, params: Any, ctx: CallContext) -> Any:
    """``eth_sendUserOperation``: relayed, and linked to aNode's ledger row when aNode sponsored it."""
    chain_id = chain_of(ctx)
    result = await bundler_of(ctx, chain_id).relay(method, _params(method, params))
    if isinstance(result, str):
        try:
            linked = await ctx.service.ledger.mark_sent(chain_id, result)
        except AnodeError as exc:  # the bundler has the operation: answer it, the link is bookkeeping
            log.warning("relay: operation %s was sent, but its ledger row could not be marked (%s)", result, exc)
        else:
            if linked:
                log.info("relay: sponsored operation %s sent to the bundler of chain %s", result, chain_id)
    return result
