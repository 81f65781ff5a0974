"""Which paymaster serves a (chain, EntryPoint) pair: resolved once per request, from settings."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from anode.chain.bundler import BundlerClient
from anode.chain.client import ChainClient
from anode.errors import ConfigError, InvalidRequest, UnsupportedChain, UnsupportedEntryPoint
from anode.paymasters.base import GasDefaults, PaymasterFamily
from anode.paymasters.registry import FAMILIES
from anode.userop.codec import checksum, parse_address, parse_quantity
from anode.userop.versions import CANONICAL_ENTRY_POINTS, EntryPointVersion


@dataclass(frozen=True, slots=True)
class Route:
    chain_id: int
    entry_point: bytes
    version: EntryPointVersion
    paymaster: PaymasterFamily
    chain: ChainClient
    bundler: BundlerClient | None

    @property
    def entry_point_hex(self) -> str:
        return checksum(self.entry_point)


class RouteTable:
    def __init__(self, routes: list[Route]) -> None:
        self._routes = {(route.chain_id, route.entry_point): route for route in routes}
        self._chains = {route.chain_id for route in routes}

    def __iter__(self) -> Iterator[Route]:
        return iter(list(self._routes.values()))

    def replace(self, route: Route) -> None:
        """Swap in ``route`` for the same (chain, EntryPoint) pair (start-up self-check)."""
        self._routes[(route.chain_id, route.entry_point)] = route

    @property
    def entry_points(self) -> list[str]:
        return sorted({route.entry_point_hex for route in self._routes.values()})

    def resolve(self, entry_point: Any, chain_id: Any | None) -> Route:
        """The route for ``entryPoint`` on ``chainId``; errors say what the server serves."""
        try:
            address = parse_address(entry_point)
        except ValueError as exc:
            raise InvalidRequest(f"entryPoint: {exc}", field="entryPoint") from None
        if chain_id is None:
            candidates = [route for (_, ep), route in self._routes.items() if ep == address]
            if len(candidates) == 1:
                return candidates[0]
            if not candidates:
                raise self._unsupported_entry_point(address, None)
            raise InvalidRequest(
                "this EntryPoint is served on several chains: pass chainId (context.chainId)",
                field="chainId",
            )
        try:
            number = parse_quantity(chain_id, bits=64)
        except ValueError as exc:
            raise InvalidRequest(f"chainId: {exc}", field="chainId") from None
        if number not in self._chains:
            served = ", ".join(hex(c) for c in sorted(self._chains))
            raise UnsupportedChain(
                f"chainId {hex(number)} is not served here (served: {served})",
                field="chainId",
                data={"supportedChainIds": [hex(c) for c in sorted(self._chains)]},
            )
        route = self._routes.get((number, address))
        if route is None:
            raise self._unsupported_entry_point(address, number)
        return route

    def _unsupported_entry_point(self, address: bytes, chain_id: int | None) -> UnsupportedEntryPoint:
        served = [checksum(ep) for (cid, ep) in self._routes if chain_id is None or cid == chain_id]
        where = f" on chain {hex(chain_id)}" if chain_id is not None else ""
        return UnsupportedEntryPoint(
            f"entryPoint {checksum(address)} is not supported{where} (supported: {', '.join(served)})",
            field="entryPoint",
            data={"supportedEntryPoints": served},
        )


def entry_point_version(entry_point: bytes, declared: str | None) -> EntryPointVersion:
    if declared is not None:
        return EntryPointVersion(declared)
    version = CANONICAL_ENTRY_POINTS.get(entry_point)
    if version is None:
        raise ConfigError(
            f"EntryPoint {checksum(entry_point)} is not at a canonical address: "
            "set entry_point_version (v0.6, v0.7 or v0.8) for its paymaster"
        )
    return version


def build_family(contract: str, address: bytes, version: EntryPointVersion, gas: GasDefaults) -> PaymasterFamily:
    try:
        return FAMILIES[contract](address, version, gas)
    except ValueError as exc:
        raise ConfigError(f"paymaster {checksum(address)}: {exc}") from None
