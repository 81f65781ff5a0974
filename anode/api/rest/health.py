"""``GET /health``: is the node reachable, on the right chain, and are the paymasters funded?

Anything aNode cannot confirm (a node down or on another chain, a deposit it cannot read, a
signer down) makes the status ``degraded`` and the answer HTTP 503, for load balancers.

The endpoint needs no key, so its node reads (the chain id, each paymaster's deposit) are made
at most once per ``server.health_cache_seconds`` (default 5; 0 reads on every hit), and hits
arriving while a read runs share it: a flood of hits costs the node one round of reads per
interval. A paymaster with a ``low_balance_wei`` shows it beside its deposit, with ``depositStatus``
``ok`` or ``low``; a low deposit makes the status ``degraded`` too. The signer's state and the
security filter's are in memory and always current. With the
security filter on, each chain says whether its node keeps the history contract ages need
(``security.contractAge``: ``available``, ``unavailable: node has no archive state (…)``, or
``not checked yet``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request

from anode.api.errors import json_response
from anode.errors import AnodeError
from anode.pipeline.modules.security import SecurityFilter
from anode.pipeline.routes import Route
from anode.userop.codec import checksum, parse_address

router = APIRouter(tags=["health"])

#: (every chain healthy, the chains' entries)
ChainReport = tuple[bool, list[dict[str, Any]]]


class SharedRead:
    """The result of ``read()`` reused for ``ttl`` seconds; callers arriving meanwhile share one read."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._value: ChainReport | None = None
        self._read_at = 0.0
        self._running: asyncio.Future[ChainReport] | None = None

    async def get(self, read: Callable[[], Awaitable[ChainReport]]) -> ChainReport:
        if self._value is not None and self._clock() - self._read_at < self.ttl:
            return self._value
        running = self._running
        if running is None or running.get_loop() is not asyncio.get_running_loop():
            running = self._running = asyncio.ensure_future(self._read(read))
        return await asyncio.shield(running)  # a caller that goes away does not cancel the others' read

    async def _read(self, read: Callable[[], Awaitable[ChainReport]]) -> ChainReport:
        started = self._clock()
        try:
            value = await read()
        finally:
            self._running = None
        self._value, self._read_at = value, started
        return value


async def _paymaster_health(route: Route, low_balance_wei: int | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "address": checksum(route.paymaster.address),
        "contract": route.paymaster.name,
        "entryPoint": route.entry_point_hex,
        "entryPointVersion": route.version.value,
    }
    try:
        deposit = await route.chain.deposit_of(route.entry_point, route.paymaster.address)
        entry["deposit"] = str(deposit)
    except AnodeError as exc:
        entry["error"] = exc.message
        return entry
    if low_balance_wei is not None:  # below it, the deposit monitor alerts and the server is degraded
        entry["lowBalanceWei"] = str(low_balance_wei)
        entry["depositStatus"] = "low" if deposit < low_balance_wei else "ok"
    return entry


async def _read_chains(
    routes: list[Route], thresholds: dict[tuple[int, bytes], int | None] | None = None
) -> ChainReport:
    healthy = True
    chains: list[dict[str, Any]] = []
    by_chain: dict[int, list[Route]] = {}
    for route in routes:
        by_chain.setdefault(route.chain_id, []).append(route)
    for chain_id, served in by_chain.items():
        status: dict[str, Any] = {"chainId": chain_id}
        try:
            reported = await served[0].chain.chain_id()
            status["nodeReachable"] = True
            status["nodeChainId"] = reported
            if reported != chain_id:
                healthy = False
                status["error"] = f"node reports chain {reported}, configured {chain_id}"
        except AnodeError as exc:
            healthy = False
            status["nodeReachable"] = False
            status["error"] = exc.message
        limits = thresholds or {}
        reads = (_paymaster_health(r, limits.get((r.chain_id, r.entry_point))) for r in served)
        status["paymasters"] = list(await asyncio.gather(*reads))
        # a deposit aNode cannot read is one it cannot vouch for: as degraded as an unreachable node;
        # one below its low_balance_wei is about to run dry
        healthy = healthy and not any(
            "error" in entry or entry.get("depositStatus") == "low" for entry in status["paymasters"]
        )
        chains.append(status)
    return healthy, chains


def _reads_of(request: Request) -> SharedRead:
    reads: SharedRead | None = getattr(request.app.state, "health_reads", None)
    if reads is None:
        ttl = request.app.state.anode.settings.server.health_cache_seconds
        reads = request.app.state.health_reads = SharedRead(ttl)
    return reads


@router.get("/health")
async def health(request: Request) -> Any:
    anode = request.app.state.anode
    thresholds = {
        (chain.chain_id, parse_address(pm.entry_point)): pm.low_balance_wei
        for chain in anode.settings.chains
        for pm in chain.paymasters
    }
    healthy, chains = await _reads_of(request).get(lambda: _read_chains(anode.routes, thresholds))
    security = next((m for m in anode.service.pipeline.checks if isinstance(m, SecurityFilter)), None)
    if security is not None:  # copies: the cached entries are shared by every hit
        history = security.assessor.history
        chains = [{**c, "security": {"contractAge": history.status(c["chainId"])}} for c in chains]
    signing = anode.signer.health()
    healthy = healthy and signing["status"] != "down"
    erc20 = await _erc20_health(request) if anode.service.tokens is not None else None
    healthy = healthy and (erc20 is None or erc20["status"] == "ok")
    body = {
        "status": "ok" if healthy else "degraded",
        "signer": {"address": anode.signer.address, "backend": anode.signer.backend},
        "signing": signing,
        "chains": chains,
    }
    if erc20 is not None:
        body["erc20"] = erc20
    return json_response(body, 200 if healthy else 503)


async def _erc20_health(request: Request) -> dict[str, Any]:
    """ERC-20 mode: every treasury has approved its paymaster, and every price reads (``docs/erc20.md``)."""
    anode = request.app.state.anode
    reads: SharedRead | None = getattr(request.app.state, "treasury_reads", None)
    if reads is None:
        reads = request.app.state.treasury_reads = SharedRead(anode.settings.server.health_cache_seconds)

    async def read() -> ChainReport:
        problems = await anode.service.tokens.treasury_allowances(list(anode.routes))
        return not problems, [{"reason": problem} for problem in problems]

    _, treasury = await reads.get(read)
    reasons = [entry["reason"] for entry in treasury]
    failures = anode.prices.failures() if anode.prices is not None else {}
    reasons += [f"price of {token} not refreshed: {why}" for token, why in failures.items()]
    return {"status": "degraded" if reasons else "ok", "problems": reasons}
