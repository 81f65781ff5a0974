"""Every JSON-RPC method aNode speaks, one module each, listed on one screen.

Adding a method: a module here named exactly like the wire method, with ``NAME`` and
``handle(params, ctx)``, and one line below.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from anode.api.jsonrpc.context import CallContext
from anode.api.jsonrpc.methods import (
    anode_processUserOperation,
    anode_sponsorUserOperation,
    pm_getPaymasterData,
    pm_getPaymasterStubData,
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
}
