"""How the CPU cost of ``pm_getPaymasterData`` grows: with clients, with policies, with senders.

    python bench/scaling.py modules     # CPU µs/call of each module at 1, 16 and 64 calls at a time
    python bench/scaling.py policies    # 1, 10, 100 policies (all but two not applying), and 100 applying
    python bench/scaling.py senders     # 1, 1,000 and 100,000 distinct senders (caches, limit keys)
    python bench/scaling.py senders --senders 100000 --cache-max-entries 400000   # and with a cache that holds them
    python bench/scaling.py evaluate    # the policies' decision alone: indexed snapshot against a scan of every policy
    PYTHONPATH=/tmp/copy python bench/scaling.py policies   # the same against a modified copy of anode/

Built on ``bench/pipeline_cpu.py``: each configuration is the app ``anode serve`` builds, started in
this process on an ``anode sandbox`` chain with the check contracts deployed, and called straight
through ASGI (no HTTP, no socket). CPU is ``time.process_time()`` of this process (aNode's threads
included; anvil's, Redis's and SQLite's own files are not). calls/s is wall time in this process:
it moves with the machine's other load, CPU µs/call much less. Configurations are measured
round-robin, ``--repeats`` times each, so outside load hits each alike; the tables quote the median
and the minimum.

- ``modules``: ``plain`` (no module), each ``only-<module>`` (that module alone, with the settings of
  ``bench/pipeline.py``; its cost is the difference to ``plain``), and the whole pipeline, each at
  1, 16 and 64 calls at a time.
- ``policies``: the policy engine alone (SQLite counters) with 1 policy (the project budget), 10
  and 100 policies: the two of ``bench/pipeline.py`` apply, every other one is for another wallet,
  another contract or another chain, a third each, so it does not apply; and 100 policies that
  all apply (contract policies for the called contract, each with a condition and its own
  request counter: every call then reserves 100 counters).
- ``evaluate``: ``anode.policy.evaluate.evaluate`` alone (no chain, no app) on the ``policies``
  sets, given as the repository hands them over (``PolicySet``: indexed by chain, type and
  target) and as a plain list (every policy checked, as before the index), in the same process.
- ``senders``: the whole pipeline, limits and caches in the process and SQLite (``pipeline-sqlite``)
  or in Redis (``pipeline-redis``), with senders cycling through 1, 1,000 or 100,000 wallets. Each
  wallet really holds an SBT and PNT on the chain, so every check passes for real; minting 100,000
  tokens through transactions would take hours on anvil, so the balances are written straight into
  the contracts' storage (``anvil_setStorageAt``, the ``_balances``/``balanceOf`` mapping slots,
  checked with ``balanceOf`` afterwards). Before measuring, every wallet is sponsored once, so each
  has its cache entries and its per-wallet limit counter: the measurement is the steady state of
  that many senders in rotation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from eth_hash.auto import keccak

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parent.parent))  # for tests.contracts; PYTHONPATH still picks anode/

from pipeline import PNT, REDIS_URL, call_data_op, give, holders, pipeline
from pipeline_cpu import MODULES, measure, only, settle, start_app
from run import SANDBOX_CHAIN_ID, sandbox

from tests.contracts.checks import CheckContracts, deploy_check_contracts

#: the contract the benchmark's operation calls (``pipeline.call_data_op``: ``execute(0xabab…, 1, "")``)
CALLED = "0x" + "ab" * 20
#: storage slots of the balance mappings (tests/contracts: SoulboundToken ``_balances``, PointsToken ``balanceOf``)
SBT_BALANCES_SLOT = 5
PNT_BALANCES_SLOT = 1

Edit = Callable[[dict[str, Any]], None] | None


def address(tag: int, index: int) -> str:
    from eth_utils.address import to_checksum_address

    return to_checksum_address(f"0x{tag << 152 | index:040x}")


def other_policy(index: int) -> dict[str, Any]:
    """A policy that does not apply to the benchmark's operations: another wallet, contract or chain."""
    limits = [{"type": "request", "limit": 10**9, "window": 3600}]
    common = {"id": f"other-{index}", "name": f"other {index}", "rate_limits": limits}
    kind = index % 3
    if kind == 0:
        return {**common, "type": "wallet", "target": address(0xC0, index)}
    if kind == 1:
        return {**common, "type": "contract", "target": address(0xD0, index)}
    return {**common, "type": "project", "chain_ids": [int(SANDBOX_CHAIN_ID, 0) + 1 + index]}


