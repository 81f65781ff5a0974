"""The one place that builds concrete objects from settings (the composition root)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

from anode.api.auth import ApiKeys
from anode.chain.bundler import BundlerClient
from anode.chain.client import ChainClient
from anode.config import Settings
from anode.errors import ConfigError
from anode.paymasters.base import GasDefaults
from anode.pipeline.routes import Route, RouteTable, build_family, entry_point_version
from anode.pipeline.selfcheck import verified_family
from anode.pipeline.sponsor import SponsorshipService
from anode.signers.base import Signer
from anode.signers.registry import build_signer
from anode.store.database import create_engine, upgrade
from anode.store.ledger import Ledger, SqlLedger
from anode.userop.codec import parse_address

log = logging.getLogger("anode")


@dataclass
class Anode:
    """Everything a running server holds, built from settings."""

    settings: Settings
    signer: Signer
    routes: RouteTable
    ledger: Ledger
    service: SponsorshipService
    api_keys: ApiKeys
    clients: list[ChainClient | BundlerClient] = field(default_factory=list)

    async def start(self) -> None:
        """Check every configured chain against its node: a mismatch refuses to start."""
        checked: set[int] = set()
        for route in self.routes:
            if route.chain_id in checked:
                continue
            reported = await route.chain.chain_id()
            if reported != route.chain_id:
                raise ConfigError(
                    f"chain {route.chain_id}: the node at {route.chain.display_url} reports chain id {reported}"
                )
            checked.add(route.chain_id)
        for route in list(self.routes):
            family = await verified_family(route)
            if family is not route.paymaster:
                self.routes.replace(replace(route, paymaster=family))
        if self.api_keys.open:
            log.warning(
                "NO API KEYS CONFIGURED: anyone who can reach this server can spend the paymaster deposit "
                "(set auth.api_keys)"
            )
        if self.signer.backend == "local" and self.settings.environment == "production":
            log.warning("a local (in-process, plain-text) key signs in production")
        log.info("aNode signing as %s (%s)", self.signer.address, self.signer.backend)

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()
        await self.ledger.aclose()
        await self.signer.aclose()


def build(settings: Settings, *, migrate: bool = True) -> Anode:
    signer = build_signer(settings.signer)
    engine = create_engine(settings.database_url)
    if migrate:
        upgrade(engine)
    ledger = SqlLedger(engine)
    routes: list[Route] = []
    clients: list[ChainClient | BundlerClient] = []
    for chain in settings.chains:
        node = ChainClient(chain.rpc_url)
        bundler = BundlerClient(chain.bundler_url, timeout=30.0) if chain.bundler_url else None
        clients.append(node)
        if bundler is not None:
            clients.append(bundler)
        for pm in chain.paymasters:
            entry_point = parse_address(pm.entry_point)
            address = parse_address(pm.address)
            version = entry_point_version(entry_point, pm.entry_point_version)
            family = build_family(
                pm.contract, address, version, GasDefaults(pm.verification_gas_limit, pm.post_op_gas_limit)
            )
            routes.append(Route(chain.chain_id, entry_point, version, family, node, bundler))
    if len({(route.chain_id, route.entry_point) for route in routes}) != len(routes):
        raise ConfigError("each (chain, entry_point) pair may have one paymaster")
    table = RouteTable(routes)
    api_keys = ApiKeys(key.get_secret_value() for key in settings.auth.api_keys)
    service = SponsorshipService(table, signer, ledger, settings.sponsorship)
    return Anode(settings, signer, table, ledger, service, api_keys, clients)
