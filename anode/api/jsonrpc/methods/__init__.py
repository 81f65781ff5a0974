"""Every JSON-RPC method aNode speaks, one module each, listed on one screen.

Adding a method: a module here named exactly like the wire method, with ``NAME`` and
``handle(params, ctx)``, and one line below.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from anode.api.jsonrpc.context import CallContext
from anode.api.jsonrpc.methods import (
    anode_preparePasskeyOperation,
    anode_processUserOperation,
    anode_sponsorUserOperation,
    eth_chainId,
    eth_estimateUserOperationGas,
    eth_getUserOperationByHash,
    eth_getUserOperationReceipt,
    eth_sendUserOperation,
    eth_supportedEntryPoints,
    pimlico_getTokenQuotes,
    pm_getPaymasterData,
    pm_getPaymasterStubData,
    pm_sponsor_with_passkey,
    pm_sponsorUserOperation,
    pm_supportedEntryPoints,
    pm_validateSponsorshipPolicies,
)

Handler = Callable[[Any, CallContext], Awaitable[Any]]

METHODS: dict[str, Handler] = {
    pm_getPaymasterStubData.NAME: pm_getPaymasterStubData.handle,
    pm_getPaymasterData.NAME: pm_getPaymasterData.handle,
    pm_sponsorUserOperation.NAME: pm_sponsorUserOperation.handle,
    anode_sponsorUserOperation.NAME: anode_sponsorUserOperation.handle,
    pm_supportedEntryPoints.NAME: pm_supportedEntryPoints.handle,
    anode_processUserOperation.NAME: anode_processUserOperation.handle,
    pm_validateSponsorshipPolicies.NAME: pm_validateSponsorshipPolicies.handle,
    pimlico_getTokenQuotes.NAME: pimlico_getTokenQuotes.handle,
    # the passkey flow with the dual-signature KMS (anode/passkey/)
    anode_preparePasskeyOperation.NAME: anode_preparePasskeyOperation.handle,
    pm_sponsor_with_passkey.NAME: pm_sponsor_with_passkey.handle,
    # the relay: the chain's bundler methods, passed through (api/jsonrpc/relay.py)
    eth_sendUserOperation.NAME: eth_sendUserOperation.handle,
    eth_estimateUserOperationGas.NAME: eth_estimateUserOperationGas.handle,
    eth_getUserOperationReceipt.NAME: eth_getUserOperationReceipt.handle,
    eth_getUserOperationByHash.NAME: eth_getUserOperationByHash.handle,
    eth_supportedEntryPoints.NAME: eth_supportedEntryPoints.handle,
    eth_chainId.NAME: eth_chainId.handle,
}
