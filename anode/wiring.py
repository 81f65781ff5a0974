"""The one place that builds concrete objects from settings (the composition root)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from anode.api.auth import ApiKeys
from anode.chain.bundler import BundlerClient
from anode.chain.cache import TTLCache
from anode.chain.client import ChainClient
from anode.config import Erc20Settings, Settings, worker_count
from anode.custody.rotation import acceptance_check
from anode.errors import ConfigError
from anode.metrics import Metrics
from anode.passkey.flow import PasskeyFlow
from anode.passkey.kms_client import KmsClient
from anode.paymasters.base import GasDefaults
from anode.pipeline.base import Module
from anode.pipeline.deps import Dependencies
from anode.pipeline.modules.policy_engine import engine_of
from anode.pipeline.registry import SIGNING_STEP, build_modules, check_names
from anode.pipeline.routes import Route, RouteTable, build_family, entry_point_version
from anode.pipeline.runner import Pipeline
from anode.pipeline.selfcheck import verified_family
from anode.pricing import PriceBook
from anode.signers.manager import ManagedSigner, PaymasterTarget
from anode.signers.manager_settings import backend_settings
from anode.signers.registry import IN_MEMORY_BACKENDS, check_production
from anode.sponsorship import SponsorshipService
from anode.sponsorship_erc20 import TokenMode
from anode.store.api_keys import SqlApiKeys
from anode.store.dashboard import DashboardStore, OutcomeCounter
from anode.store.database import create_engine, upgrade
from anode.store.ledger import Ledger, SqlLedger
from anode.store.signer_events import SignerEventLog
from anode.userop.codec import parse_address
from anode.watch.deposits import DepositMonitor, WatchedDeposit
from anode.watch.follower import Follower, WatchedChain

if TYPE_CHECKING:
    import sqlalchemy as sa
    from redis.asyncio import Redis

log = logging.getLogger("anode")


@dataclass
class Anode:
    """Everything a running server holds, built from settings."""

    settings: Settings
    signer: ManagedSigner
    routes: RouteTable
    ledger: Ledger
    service: SponsorshipService
    api_keys: ApiKeys
    clients: list[ChainClient | BundlerClient] = field(default_factory=list)
    deps: Dependencies | None = None
    key_store: SqlApiKeys | None = None
    #: the ``paymaster_signer`` step is enabled: operations that pass are signed
    signing: bool = True
    metrics: Metrics = field(default_factory=Metrics)
    #: the dashboard's reads, and this process's sponsorship answers counted per hour for it
    dashboard: DashboardStore | None = None
    outcomes: OutcomeCounter | None = None
    #: the signer manager's failovers and health changes, written for the dashboard
    signer_events: SignerEventLog | None = None
    #: the EntryPoint follower (``watch.enabled``), run as a background task between start and close
    follower: Follower | None = None
    _follower_stop: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)
    _follower_task: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    #: the deposit monitor (``deposits.enabled``): read once at start, then a background task
    deposits: DepositMonitor | None = None
    _deposits_stop: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)
    _deposits_task: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    #: ERC-20 mode: the price book (refreshed in the background between start and close)
    prices: PriceBook | None = None
    #: the passkey flow with the dual-signature KMS (``kms:``), or ``None``
    passkey: PasskeyFlow | None = None

    #: :meth:`start` has completed (starting again does nothing)
    started: bool = field(default=False, init=False)

    async def start(self) -> None:
        """Check chains and paymasters (:meth:`check`), warn about risky settings, start the signer.

        A failure leaves open what was opened: the caller closes it (:meth:`aclose`). Starting a
        started aNode does nothing: ``anode serve`` starts it before uvicorn does (so a refusal is
        one clear line, not a traceback), and the app's lifespan then finds it started.
        """
        if self.started:
            return
        await self.check()
        if self.api_keys.open:
            log.warning(
                "NO API KEYS CONFIGURED: anyone who can reach this server can spend the paymaster deposit "
                "(set auth.api_keys)"
            )
        if self.signer_events is not None:
            self.signer_events.start()
        await self.signer.start()
        for name, kind, _ in self.signer.backends:
            if kind in IN_MEMORY_BACKENDS and self.settings.environment == "production":
                log.warning("signer %s: a %s key (plain form, in process memory) signs in production", name, kind)
        log.info("aNode signing as %s (%s)", self.signer.address, self.signer.backend)
        if self.prices is not None:
            await self.prices.start()
        if self.service.tokens is not None:
            for problem in await self.service.tokens.treasury_allowances(list(self.routes)):
                log.warning("ERC-20 mode: %s (refunds of a prefund would fail; /health reports it)", problem)
        if self.follower is not None:
            self._follower_task = asyncio.create_task(self.follower.run(self._follower_stop))
        if self.deposits is not None:
            await self.deposits.refresh()  # the guard and /metrics have a value before the first request
            self._deposits_task = asyncio.create_task(self.deposits.run(self._deposits_stop))
        if self.outcomes is not None:
            self.outcomes.start()
        self.started = True

    async def check(self) -> None:
        """Every node on its configured chain, every paymaster's ``getHash()`` agreeing: else ``ConfigError``."""
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

    async def aclose(self) -> None:
        task, self._follower_task = self._follower_task, None
        if task is not None:
            self._follower_stop.set()
            await task
        deposits_task, self._deposits_task = self._deposits_task, None
        if deposits_task is not None:
            self._deposits_stop.set()
            await deposits_task
        if self.deposits is not None:
            await self.deposits.aclose()
        if self.prices is not None:
            await self.prices.aclose()
        if self.passkey is not None:
            await self.passkey.aclose()
        for module in (*self.service.pipeline.checks, *self.service.pipeline.policies):
            close = getattr(module, "aclose", None)
            if close is not None:
                await close()
        for client in self.clients:
            await client.aclose()
        if self.outcomes is not None:
            self.outcomes.close()
        await self.ledger.aclose()
        await self.signer.aclose()
        if self.signer_events is not None:
            self.signer_events.close()
        if self.deps is not None and self.deps.redis is not None:
            await self.deps.redis.aclose()


