"""``pm_getPaymasterData`` in ERC-20 mode (a Chainlink-priced token) against verifying mode, one run.

    python bench/erc20.py                          # 16 clients, 5 runs x 10 s per mode
    python bench/erc20.py --runs 3 --duration 10 --holders 64 --note "machine shared with ..."

One ``anode sandbox`` provides anvil, the SingletonPaymasters, the sandbox's test token (TUSD, 6
decimals) and its two price feeds. One ``anode serve`` (its own SQLite ledger) serves the v0.7
SingletonPaymaster with the sandbox's ``erc20:`` section (TUSD priced by the TUSD/USD and ETH/USD
feeds, 10 % markup): a request with ``context: {}`` is verifying mode, one with ``context:
{token}`` ERC-20 mode, on the same paymaster, server and process. ``--holders`` wallets get TUSD
and approve the paymaster (anvil impersonates them), and the load cycles its senders through them,
for both modes alike, so ERC-20 mode's balance and allowance checks pass as for a real wallet.

Before measuring, one answer of each mode is checked: verifying mode's mode byte is 0x01, ERC-20
mode's 0x03 with the token and the rate the price book quotes (``pimlico_getTokenQuotes``). Then
wrk runs the two modes in turn (A B A B) with ``bench/jsonrpc.lua`` (``BENCH_CONTEXT`` carries the
token); the table quotes medians and the ratio ERC-20 / verifying, with the ratio of every run pair.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ab import variant_server
from pipeline import call_data_op, holders
from run import ENTRY_POINT_V07, SANDBOX_CHAIN_ID, median, progress, rpc, sandbox, wrk_run
from vs_node import machine, write_result

MODES = ("verifying", "erc20")
#: the target at 16 clients: ERC-20 mode's req/s within 15 % of verifying mode's
MIN_RATIO = 0.85
TOKENS_EACH = 1_000_000


def erc20_config(tree: dict[str, Any], singleton_v07: str) -> tuple[dict[str, Any], str]:
    """``edit`` for the server: the v0.7 route is the SingletonPaymaster, with the sandbox's ``erc20:``."""
    chain = tree["chains"][0]
    section = next(pm["erc20"] for pm in chain["paymasters"] if "erc20" in pm)
    for pm in chain["paymasters"]:
        if pm["entry_point"].lower() == ENTRY_POINT_V07.lower():
            pm.update(address=singleton_v07, contract="singleton", erc20=section)
    return section, section["tokens"][0]["address"]


def fund(node_url: str, token: str, paymaster: str, wallets: list[str]) -> None:
    """Each wallet holds TUSD and has approved ``paymaster`` (sent as the wallet, anvil impersonating it)."""
    from anode.devchain.rpc import DevRpc, encode_call

    mint_types, approve = (
        ["address", "uint256"],
        encode_call("approve(address,uint256)", ["address", "uint256"], [paymaster, 2**256 - 1]),
    )
    with DevRpc(node_url, timeout=60.0) as node:
        funder = node.accounts()[0]
        for wallet in wallets:
            node.transact(
                funder, token, encode_call("mint(address,uint256)", mint_types, [wallet, TOKENS_EACH * 10**6])
            )
            node.set_balance(wallet, 10**18)
            node.call("anvil_impersonateAccount", wallet)
            try:
                node.transact(wallet, token, approve)
            finally:
                node.call("anvil_stopImpersonatingAccount", wallet)


def check_answers(url: str, token: str, paymaster: str, sender: str) -> str:
    """One answer per mode, from ``paymaster``, in the right mode; ERC-20 mode at the quoted rate."""
    quotes = rpc(url, "pimlico_getTokenQuotes", [{"tokens": [token]}, ENTRY_POINT_V07, SANDBOX_CHAIN_ID])
    if "result" not in quotes:
        raise SystemExit(f"pimlico_getTokenQuotes was refused: {quotes}")
    (quote,) = quotes["result"]["quotes"]
    rate = int(quote["exchangeRate"], 16)
    lines = []
    for nonce, (mode, context) in enumerate((("verifying", {}), ("erc20", {"token": token})), start=1 << 64):
        reply = rpc(
            url, "pm_getPaymasterData", [call_data_op(sender, nonce), ENTRY_POINT_V07, SANDBOX_CHAIN_ID, context]
        )
        if "result" not in reply:
            raise SystemExit(f"{mode}: pm_getPaymasterData was refused: {reply}")
        result = reply["result"]
        data = bytes.fromhex(result["paymasterData"][2:])
        if result["paymaster"].lower() != paymaster.lower():
            raise SystemExit(f"{mode}: answered for paymaster {result['paymaster']}, not {paymaster}")
        if mode == "verifying" and data[0] != 0x01:
            raise SystemExit(f"verifying: mode byte {data[0]:#04x}, not 0x01")
        if mode == "erc20":
            if data[0] != 0x03 or data[14:34].hex() != token[2:].lower():
                raise SystemExit(
                    f"erc20: mode byte {data[0]:#04x} / token 0x{data[14:34].hex()} not ERC-20 mode in TUSD"
                )
            if int.from_bytes(data[50:82], "big") != rate:
                raise SystemExit(f"erc20: signed rate {int.from_bytes(data[50:82], 'big')} is not the quoted {rate}")
        lines.append(f"{mode}: mode byte {data[0]:#04x}, {len(data)} bytes of paymasterData")
    return "; ".join(lines) + f"; quoted and signed rate {rate} TUSD base units per 1e18 wei"