def applying_policy(index: int) -> dict[str, Any]:
    """A policy that applies to the benchmark's operations: the called contract, a condition, a counter."""
    return {
        "id": f"apply-{index}",
        "name": f"apply {index}",
        "type": "contract",
        "target": CALLED,
        "conditions": [{"field": "value", "operator": "lte", "value": "1 ether"}],
        "rate_limits": [{"type": "request", "limit": 10**9, "window": 3600}],
    }


def with_policies(edit: Any, documents: list[dict[str, Any]]) -> Edit:
    """``edit``, with ``documents`` as the policies."""

    def edited(tree: dict[str, Any]) -> None:
        edit(tree)
        tree["policies"] = documents

    return edited


def hold(contracts: CheckContracts, wallets: list[str], batch: int = 1000) -> None:
    """Give every wallet an identity SBT and 1,000 PNT by writing the balance mappings' storage."""

    def slot(wallet: str, mapping: int) -> str:
        return "0x" + keccak(bytes.fromhex(wallet[2:].rjust(64, "0")) + mapping.to_bytes(32, "big")).hex()

    writes = []
    for wallet in wallets:
        writes.append((contracts.sbt["identity"], slot(wallet, SBT_BALANCES_SLOT), 1))
        writes.append((contracts.pnt, slot(wallet, PNT_BALANCES_SLOT), 1000 * PNT))
    with httpx.Client(timeout=120) as client:
        for start in range(0, len(writes), batch):
            calls = [
                {"jsonrpc": "2.0", "id": i, "method": "anvil_setStorageAt", "params": [to, key, f"0x{value:064x}"]}
                for i, (to, key, value) in enumerate(writes[start : start + batch])
            ]
            answers = client.post(contracts.rpc_url, json=calls).json()
            failed = [a for a in answers if "error" in a]
            if failed:
                raise SystemExit(f"anvil_setStorageAt failed: {failed[0]}")
        for wallet in (wallets[0], wallets[-1]):  # the slots are the contracts' real mappings
            for token, selector in ((contracts.sbt["identity"], "70a08231"), (contracts.pnt, "70a08231")):
                data = "0x" + selector + wallet[2:].lower().rjust(64, "0")
                answer = client.post(
                    contracts.rpc_url,
                    json={"jsonrpc": "2.0", "id": 1, "method": "eth_call", "params": [{"to": token, "data": data}]},
                ).json()
                if int(answer["result"], 16) == 0:
                    raise SystemExit(f"storage write did not give {wallet} a balance of {token}: wrong slot")


def run_round_robin(
    loop: asyncio.AbstractEventLoop,
    apps: dict[str, tuple[Any, Any]],
    wallets: dict[str, list[str]],
    concurrencies: list[int],
    calls: int,
    repeats: int,
    nonce: int,
) -> dict[tuple[str, int], list[tuple[float, float]]]:
    """(CPU µs/call, calls/s) per (configuration, concurrency), ``repeats`` rounds over all of them."""
    samples: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for round_index in range(repeats):
        for concurrency in concurrencies:
            for name, (_, app) in apps.items():
                result = loop.run_until_complete(measure(app, wallets[name], calls, concurrency, nonce))
                nonce += calls
                samples.setdefault((name, concurrency), []).append(result)
                print(f"  round {round_index + 1} {name:>28} x{concurrency:<3} {result[0]:7.0f} µs {result[1]:7.0f}/s",
                      file=sys.stderr, flush=True)  # fmt: skip
    return samples


