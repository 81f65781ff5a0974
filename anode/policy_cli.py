"""``anode policy status ID``: a policy's limits, and for amount limits what was spent apart from what is reserved.

Reads the counters where the server keeps them (``policy_engine.config.limiter``: the database or
Redis), so it shows what every server process counts. Hung under ``anode`` by ``cli.py`` in one
line; heavy modules are imported inside the handler.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from anode.errors import AnodeError


async def _status(args: argparse.Namespace) -> dict[str, Any]:
    from anode.chain.cache import make_cache
    from anode.config import config_path, load_settings
    from anode.pipeline.deps import Dependencies
    from anode.pipeline.modules.policy_engine import NAME, Config, build_engine
    from anode.pipeline.registry import module_config
    from anode.store.database import create_engine

    settings = load_settings(config_path(args.config, "anode policy status"))
    raw = module_config(settings.pipeline.modules, NAME)
    if raw is None:
        raise AnodeError(f"pipeline.modules has no enabled {NAME}: no policy is enforced, so none has a status")
    redis = None
    if settings.redis_url is not None:
        from redis.asyncio import Redis

        redis = Redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=2.0)
    engine = create_engine(settings.database_url.get_secret_value())
    deps = Dependencies(settings=settings, engine=engine, cache=make_cache(redis), redis=redis)
    policies = build_engine(Config.model_validate(raw), deps)
    try:
        return await policies.status(args.id, wallet=args.wallet)
    finally:
        await policies.aclose()
        if redis is not None:
            await redis.aclose()
        engine.dispose()


def _show(args: argparse.Namespace) -> None:
    try:
        status = asyncio.run(_status(args))
    except AnodeError as exc:
        print(f"anode policy status: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None
    state = "active" if status["active"] else f"inactive ({status['inactiveReason']})"
    print(f"{status['id']} ({status['name']}, {status['type']}): {state}")
    print(f"{'limit':10} {'window':>8} {'limit value':>26} {'used':>26} {'spent':>26} {'reserved':>26} resets")
    for limit in status["limits"]:
        if "used" not in limit:
            print(f"{limit['type']:10} {'':>8} {limit['limit']!s:>26}")
            continue
        window = str(limit.get("window") or "ever")
        print(
            f"{limit['type']:10} {window:>8} {limit['limit']!s:>26} {limit['used']!s:>26} "
            f"{limit.get('spent', '')!s:>26} {limit.get('reserved', '')!s:>26} {limit.get('resetsAt') or 'never'}"
        )


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``anode policy status``."""
    policy = commands.add_parser("policy", help="sponsorship policies")
    actions = policy.add_subparsers(dest="policy", required=True)
    status = actions.add_parser("status", help="a policy's limits: used, spent (actual) and reserved (pending)")
    status.add_argument("id", help="the policy's id")
    status.add_argument("--wallet", help="the wallet, for a policy that counts each wallet separately")
    status.add_argument("--config")
    status.set_defaults(run=_show)