@contextlib.contextmanager
def context(value: dict[str, Any] | None) -> Iterator[None]:
    """``BENCH_CONTEXT`` for the wrk runs inside (read by ``jsonrpc.lua``)."""
    if value is None:
        os.environ.pop("BENCH_CONTEXT", None)
    else:
        os.environ["BENCH_CONTEXT"] = json.dumps(value, separators=(",", ":"))
    try:
        yield
    finally:
        os.environ.pop("BENCH_CONTEXT", None)


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "| mode | req/s | p50 ms | p99 ms | server CPU µs/req | other cores | failures |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, runs in results.items():
        lines.append(
            f"| {name} | {median(runs, 'rps'):,.0f} | {median(runs, 'p50_ms'):.2f} | {median(runs, 'p99_ms'):.2f} "
            f"| {median(runs, 'server_cpu_us_per_req'):.0f} | {median(runs, 'other_cpu_cores'):.2f} "
            f"| {sum(r['failures'] for r in runs)} |"
        )
    base, mine = results["verifying"], results["erc20"]
    got = (median(mine, "rps") or 0.0) / (median(base, "rps") or float("inf"))
    pairs = ", ".join(f"{a['rps'] / b['rps']:.2f}" for a, b in zip(mine, base, strict=True))
    cpu = (median(mine, "server_cpu_us_per_req") or 0.0) / (median(base, "server_cpu_us_per_req") or float("inf"))
    verdict = "met" if got >= MIN_RATIO else "missed"
    summary = (
        f"ERC-20 / verifying: **{got:.2f}×** req/s (per run pair: {pairs}), {cpu:.2f}× server CPU per request; "
        f"target ≥ {MIN_RATIO:g}×: {verdict}"
    )
    return "\n".join([*lines, "", summary])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--holders", type=int, default=64, help="wallets holding TUSD, paymaster approved")
    parser.add_argument("--note", default="", help="a line for the results file (e.g. what else ran)")
    parser.add_argument("--out", type=Path, help="results file (default bench/results/erc20-<time>.md)")
    args = parser.parse_args()
    info = machine()
    print(info)

    with sandbox(keep=False) as chain, contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        assert chain.database is not None
        workdir = chain.database.parent
        tree = yaml.safe_load((workdir / "sandbox.yaml").read_text())
        deployment = json.loads((workdir / "deployment.json").read_text())
        node_url = tree["chains"][0]["rpc_url"]
        paymaster = deployment["singleton_paymasters"]["v0.7"]
        _, token = erc20_config(tree, paymaster)
        wallets = holders(args.holders)
        fund(node_url, token, paymaster, wallets)
        senders = Path(tmp) / "senders.txt"
        senders.write_text("\n".join(wallets) + "\n")
        print(f"{len(wallets)} holders funded with TUSD, paymaster {paymaster} approved")
        server = stack.enter_context(variant_server("erc20", "", workdir, lambda t: erc20_config(t, paymaster)))
        print(check_answers(server.rpc_url, token, paymaster, wallets[0]))

        contexts: dict[str, dict[str, Any] | None] = {"verifying": None, "erc20": {"token": token}}
        salt = int(time.time()) & 0x7FFFFFF
        for mode in MODES:  # warm-up, not recorded: every holder's balance and allowance read once
            salt += 1
            with context(contexts[mode]):
                wrk_run(server, "pm_getPaymasterData", args.clients, 2, 1, salt, senders)
        results: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
        for run_index in range(args.runs):
            for mode in MODES:
                salt += 1
                with context(contexts[mode]):
                    result = wrk_run(server, "pm_getPaymasterData", args.clients, args.duration, 1, salt, senders)
                results[mode].append(result)
                print(f"  run {run_index + 1} {mode:>9} {progress(result)}", flush=True)
                if result["failures"]:
                    print(f"    failures, e.g. {result.get('sample_error', '')[:200]}")

    text = table(results)
    print()
    print(text)
    setup = (
        f"{args.runs} run(s) x {args.duration} s per mode, {args.clients} clients, wrk -t1, pm_getPaymasterData "
        f"v0.7 on one SingletonPaymaster, one `anode serve` process, {args.holders} senders"
    )
    out = write_result("erc20", "erc20", args, f"{setup}, medians. {info}.", text)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
