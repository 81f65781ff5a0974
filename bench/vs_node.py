"""aNode against a minimal Node.js ERC-7677 signer, side by side in one run: the ratio of the two.

    python bench/vs_node.py                                  # ledger alone, 16 clients, 5 runs x 10 s
    python bench/vs_node.py --anode-config-edit ledger pipeline-sqlite pipeline-redis \\
        --runs 3 --duration 10 --note "machine shared with ..."
    python bench/vs_node.py --anode-config-edit pipeline-sqlite --workers-auto   # + the same with --workers auto

One ``anode sandbox`` provides anvil and the VerifyingPaymaster v0.7. On that chain run, one
process each: the baseline (``bench/baseline/server.mjs``: viem + ``node:http``, no ledger, no
policy, signing with the sandbox's paymaster key) and ``anode serve`` in each configuration of
``--anode-config-edit``, each with its own SQLite ledger:

- ``ledger``: the sandbox's config (sign and record, no checks);
- ``pipeline-sqlite`` / ``pipeline-redis``: SBT, PNT (cached), the security filter and two
  policies with limits, as ``bench/pipeline.py`` builds them (limits in SQLite or Redis).

With a pipeline configuration the check contracts are deployed, ``--holders`` wallets funded, and
the load cycles its senders through them, for every server alike. Before measuring, every server's
``pm_getPaymasterData`` answer is put to the contract: its ``getHash`` (``eth_call``) must be what
the signature recovers to ``verifyingSigner()`` from, and ``validatePaymasterUserOp`` called from
the EntryPoint must return no signature failure and the answered window. Then wrk runs round-robin,
baseline and each configuration in turn (A B A B), with ``bench/jsonrpc.lua``; the table quotes
medians, and each configuration's ratio to the baseline (req/s, p50, p99, server CPU per request),
with the ratio of every run pair so that one noisy window shows. ``--workers-auto`` adds, for each
configuration, ``anode serve --workers auto`` (one process per core, the production setting) as
one more server in the round-robin: its figure stands beside the one-process figure, outside the
one-process targets.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ab import variant_server
from pipeline import call_data_op, deploy_check_contracts, give, holders, pipeline
from run import (
    ENTRY_POINT_V07,
    SANDBOX_CHAIN_ID,
    Server,
    free_port,
    ledger_rows,
    median,
    progress,
    rpc,
    sandbox,
    wait_until_serving,
    wrk_run,
)

BASELINE = Path(__file__).resolve().parent / "baseline" / "server.mjs"
CHAIN_ID = int(SANDBOX_CHAIN_ID, 16)
CONFIGS = ("ledger", "pipeline-sqlite", "pipeline-redis")
#: the targets at 16 clients: (min req/s ratio to the baseline, max p99 above the baseline's, ms)
TARGETS = {"ledger": (2.0, None), "pipeline-sqlite": (1.3, 5.0), "pipeline-redis": (1.2, None)}


@contextlib.contextmanager
def baseline_server(workdir: Path, paymaster: str, private_key: str) -> Iterator[Server]:
    """``node bench/baseline/server.mjs`` signing for ``paymaster``; the key goes in its environment."""
    port = free_port()
    command = ["node", str(BASELINE), "--port", str(port), "--paymaster", paymaster]
    command += ["--entry-point", ENTRY_POINT_V07, "--chain-id", str(CHAIN_ID)]
    log_path = workdir / "baseline.log"
    with log_path.open("wb") as log:
        env = {**os.environ, "BASELINE_PRIVATE_KEY": private_key}
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}/"
            wait_until_serving(process, url, log_path, "baseline", 30)
            print(f"baseline: pid {process.pid}, {shlex.join(command)}")
            yield Server(url, None, process.pid)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=10)


def accepted(name: str, server: Server, node_url: str, paymaster: str, sender: str, nonce: int) -> str:
    """Put one ``pm_getPaymasterData`` answer to the contract; exit unless it accepts it."""
    from eth_abi.abi import decode
    from eth_keys import keys

    from anode.devchain.rpc import DevRpc
    from anode.paymasters.base import GasDefaults, ValidityWindow, abi_call, eip191_digest, user_op_abi
    from anode.paymasters.verifying import VerifyingPaymaster
    from anode.userop.hashing import user_op_hash
    from anode.userop.models import parse_user_op
    from anode.userop.versions import EntryPointVersion

    op = call_data_op(sender, nonce)
    reply = rpc(server.rpc_url, "pm_getPaymasterData", [op, ENTRY_POINT_V07, SANDBOX_CHAIN_ID, {}])
    if "result" not in reply:
        raise SystemExit(f"{name}: pm_getPaymasterData was refused: {reply}")
    signed = parse_user_op({**op, **reply["result"]}, EntryPointVersion.V07)
    data = signed.paymaster_data
    window = ValidityWindow(int.from_bytes(data[:32], "big"), int.from_bytes(data[32:64], "big"))
    family = VerifyingPaymaster(bytes.fromhex(paymaster[2:]), EntryPointVersion.V07, GasDefaults(100_000, 0))
    with DevRpc(node_url) as node:
        (verifying_signer,) = node.call_function(paymaster, "verifyingSigner()", return_types=["address"])
        digest = eip191_digest(node.eth_call(paymaster, family.get_hash_call(signed, window))[:32])
        r, s, v = int.from_bytes(data[64:96], "big"), int.from_bytes(data[96:128], "big"), data[128]
        recovered = keys.Signature(vrs=(v - 27, r, s)).recover_public_key_from_msg_hash(digest)
        if recovered.to_checksum_address().lower() != verifying_signer.lower():
            raise SystemExit(f"{name}: signed by {recovered.to_checksum_address()}, not {verifying_signer}")
        kind, value = user_op_abi(signed)
        op_hash = user_op_hash(signed, EntryPointVersion.V07, bytes.fromhex(ENTRY_POINT_V07[2:]), CHAIN_ID)
        call = abi_call(
            f"validatePaymasterUserOp({kind},bytes32,uint256)",
            [kind, "bytes32", "uint256"],
            [value, op_hash, signed.max_gas_cost()],
        )
        _, validation = decode(["bytes", "uint256"], node.eth_call(paymaster, call, sender=ENTRY_POINT_V07))
    failed, until, after = validation & ((1 << 160) - 1), (validation >> 160) & ((1 << 48) - 1), validation >> 208
    if failed or (until, after) != (window.valid_until, window.valid_after):
        raise SystemExit(f"{name}: validatePaymasterUserOp returned {validation:#x} for window {window}")
    span = window.valid_until - window.valid_after
    return f"{name}: accepted by the contract (signer {verifying_signer}, window {span} s)"


def ratios(results: dict[str, list[dict[str, Any]]], config: str) -> str:
    """One row: ``config``'s medians over the baseline's, and the req/s ratio of every run pair."""
    base, mine = results["baseline"], results[config]

    def ratio(key: str) -> float:
        return (median(mine, key) or 0.0) / (median(base, key) or float("nan"))

    pairs = ", ".join(f"{a['rps'] / b['rps']:.2f}" for a, b in zip(mine, base, strict=True))
    p99_over = (median(mine, "p99_ms") or 0.0) - (median(base, "p99_ms") or 0.0)
    return (
        f"| {config} | **{ratio('rps'):.2f}×** | {pairs} | {ratio('p50_ms'):.2f} | {ratio('p99_ms'):.2f} "
        f"| {p99_over:+.2f} | {ratio('server_cpu_us_per_req'):.2f} |"
    )


def verdict(results: dict[str, list[dict[str, Any]]], config: str) -> str:
    min_ratio, max_p99_over = TARGETS[config]
    base, mine = results["baseline"], results[config]
    got = (median(mine, "rps") or 0.0) / (median(base, "rps") or float("inf"))
    p99_over = (median(mine, "p99_ms") or 0.0) - (median(base, "p99_ms") or 0.0)
    met = got >= min_ratio and (max_p99_over is None or p99_over <= max_p99_over)
    want = f"≥ {min_ratio:g}× req/s" + (f", p99 ≤ baseline + {max_p99_over:g} ms" if max_p99_over else "")
    return f"- {config}: {got:.2f}×, p99 {p99_over:+.2f} ms (target {want}): {'met' if met else 'missed'}"


def table(results: dict[str, list[dict[str, Any]]], configs: list[str]) -> str:
    lines = [
        "| server | req/s | p50 ms | p99 ms | server CPU µs/req | other cores | failures |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, runs in results.items():
        lines.append(
            f"| {name} | {median(runs, 'rps'):,.0f} | {median(runs, 'p50_ms'):.2f} | {median(runs, 'p99_ms'):.2f} "
            f"| {median(runs, 'server_cpu_us_per_req'):.0f} | {median(runs, 'other_cpu_cores'):.2f} "
            f"| {sum(r['failures'] for r in runs)} |"
        )
    lines += [
        "",
        "| aNode config | req/s ratio | per run pair | p50 ratio | p99 ratio | p99 − baseline ms | CPU/req ratio |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    lines += [ratios(results, name) for name in results if name != "baseline"]
    return "\n".join(lines + [""] + [verdict(results, config) for config in configs])


def machine() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "?")
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return f"{os.cpu_count()} x {model} (lscpu), node {node}, load average at start {os.getloadavg()}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--anode-config-edit", nargs="+", default=["ledger"], choices=CONFIGS, metavar="CONFIG")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--holders", type=int, default=256, help="with a pipeline config: funded wallets")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--workers-auto", action="store_true", help="also each config with --workers auto")
    parser.add_argument("--note", default="", help="a line for the results file (e.g. what else ran)")
    parser.add_argument("--out", type=Path, help="results file (default bench/results/vs-node-<time>.md)")
    args = parser.parse_args()
    configs: list[str] = list(dict.fromkeys(args.anode_config_edit))
    info = machine()
    print(info)

    with sandbox(keep=False) as chain, contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        assert chain.database is not None
        workdir = chain.database.parent
        tree = yaml.safe_load((workdir / "sandbox.yaml").read_text())
        node_url = tree["chains"][0]["rpc_url"]
        paymaster = next(
            p["address"] for p in tree["chains"][0]["paymasters"] if p["entry_point"].lower() == ENTRY_POINT_V07.lower()
        )
        senders: Path | None = None
        edits: dict[str, Any] = {"ledger": None}
        wallets = ["0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0"]
        if any(config.startswith("pipeline") for config in configs):
            contracts = deploy_check_contracts(node_url)
            wallets = holders(args.holders)
            give(contracts, wallets)
            senders = Path(tmp) / "senders.txt"
            senders.write_text("\n".join(wallets) + "\n")
            edits["pipeline-sqlite"] = pipeline(contracts, "sql", None)
            edits["pipeline-redis"] = pipeline(contracts, "redis", args.redis_url)
            print(f"check contracts deployed, {len(wallets)} holders funded")
        servers = {"baseline": stack.enter_context(baseline_server(workdir, paymaster, tree["signer"]["private_key"]))}
        for config in configs:
            servers[config] = stack.enter_context(variant_server(config, "", workdir, edits[config]))
            if args.workers_auto:
                python = shlex.quote(sys.executable)
                serve = f"{python} -m anode.cli serve --config {{config}} --port {{port}} --workers auto"
                name = f"{config}, workers auto"
                workers = variant_server(name.replace(", ", "-"), serve, workdir, edits[config])
                servers[name] = stack.enter_context(workers)

        for name, server in servers.items():
            print(accepted(name, server, node_url, paymaster, wallets[0], 1 << 64))
            if senders is not None:  # every holder's SBT and PNT read once: runs measure the cached state
                for nonce, wallet in enumerate(wallets, start=1):
                    params = [call_data_op(wallet, nonce), ENTRY_POINT_V07, SANDBOX_CHAIN_ID, {}]
                    if "result" not in rpc(server.rpc_url, "pm_getPaymasterData", params):
                        raise SystemExit(f"{name}: pm_getPaymasterData refused {wallet}")
        salt = int(time.time()) & 0x7FFFFFF
        for server in servers.values():  # warm-up, not recorded
            salt += 1
            wrk_run(server, "pm_getPaymasterData", args.clients, 2, 1, salt, senders)
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
        for run_index in range(args.runs):
            for name, server in servers.items():
                salt += 1
                result = wrk_run(server, "pm_getPaymasterData", args.clients, args.duration, 1, salt, senders)
                results[name].append(result)
                print(f"  run {run_index + 1} {name:>15} {progress(result)}", flush=True)
        for config, server in servers.items():
            if server.database is None:
                continue
            rows, distinct = ledger_rows(server.database)
            if rows != distinct:
                raise SystemExit(f"{config}: {rows} ledger rows, {distinct} distinct userOpHashes")

    text = table(results, configs)
    print()
    print(text)
    setup = (
        f"{args.runs} run(s) x {args.duration} s per server, {args.clients} clients, wrk -t1, "
        "pm_getPaymasterData v0.7, one process each"
    )
    out = write_result("vs_node", "vs-node", args, f"{setup}, medians. {info}.", text)
    print(f"\nwrote {out}")
    return 0


def write_result(script: str, stem: str, args: argparse.Namespace, setup: str, text: str) -> Path:
    """``text`` under a header (time, the command as run, ``setup``, ``--note``) in ``args.out`` or
    ``bench/results/<stem>-<time>.md``; the path written."""
    when = datetime.now(UTC)
    out: Path = args.out or Path(__file__).resolve().parent / "results" / f"{stem}-{when:%Y%m%d-%H%M}.md"
    shown = [arg for arg in sys.argv[1:] if arg not in ("--note", args.note)]  # the note goes below
    header = f"{when.isoformat(timespec='seconds')}, `python bench/{script}.py {shlex.join(shown)}`\n\n{setup}\n"
    if args.note:
        header += f"\n{args.note}\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + "\n" + text + "\n")
    return out


if __name__ == "__main__":
    sys.exit(main())
