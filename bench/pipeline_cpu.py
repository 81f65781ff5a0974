"""CPU cost of one ``pm_getPaymasterData`` call with the whole pipeline on, inside one process.

    python bench/pipeline_cpu.py                      # plain vs pipeline (SQLite limits, Redis limits), µs/call
    python bench/pipeline_cpu.py --cprofile pipeline-sqlite   # plus cProfile's top functions
    PYTHONPATH=/tmp/copy python bench/pipeline_cpu.py  # the same against a modified copy of anode/

``bench/pipeline.py`` measures req/s over HTTP with wrk on the same two cores; its figures move
with whatever else the machine does. This script measures what the pipeline costs in CPU: the
app is built as ``anode serve`` builds it (``wiring.build`` + ``create_app``), with the same
configurations as ``bench/pipeline.py`` (SBT, PNT with staking, security filter, a project budget
and a per-wallet limit) on a real chain (``anode sandbox``: anvil and the contracts) with the
check contracts of ``tests/contracts`` deployed. Calls go straight into the ASGI app, 16 at a
time, so uvicorn's HTTP parsing and the socket are left out. The caches are warm before
measuring (every holder sponsored once), as in the steady state ``bench/pipeline.py`` measures.

CPU is ``time.process_time()`` (every thread of this process: the ledger's and the limiter's
writers are included; Redis's own CPU is not).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parent.parent))  # for tests.contracts; PYTHONPATH still picks anode/

from inprocess import call
from pipeline import REDIS_URL, call_data_op, give, holders, pipeline
from run import ENTRY_POINT_V07, SANDBOX_CHAIN_ID, sandbox

from tests.contracts.checks import deploy_check_contracts

#: the modules of ``bench/pipeline.py``'s configuration, for ``--configs only-NAME``
MODULES = ("sbt_validator", "pnt_balance_validator", "security_filter", "policy_engine")


def only(edit: Any, module: str) -> Any:
    """``edit``, then every module but ``module`` (and signing) disabled."""

    def narrowed(tree: dict[str, Any]) -> None:
        edit(tree)
        for entry in tree["pipeline"]["modules"]:
            if entry["name"] not in (module, "paymaster_signer"):
                entry["enabled"] = False
        if module != "policy_engine":
            tree.pop("policies", None)  # policies without the engine stop start-up

    return narrowed


def body(sender: str, nonce: int) -> bytes:
    params = [call_data_op(sender, nonce), ENTRY_POINT_V07, SANDBOX_CHAIN_ID, {}]
    return orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "pm_getPaymasterData", "params": params})


async def drive(app: Any, wallets: list[str], calls: int, concurrency: int, start_nonce: int) -> float:
    """CPU µs per call for ``calls`` calls, ``concurrency`` at a time, senders cycling through ``wallets``."""
    return (await measure(app, wallets, calls, concurrency, start_nonce))[0]


async def measure(app: Any, wallets: list[str], calls: int, concurrency: int, start_nonce: int) -> tuple[float, float]:
    """As ``drive``: CPU µs per call, and calls per second of wall time."""
    nonces = iter(range(start_nonce, start_nonce + calls))

    async def worker(count: int) -> None:
        for _ in range(count):
            nonce = next(nonces)
            answer = await call(app, body(wallets[nonce % len(wallets)], nonce))
            if b'"result"' not in answer:
                raise SystemExit(f"pm_getPaymasterData failed: {answer[:300]!r}")

    share = [calls // concurrency + (1 if i < calls % concurrency else 0) for i in range(concurrency)]
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(n) for n in share))
    return (time.process_time() - cpu) / calls * 1e6, calls / (time.perf_counter() - wall)


def start_app(loop: asyncio.AbstractEventLoop, base: dict[str, Any], database: Path, edit: Any) -> tuple[Any, Any]:
    """The server ``anode serve`` would build from the sandbox's settings with ``edit`` applied, started on ``loop``."""
    from anode.api.app import create_app
    from anode.config import validate_settings
    from anode.wiring import build

    tree = yaml.safe_load(yaml.safe_dump(base))
    tree["database_url"] = f"sqlite:///{database}"
    tree.get("auth", {}).pop("api_keys", None)
    if edit is not None:
        edit(tree)
    anode = build(validate_settings(tree))
    loop.run_until_complete(anode.start())
    return anode, create_app(anode, manage_lifecycle=False)


def settle(apps: dict[str, tuple[Any, Any]]) -> None:
    """What the server's lifespan does once aNode has started: freeze the heap, set the collector's threshold."""
    from anode.api.app import settle_collector

    settle_collector(next(iter(apps.values()))[0].settings.server.gc_threshold)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000, help="calls per measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--holders", type=int, default=64)
    parser.add_argument("--configs", nargs="+", default=["plain", "pipeline-sqlite", "pipeline-redis"])
    parser.add_argument("--cprofile", metavar="CONFIG", help="cProfile this configuration after measuring")
    parser.add_argument("--sort", default="tottime", help="cProfile's order (tottime, cumulative)")
    parser.add_argument("--top", type=int, default=45, help="cProfile's rows")
    args = parser.parse_args()

    with sandbox(keep=False) as chain, tempfile.TemporaryDirectory(prefix="anode-pipeline-cpu-") as tmp:
        assert chain.database is not None
        base = yaml.safe_load((chain.database.parent / "sandbox.yaml").read_text())
        contracts = deploy_check_contracts(base["chains"][0]["rpc_url"])
        wallets = holders(args.holders)
        give(contracts, wallets)
        edits = {
            "plain": None,
            "pipeline-sqlite": pipeline(contracts, "sql", None),
            "pipeline-redis": pipeline(contracts, "redis", REDIS_URL),
            # counters in process memory (one process only): what the limit store itself costs
            "pipeline-memory": pipeline(contracts, "memory", None),
        }
        for module in MODULES:  # one module alone (with SQLite limits), for the cost of each
            edits[f"only-{module}"] = only(pipeline(contracts, "sql", None), module)
        edits["only-policy_engine-memory"] = only(pipeline(contracts, "memory", None), "policy_engine")
        loop = asyncio.new_event_loop()
        apps = {name: start_app(loop, base, Path(tmp) / f"{name}.db", edits[name]) for name in args.configs}
        settle(apps)
        nonce = int(time.time() * 1000) << 20
        for _, app in apps.values():  # every holder's balances read once: the cached steady state
            loop.run_until_complete(drive(app, wallets, len(wallets) * 2, 16, nonce))
            nonce += len(wallets) * 2
        samples: dict[str, list[float]] = {name: [] for name in apps}
        for _ in range(args.repeats):  # interleaved, so outside load hits each alike
            for name, (_, app) in apps.items():
                samples[name].append(loop.run_until_complete(drive(app, wallets, args.calls, 16, nonce)))
                nonce += args.calls
        print("| configuration | CPU µs/call, 16 at a time (median) | min | max |")
        print("|---|---:|---:|---:|")
        for name, values in samples.items():
            print(f"| {name} | {statistics.median(values):.0f} | {min(values):.0f} | {max(values):.0f} |")
        if args.cprofile:
            profiler = cProfile.Profile()
            profiler.enable()
            loop.run_until_complete(drive(apps[args.cprofile][1], wallets, args.calls, 16, nonce))
            profiler.disable()
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats(args.sort).print_stats(args.top)
            print(text.getvalue())
        for anode, _ in apps.values():
            with contextlib.suppress(Exception):
                loop.run_until_complete(anode.aclose())
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
