"""``pm_getPaymasterData`` with the whole pipeline on: SBT, PNT (cached), security filter, two policies.

    python bench/pipeline.py                                  # 1, 16, 64 clients x 3 runs x 10 s
    python bench/pipeline.py --clients 16 --runs 3 --duration 5 --out bench/results/pipeline.md

One ``anode sandbox`` provides anvil and the paymasters; this script deploys the check contracts
of ``tests/contracts`` on it (an identity SBT, the PNT token and its staking contract), gives
``--holders`` wallets an identity SBT and 1,000 PNT each, and serves three configurations of
aNode on that chain, each with its own SQLite ledger, one worker each:

- ``plain``: no checks (the data path of issue 2), measured in the same run as a baseline;
- ``pipeline-sqlite``: every check, the policy limits in the server's SQLite database (the
  embedded default: no other service);
- ``pipeline-redis``: every check, the limits and the check caches in Redis (``redis_url``), as a
  production deployment with several server processes runs.

The wrk script cycles the senders through the holders (so every check passes for real: the SBT
and PNT balances are read from the chain, then cached for their ``cache_ttl``, 300 s here). Before
measuring, each server sponsors one operation per holder, so the runs measure the cached steady
state: with traffic, the caches reload each entry ahead of its expiry in the background
(``anode/chain/cache.py``), so a server under steady load does not meet a cold entry. Every nonce is
distinct, so each call is a distinct operation with its own ledger row. The two policies are a
project budget (an amount and a request limit per day) and a per-wallet request limit per hour,
set high enough never to refuse: every call reserves its three counters. Runs go round-robin over
the configurations, so outside load hits each alike; the table quotes medians.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ab import variant_server
from run import (
    ENTRY_POINT_V07,
    SANDBOX_CHAIN_ID,
    ledger_rows,
    median,
    progress,
    rpc,
    sandbox,
    side_by_side,
    write_report,
    wrk_run,
)

from tests.contracts.checks import CheckContracts, deploy_check_contracts

PNT = 10**18
#: issue 3's target at 16 clients: (min req/s, max p99 ms)
TARGET = (1500.0, 30.0)
REDIS_URL = "redis://127.0.0.1:6379/0"


def holders(count: int) -> list[str]:
    from eth_utils.address import to_checksum_address

    return [to_checksum_address(f"0x{0xB1 << 152 | index:040x}") for index in range(1, count + 1)]


def give(contracts: CheckContracts, wallets: list[str]) -> None:
    for wallet in wallets:
        contracts.mint_sbt("identity", wallet)
        contracts.mint_pnt(wallet, 1000 * PNT)


def pipeline(contracts: CheckContracts, limiter: str, redis_url: str | None) -> Any:
    def edit(tree: dict[str, Any]) -> None:
        engine: dict[str, Any] = {"limiter": limiter}
        if limiter == "redis":  # a fresh key space per run
            engine["redis_prefix"] = f"bench:{uuid.uuid4().hex}:"
        tree["pipeline"] = {
            "modules": [
                {
                    "name": "sbt_validator",
                    "config": {
                        "contracts": [{"address": contracts.sbt["identity"], "type": "identity"}],
                        "required_types": ["identity"],
                        "cache_ttl": 300,
                    },
                },
                {
                    "name": "pnt_balance_validator",
                    "config": {
                        "contract_address": contracts.pnt,
                        "min_balance": str(100 * PNT),
                        "include_staked": True,
                        "staking_contract": contracts.staking,
                        "cache_ttl": 300,
                    },
                },
                {"name": "security_filter", "config": {"block_threshold": 80, "confirm_threshold": 40}},
                {"name": "policy_engine", "config": engine},
                {"name": "paymaster_signer"},
            ]
        }
        tree["policies"] = [
            {
                "id": "project-budget",
                "name": "project budget",
                "type": "project",
                "rate_limits": [
                    {"type": "amount", "limit": str(10**30), "window": 86400},
                    {"type": "request", "limit": 10**9, "window": 86400},
                ],
            },
            {
                "id": "per-wallet",
                "name": "each wallet",
                "type": "wallet",
                "target": "*",
                "rate_limits": [{"type": "request", "limit": 10**9, "window": 3600}],
            },
        ]
        if redis_url is not None:
            tree["redis_url"] = redis_url

    return edit


def call_data_op(sender: str, nonce: int) -> dict[str, str]:
    """The operation the wrk script sends (``jsonrpc.lua``), for the check before measuring."""
    call = "0xb61d27f6" + "0" * 24 + "ab" * 20 + "0" * 62 + "01" + "0" * 62 + "60" + "0" * 64
    return {
        "sender": sender,
        "nonce": hex(nonce),
        "callData": call,
        "callGasLimit": "0x186a0",
        "verificationGasLimit": "0x186a0",
        "preVerificationGas": "0xc350",
        "maxFeePerGas": "0x3b9aca00",
        "maxPriorityFeePerGas": "0x3b9aca00",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--holders", type=int, default=256, help="wallets holding an SBT and PNT (default 256)")
    parser.add_argument("--configs", nargs="+", default=["plain", "pipeline-sqlite", "pipeline-redis"])
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    parser.add_argument("--profile", metavar="CONFIG", help="py-spy one configuration at 16 clients instead")
    parser.add_argument(
        "--variant",
        action="append",
        metavar="NAME=PREFIX",
        help="also serve every configuration with this code (as bench/ab.py: PYTHONPATH=/tmp/copy), interleaved",
    )
    args = parser.parse_args()

    with sandbox(keep=False) as chain, contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        assert chain.database is not None
        workdir = chain.database.parent
        rpc_url = yaml.safe_load((workdir / "sandbox.yaml").read_text())["chains"][0]["rpc_url"]
        started = time.monotonic()
        contracts = deploy_check_contracts(rpc_url)
        wallets = holders(args.holders)
        give(contracts, wallets)
        print(f"check contracts deployed, {len(wallets)} holders funded in {time.monotonic() - started:.1f} s")
        senders = Path(tmp) / "senders.txt"
        senders.write_text("\n".join(wallets) + "\n")

        edits = {
            "plain": None,
            "pipeline-sqlite": pipeline(contracts, "sql", None),
            "pipeline-redis": pipeline(contracts, "redis", args.redis_url),
        }
        variants = [("", "")] + [tuple(spec.split("=", 1)) for spec in args.variant or []]
        servers = {
            f"{variant}:{config}" if variant else config: stack.enter_context(
                variant_server(f"{variant}-{config}" if variant else config, prefix, workdir, edits[config])
            )
            for variant, prefix in variants
            for config in args.configs
        }
        for name, server in servers.items():
            # every check passes for real before anything is measured, and every holder's SBT and
            # PNT balances are read once: the runs measure the cached steady state
            for nonce, wallet in enumerate(wallets, start=1):
                params = [call_data_op(wallet, nonce), ENTRY_POINT_V07, SANDBOX_CHAIN_ID, {}]
                reply = rpc(server.rpc_url, "pm_getPaymasterData", params)
                if "result" not in reply:
                    raise SystemExit(f"{name}: pm_getPaymasterData was refused: {reply}")
        salt = int(time.time()) & 0x7FFFFFF
        if args.profile:
            import profile_server

            server = servers[args.profile]
            assert server.pid is not None
            wrk_run(server, "pm_getPaymasterData", 16, 3, 1, salt, senders)
            spy = argparse.Namespace(
                clients=16, seconds=10, rate=200, native=False, svg=None, raw=None, method="pm_getPaymasterData",
                senders=senders,
            )  # fmt: skip
            print(profile_server.summarise(profile_server.record(server.pid, server.rpc_url, spy), top=40))
            return 0
        for server in servers.values():  # warm-up: every holder's SBT and PNT read once, then cached
            salt += 1
            wrk_run(server, "pm_getPaymasterData", 16, 3, 1, salt, senders)
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
        for run_index in range(args.runs):
            for clients in args.clients:
                for name, server in servers.items():
                    salt += 1
                    result = wrk_run(server, "pm_getPaymasterData", clients, args.duration, 1, salt, senders)
                    results[name].append(result)
                    print(f"  run {run_index + 1} {name:>16} {progress(result)}", flush=True)
        for name, server in servers.items():
            assert server.database is not None
            rows, distinct = ledger_rows(server.database)
            if rows != distinct:
                raise SystemExit(f"{name}: {rows} ledger rows, {distinct} distinct userOpHashes")

    verdicts = []
    for name in servers:
        runs = [r for r in results[name] if r["clients"] == 16]
        if not name.endswith("plain") and runs:
            rps, p99 = median(runs, "rps") or 0.0, median(runs, "p99_ms") or 0.0
            met = rps >= TARGET[0] and p99 < TARGET[1]
            verdicts.append(
                f"- {name}: {rps:,.0f} req/s, p99 {p99:.1f} ms at 16 clients: "
                f"{'meets' if met else 'misses'} ≥ {TARGET[0]:,.0f} req/s, p99 < {TARGET[1]:.0f} ms"
            )
    text = side_by_side("configuration", results, args.clients) + "\n\n" + "\n".join(verdicts)
    write_report(args.out, text, args.runs, args.duration)
    return 0


if __name__ == "__main__":
    sys.exit(main())
