"""``GET /health``: is the node reachable, on the right chain, and are the paymasters funded?

Anything aNode cannot confirm (a node down or on another chain, a deposit it cannot read, a
signer down) makes the status ``degraded`` and the answer HTTP 503, for load balancers.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request

from anode.api.errors import json_response
from anode.errors import AnodeError
from anode.pipeline.routes import Route
from anode.userop.codec import checksum

router = APIRouter(tags=["health"])


async def _paymaster_health(route: Route) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "address": checksum(route.paymaster.address),
        "contract": route.paymaster.name,
        "entryPoint": route.entry_point_hex,
        "entryPointVersion": route.version.value,
    }
    try:
        entry["deposit"] = str(await route.chain.deposit_of(route.entry_point, route.paymaster.address))
    except AnodeError as exc:
        entry["error"] = exc.message
    return entry


@router.get("/health")
async def health(request: Request) -> Any:
    anode = request.app.state.anode
    chains: list[dict[str, Any]] = []
    healthy = True
    by_chain: dict[int, list[Route]] = {}
    for route in anode.routes:
        by_chain.setdefault(route.chain_id, []).append(route)
    for chain_id, routes in by_chain.items():
        status: dict[str, Any] = {"chainId": chain_id}
        try:
            reported = await routes[0].chain.chain_id()
            status["nodeReachable"] = True
            status["nodeChainId"] = reported
            if reported != chain_id:
                healthy = False
                status["error"] = f"node reports chain {reported}, configured {chain_id}"
        except AnodeError as exc:
            healthy = False
            status["nodeReachable"] = False
            status["error"] = exc.message
        status["paymasters"] = list(await asyncio.gather(*(_paymaster_health(r) for r in routes)))
        # a deposit aNode cannot read is one it cannot vouch for: as degraded as an unreachable node
        healthy = healthy and not any("error" in entry for entry in status["paymasters"])
        chains.append(status)
    signing = anode.signer.health()
    healthy = healthy and signing["status"] != "down"
    body = {
        "status": "ok" if healthy else "degraded",
        "signer": {"address": anode.signer.address, "backend": anode.signer.backend},
        "signing": signing,
        "chains": chains,
    }
    return json_response(body, 200 if healthy else 503)
