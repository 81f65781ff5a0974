"""End-to-end ``pm_getPaymasterData`` req/s and p50/p99 with each signing backend (issue 4).

    python bench/e2e_signers.py                                   # every backend, 16 clients, 3 x 10 s
    python bench/e2e_signers.py --backends local pkcs11 --clients 1 16 --runs 1 --duration 5

One ``anode sandbox`` provides anvil and the EntryPoints. Each backend is set up as in
``bench/signers.py`` (SoftHSM2 token, moto's KMS server with its DIGEST handling corrected,
``anode keyserver serve`` for ``remote``), then the sandbox's paymasters are deployed once more
with that backend's address as their signer, so the server under test signs with the key its
VerifyingPaymaster v0.7 really accepts (the signer manager checks that at start-up). Each backend
gets its own ``anode serve`` (one worker, its own SQLite ledger) configured with that
``signer:``; wrk drives them round-robin (run 1 of every backend, then run 2, ...), and the table
quotes medians. Every call is a distinct operation recorded in that server's ledger (checked).

moto runs inside this script's process (a thread), the key server in its own: what ``aws_kms``
measures is moto + boto3 over loopback, not AWS.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ab import variant_server
from run import ledger_rows, progress, sandbox, side_by_side, write_report, wrk_run
from signers import SETUPS, Skip

from anode.devchain.deploy import deploy_sandbox
from anode.sandbox import sandbox_config
from anode.signers.registry import build_signer, signer_settings

BACKENDS = ["local", "keystore", "pkcs11", "aws_kms", "remote"]


def backend_tree(workdir: Path, name: str, signer: dict[str, Any], address: str) -> Any:
    """The sandbox's config with ``signer`` and paymasters that accept ``address``."""
    rpc_url = yaml.safe_load((workdir / "sandbox.yaml").read_text())["chains"][0]["rpc_url"]
    deployment = deploy_sandbox(rpc_url, [address])

    def edit(tree: dict[str, Any]) -> None:
        fresh = sandbox_config(deployment, rpc_url, "0x" + "00" * 31 + "01", tree["database_url"])
        tree.clear()
        tree.update(fresh | {"signer": signer, "log_level": "WARNING"})

    return edit


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=BACKENDS, choices=BACKENDS)
    parser.add_argument("--clients", type=int, nargs="+", default=[16])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    parser.add_argument(
        "--variant",
        action="append",
        metavar="NAME=PREFIX",
        help="also serve every backend with this code (as bench/ab.py: PYTHONPATH=/tmp/copy), interleaved",
    )
    args = parser.parse_args()
    variants = [("", "")] + [tuple(spec.split("=", 1)) for spec in args.variant or []]

    results: dict[str, list[dict[str, Any]]] = {}
    skipped: dict[str, str] = {}
    with sandbox(keep=False) as chain, contextlib.ExitStack() as stack:
        assert chain.database is not None
        workdir = chain.database.parent
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="anode-e2e-signers-")))
        servers = {}
        for name in args.backends:
            try:
                config = stack.enter_context(SETUPS[name](tmp))
            except Skip as exc:
                skipped[name] = str(exc)
                print(f"skipping {name}: {exc}", flush=True)
                continue
            address = build_signer(signer_settings(config)).address
            tree = backend_tree(workdir, name, config, address)
            for variant, prefix in variants:
                label = f"{variant}:{name}" if variant else name
                servers[label] = stack.enter_context(
                    variant_server(f"{variant}-{name}" if variant else name, prefix, workdir, tree)
                )
                results[label] = []
            print(f"{name}: signs as {address}", flush=True)
        salt = int(time.time()) & 0x7FFFFFF
        for server in servers.values():  # warm-up
            salt += 1
            wrk_run(server, "pm_getPaymasterData", 16, 2, 1, salt)
        for run_index in range(args.runs):
            for clients in args.clients:
                for name, server in servers.items():
                    salt += 1
                    result = wrk_run(server, "pm_getPaymasterData", clients, args.duration, 1, salt)
                    results[name].append(result)
                    print(f"  run {run_index + 1} {name:>9} {progress(result)}", flush=True)
        for name, server in servers.items():
            assert server.database is not None
            rows, distinct = ledger_rows(server.database)
            if rows != distinct:
                raise SystemExit(f"{name}: {rows} ledger rows, {distinct} distinct userOpHashes")

    text = side_by_side("backend", results, args.clients)
    if skipped:
        text += "\n\n" + "\n".join(f"- {name} skipped: {why}" for name, why in skipped.items())
    write_report(args.out, text, args.runs, args.duration)
    return 0


if __name__ == "__main__":
    sys.exit(main())