POLICY_ENGINE = "policy_engine"


def refuse_ineffective(settings: Settings, *, workers: int | None = None) -> None:
    """A ``ConfigError`` (one line) for a setting that would be accepted and then do nothing.

    ``workers``: the processes that will serve (``anode serve --workers``; default ``server.workers``).
    """
    entries = settings.pipeline.modules
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        if entry.name in seen:
            raise ConfigError(f"pipeline.modules[{index}]: {entry.name} is listed twice (list each module once)")
        seen.add(entry.name)
    enabled = {entry.name: entry for entry in entries if entry.enabled}
    engine = enabled.get(POLICY_ENGINE)
    if settings.policies and engine is None:
        raise ConfigError(
            f"policies: are configured, but pipeline.modules has no enabled {POLICY_ENGINE}, so none would be "
            f"enforced: add `- name: {POLICY_ENGINE}` to pipeline.modules (or remove policies:)"
        )
    if settings.redis_url is not None and not set(enabled) - {SIGNING_STEP}:
        raise ConfigError(
            "redis_url is set, but no pipeline module uses Redis (it holds the checks' chain-read cache and "
            "the policy engine's counters): add the modules to pipeline.modules, or remove redis_url"
        )
    if engine is not None:
        limiter = engine.config.get("limiter", "auto")
        count = worker_count(settings.server.workers) if workers is None else workers
        if limiter == "memory" and count > 1:
            raise ConfigError(
                f"{POLICY_ENGINE}.config.limiter is memory, but {count} worker processes would each keep their own "
                "counters (every limit multiplied by the worker count): use limiter: sql or redis, or one worker"
            )
        resolved = "redis" if limiter == "auto" and settings.redis_url is not None else limiter
        if "redis_prefix" in engine.config and resolved in ("auto", "sql", "memory"):
            raise ConfigError(
                f"{POLICY_ENGINE}.config.redis_prefix is set, but the limiter is "
                f"{'sql' if resolved == 'auto' else resolved}, which keeps no Redis keys: remove redis_prefix "
                "(or use limiter: redis with redis_url)"
            )