def cpu(values: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(v[0] for v in values), min(v[0] for v in values)


def rate(values: list[tuple[float, float]]) -> float:
    return statistics.median(v[1] for v in values)


def modules_table(samples: dict[tuple[str, int], list[tuple[float, float]]], concurrencies: list[int]) -> str:
    head = " | ".join(f"{c} at a time: µs (min) | module's share" for c in concurrencies)
    lines = [f"| configuration | {head} |", "|---|" + "---:|---:|" * len(concurrencies)]
    names = dict.fromkeys(name for name, _ in samples)
    for name in names:
        cells = []
        for concurrency in concurrencies:
            median, low = cpu(samples[(name, concurrency)])
            plain = cpu(samples[("plain", concurrency)])[0]
            share = "" if name == "plain" else f"{median - plain:+.0f}"
            cells.append(f"{median:.0f} ({low:.0f}) | {share}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def flat_table(samples: dict[tuple[str, int], list[tuple[float, float]]], label: str) -> str:
    lines = [f"| {label} | CPU µs/call (median) | min | in-process calls/s (median) |", "|---|---:|---:|---:|"]
    for (name, _), values in samples.items():
        median, low = cpu(values)
        lines.append(f"| {name} | {median:.0f} | {low:.0f} | {rate(values):,.0f} |")
    return "\n".join(lines)


def policy_sets() -> dict[str, list[dict[str, Any]]]:
    """The ``policies`` part's policy documents: bench/pipeline.py's two, then others."""
    tree: dict[str, Any] = {}
    nowhere = "0x" + "00" * 20  # the modules' contracts: not used here
    pipeline(CheckContracts("", "", {"identity": nowhere}, nowhere, nowhere), "sql", None)(tree)
    mine = tree["policies"]
    sets = {"1 (applies)": mine[:1]}
    for count in (10, 100):
        sets[f"{count} (2 apply)"] = mine + [other_policy(index) for index in range(count - 2)]
    sets["100 (all apply)"] = mine + [applying_policy(index) for index in range(98)]
    return sets


def evaluate_only(repeats: int) -> str:
    """µs per ``evaluate`` call, indexed and scanning, for each policy set (best of ``repeats``)."""
    import timeit

    from anode.pipeline.modules.policy_engine import facts_of
    from anode.policy.evaluate import PolicySet, evaluate
    from anode.policy.models import Policy
    from anode.userop.models import parse_user_op

    op = parse_user_op(call_data_op(holders(1)[0], 1), "v0.7")
    facts = facts_of(op, int(SANDBOX_CHAIN_ID, 0), op.max_gas_cost())
    lines = ["| policies | evaluate(), indexed: µs | scanning every policy: µs |", "|---|---:|---:|"]
    for name, documents in policy_sets().items():
        policies = [Policy.model_validate(document) for document in documents]
        indexed, scanned = PolicySet(policies), list(policies)
        if evaluate(indexed, facts, time.time()) != evaluate(scanned, facts, time.time()):
            raise SystemExit(f"{name}: the index decides differently")
        cells = []
        for subject in (indexed, scanned):
            timer = timeit.Timer(lambda subject=subject: evaluate(subject, facts, time.time()))  # type: ignore[misc]
            cells.append(f"{min(timer.repeat(repeats, 2000)) / 2000 * 1e6:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def with_cache(edit: Edit, entries: int, ttl: float | None) -> Edit:
    """``edit``, then ``server.cache_max_entries: entries`` and, with ``ttl``, the SBT and PNT checks' ``cache_ttl``."""

    def bigger(tree: dict[str, Any]) -> None:
        if edit is not None:
            edit(tree)
        tree.setdefault("server", {})["cache_max_entries"] = entries
        for entry in tree["pipeline"]["modules"]:
            if ttl is not None and entry["name"] in ("sbt_validator", "pnt_balance_validator"):
                entry["config"]["cache_ttl"] = ttl

    return bigger


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=["modules", "policies", "senders", "evaluate"])
    parser.add_argument("--calls", type=int, default=2000, help="calls per measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64], help="modules: calls at a time")
    parser.add_argument("--senders", type=int, nargs="+", default=[1, 1000, 100_000])
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument(
        "--redis-senders", type=int, default=10**9, help="senders: pipeline-redis only up to this many senders"
    )
    parser.add_argument(
        "--cache-max-entries", type=int, help="senders: also each configuration with this server.cache_max_entries"
    )
    parser.add_argument("--checks-cache-ttl", type=float, help="with --cache-max-entries: the SBT and PNT cache_ttl")
    args = parser.parse_args()
    if args.part == "evaluate":
        print(evaluate_only(args.repeats))
        return 0

    with sandbox(keep=False) as chain, tempfile.TemporaryDirectory(prefix="anode-scaling-") as tmp:
        assert chain.database is not None
        base = yaml.safe_load((chain.database.parent / "sandbox.yaml").read_text())
        contracts = deploy_check_contracts(base["chains"][0]["rpc_url"])
        sqlite = pipeline(contracts, "sql", None)
        edits: dict[str, Edit] = {}
        wallets: dict[str, list[str]] = {}
        concurrencies = [16]
        if args.part == "modules":
            everyone = holders(64)
            give(contracts, everyone)
            edits["plain"] = None
            for module in MODULES:
                edits[f"only-{module}"] = only(sqlite, module)
            edits["pipeline-sqlite"] = sqlite
            wallets = dict.fromkeys(edits, everyone)
            concurrencies = args.clients
        elif args.part == "policies":
            everyone = holders(64)
            engine = only(sqlite, "policy_engine")
            for name, documents in policy_sets().items():
                edits[name] = with_policies(engine, documents)
            wallets = dict.fromkeys(edits, everyone)
        else:
            everyone = holders(max(args.senders))
            started = time.monotonic()
            hold(contracts, everyone)
            took = time.monotonic() - started
            print(f"{len(everyone):,} wallets given an SBT and PNT in {took:.0f} s", file=sys.stderr)
            for count in args.senders:
                edits[f"pipeline-sqlite, {count:,} senders"] = sqlite
                wallets[f"pipeline-sqlite, {count:,} senders"] = everyone[:count]
                if count <= args.redis_senders:
                    edits[f"pipeline-redis, {count:,} senders"] = pipeline(contracts, "redis", args.redis_url)
                    wallets[f"pipeline-redis, {count:,} senders"] = everyone[:count]
            if args.cache_max_entries:
                for name in list(edits):
                    bigger = f"{name}, cache_max_entries {args.cache_max_entries:,}"
                    if args.checks_cache_ttl is not None:
                        bigger += f", cache_ttl {args.checks_cache_ttl:g} s"
                    ttl = args.checks_cache_ttl
                    edits[bigger], wallets[bigger] = with_cache(edits[name], args.cache_max_entries, ttl), wallets[name]
        loop = asyncio.new_event_loop()
        apps = {name: start_app(loop, base, Path(tmp) / f"{index}.db", edit) for index, (name, edit) in
                enumerate(edits.items())}  # fmt: skip
        settle(apps)
        nonce = int(time.time() * 1000) << 20
        for name, (_, app) in apps.items():  # every sender's checks and counters once: the steady state
            started = time.monotonic()
            warm = max(len(wallets[name]), 128)
            loop.run_until_complete(measure(app, wallets[name], warm, 16, nonce))
            nonce += warm
            print(f"{name}: warmed with {warm:,} calls in {time.monotonic() - started:.0f} s", file=sys.stderr)
        samples = run_round_robin(loop, apps, wallets, concurrencies, args.calls, args.repeats, nonce)
        if args.part == "modules":
            print(modules_table(samples, concurrencies))
        else:
            print(flat_table(samples, "policies" if args.part == "policies" else "configuration, senders in rotation"))
        for anode, _ in apps.values():
            with contextlib.suppress(Exception):
                loop.run_until_complete(anode.aclose())
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