def build(settings: Settings, *, migrate: bool = True, metrics: Metrics | None = None) -> Anode:
    refuse_ineffective(settings)
    for backend in backend_settings(settings.signer):
        check_production(backend, settings.environment)
    metrics = metrics if metrics is not None else Metrics()
    engine = create_engine(settings.database_url.get_secret_value())
    if migrate:
        upgrade(engine)
    ledger = SqlLedger(engine)
    routes: list[Route] = []
    clients: list[ChainClient | BundlerClient] = []
    erc20: dict[tuple[int, bytes], Erc20Settings] = {}
    nodes: dict[int, ChainClient] = {}
    for chain in settings.chains:
        node = ChainClient(chain.rpc_url.get_secret_value())
        bundler = BundlerClient(chain.bundler_url.get_secret_value(), timeout=30.0) if chain.bundler_url else None
        clients.append(node)
        nodes[chain.chain_id] = node
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
            if pm.erc20 is not None:
                if pm.contract != "singleton":
                    raise ConfigError(
                        f"paymaster {pm.address}: erc20: needs contract: singleton (Pimlico's SingletonPaymaster), "
                        f"not {pm.contract}"
                    )
                erc20[(chain.chain_id, address)] = pm.erc20
    if len({(route.chain_id, route.entry_point) for route in routes}) != len(routes):
        raise ConfigError("each (chain, entry_point) pair may have one paymaster")
    table = RouteTable(routes)
    prices = PriceBook(erc20, nodes) if erc20 else None
    follower = _follower(settings, engine, routes, metrics) if settings.watch.enabled else None
    deposits = _deposits(settings, engine, routes, metrics) if settings.deposits.enabled else None
    targets = [
        PaymasterTarget(
            r.chain_id,
            r.paymaster.address,
            r.paymaster.name,
            acceptance_check(r.chain, r.paymaster.address, r.paymaster.name),
        )
        for r in routes
    ]
    signer = ManagedSigner.from_settings(settings.signer, metrics=metrics, targets=targets)
    signer_events = SignerEventLog(engine)
    signer.report_to(signer_events)
    project_keys = [key.get_secret_value() for key in settings.auth.api_keys]
    admin_keys = [key.get_secret_value() for key in settings.auth.admin_keys]
    key_store = SqlApiKeys(engine)
    use_store = bool(project_keys or admin_keys) or any(k.revoked_at is None for k in key_store.list())
    api_keys = ApiKeys(project_keys, admin_keys, key_store if use_store else None)
    check_names(settings.pipeline.modules)
    deps: Dependencies | None = None
    modules: list[Module] = []
    signing = any(e.name == SIGNING_STEP and e.enabled for e in settings.pipeline.modules)
    if any(e.enabled and e.name != SIGNING_STEP for e in settings.pipeline.modules):
        redis = None
        if settings.redis_url is not None:
            from redis.asyncio import BlockingConnectionPool, Redis

            pool = BlockingConnectionPool.from_url(
                settings.redis_url.get_secret_value(),
                max_connections=64,
                timeout=2.0,
                socket_timeout=1.0,
                socket_connect_timeout=1.0,
            )
            redis = Redis(connection_pool=pool)
        cache = _cache(redis, settings.server.cache_max_entries)
        deps = Dependencies(settings=settings, engine=engine, cache=cache, redis=redis)
        modules, signing = build_modules(settings.pipeline.modules, deps)
        policy = engine_of(modules)
        if follower is not None and policy is not None:  # reconciliation: reservations become actual costs
            follower.limiter = policy.limiter
    service = SponsorshipService(
        table,
        signer,
        ledger,
        settings.sponsorship,
        Pipeline(modules),
        signing=signing,
        metrics=metrics,
        deposits=deposits,
        tokens=TokenMode(prices, erc20, deps.cache if deps is not None else None) if prices is not None else None,
    )
    outcomes = OutcomeCounter(engine)
    metrics.sponsorship_listeners.append(outcomes.add)
    return Anode(
        settings,
        signer,
        table,
        ledger,
        service,
        api_keys,
        clients,
        deps=deps,
        key_store=key_store,
        signing=signing,
        metrics=metrics,
        follower=follower,
        deposits=deposits,
        prices=prices,
        dashboard=DashboardStore(engine),
        outcomes=outcomes,
        signer_events=signer_events,
        passkey=PasskeyFlow(service, KmsClient(settings.kms)) if settings.kms is not None else None,
    )


def _follower(settings: Settings, engine: sa.Engine, routes: list[Route], metrics: Metrics) -> Follower:
    chains = []
    for chain in settings.chains:
        served = [route for route in routes if route.chain_id == chain.chain_id]
        confirmations = settings.watch.confirmations if chain.confirmations is None else chain.confirmations
        chains.append(
            WatchedChain(
                chain.chain_id,
                served[0].chain,
                tuple(route.entry_point for route in served),
                tuple(route.paymaster.address for route in served),
                confirmations,
            )
        )
    redis_url = settings.redis_url.get_secret_value() if settings.redis_url is not None else None
    return Follower(engine, chains, settings.watch, metrics, redis_url=redis_url)


def _deposits(settings: Settings, engine: sa.Engine, routes: list[Route], metrics: Metrics) -> DepositMonitor:
    thresholds = {
        (chain.chain_id, parse_address(pm.entry_point)): pm.low_balance_wei
        for chain in settings.chains
        for pm in chain.paymasters
    }
    watched = [
        WatchedDeposit(r.chain_id, r.chain, r.entry_point, r.paymaster.address, thresholds[(r.chain_id, r.entry_point)])
        for r in routes
    ]
    return DepositMonitor(watched, settings.deposits, settings.alerts, engine, metrics)


def _cache(redis: Redis | None, max_entries: int) -> TTLCache:
    from anode.chain.cache import make_cache

    return make_cache(redis, max_entries=max_entries)
