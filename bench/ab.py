"""Compare server variants under the same noise: interleaved wrk runs against several servers.

    python bench/ab.py --variant base= \\
        --variant opt='PYTHONPATH=/tmp/anode-opt' \\
        --variant two-workers='python /tmp/serve2.py --config {config} --port {port}' \\
        --methods pm_getPaymasterData --clients 16 --runs 5 --duration 5

One ``anode sandbox`` provides anvil and the deployed contracts; each variant is its own server
on that chain with its own SQLite ledger. A variant is ``NAME=PREFIX``: the server runs as
``sh -c 'exec env PREFIX python -m anode.cli serve --config {config} --port {port}'``, so PREFIX can
set environment variables (a ``PYTHONPATH`` holding a modified copy of ``anode/``); a PREFIX that
contains ``{config}`` is the whole command instead. Servers run in the sandbox's directory, so
``python -m`` does not put the current checkout ahead of ``PYTHONPATH``. Only one server is loaded at a time; runs go
round-robin over variants, so a burst of load from elsewhere on the machine hits every variant
alike. Medians per variant; CPU µs per request is the least noisy column.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import METHODS, Server, free_port, ledger_rows, median, progress, sandbox, wait_until_serving, wrk_run


@contextlib.contextmanager
def variant_server(
    name: str, prefix: str, workdir: Path, edit: Callable[[dict[str, Any]], None] | None = None
) -> Iterator[Server]:
    """A server on the sandbox's chain with its own SQLite ledger; ``edit`` may change its config."""
    tree = yaml.safe_load((workdir / "sandbox.yaml").read_text())
    database = workdir / f"variant-{name}.db"
    tree["database_url"] = f"sqlite:///{database}"
    tree["log_level"] = "WARNING"
    if edit is not None:
        edit(tree)
    config = workdir / f"variant-{name}.yaml"
    config.write_text(yaml.safe_dump(tree, sort_keys=False))
    port = free_port()
    if "{config}" in prefix:
        command = prefix.format(config=shlex.quote(str(config)), port=port)
    else:
        python = shlex.quote(sys.executable)
        command = f"env {prefix} {python} -m anode.cli serve --config {shlex.quote(str(config))} --port {port}"
    log = (workdir / f"variant-{name}.log").open("wb")
    process = subprocess.Popen(
        ["sh", "-c", f"exec {command}"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=workdir
    )
    server = Server(f"http://127.0.0.1:{port}/api/v1/rpc", database, process.pid)
    try:
        wait_until_serving(process, server.rpc_url, workdir / f"variant-{name}.log", f"variant {name}", 60)
        print(f"variant {name}: pid {process.pid}, {command}")
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", required=True, help="NAME=PREFIX (see above)")
    parser.add_argument("--methods", nargs="+", default=["pm_getPaymasterData"], choices=METHODS)
    parser.add_argument("--clients", type=int, nargs="+", default=[16])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="also write the table (and the variants) to this markdown file")
    args = parser.parse_args()
    variants = [spec.split("=", 1) for spec in args.variant]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
    with sandbox(keep=False) as chain, contextlib.ExitStack() as stack:
        assert chain.database is not None
        # the sandbox's own server stays idle; each variant is served next to it
        servers = {
            name: stack.enter_context(variant_server(name, prefix, chain.database.parent)) for name, prefix in variants
        }
        salt = int(time.time()) & 0x7FFFFFF
        for server in servers.values():  # warm-up
            for method in args.methods:
                wrk_run(server, method, 16, 2, args.threads, salt)
                salt += 1
        for run_index in range(args.runs):
            for clients in args.clients:
                for method in args.methods:
                    for name, server in servers.items():
                        salt += 1
                        result = wrk_run(server, method, clients, args.duration, args.threads, salt)
                        results[name].append(result)
                        print(f"  run {run_index + 1} {name:>14} {progress(result)}", flush=True)
        for name, server in servers.items():
            assert server.database is not None
            rows, distinct = ledger_rows(server.database)
            if rows != distinct:
                raise SystemExit(f"variant {name}: {rows} ledger rows, {distinct} distinct userOpHashes")
    lines = [
        "| method | clients | variant | req/s | p50 ms | p99 ms | server CPU µs/req | server cores "
        "| other cores | failures |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for method in args.methods:
        for clients in args.clients:
            for name, _ in variants:
                runs = [r for r in results[name] if r["method"] == method and r["clients"] == clients]
                lines.append(
                    f"| {method} | {clients} | {name} | {median(runs, 'rps'):,.0f} | {median(runs, 'p50_ms'):.2f} "
                    f"| {median(runs, 'p99_ms'):.2f} | {median(runs, 'server_cpu_us_per_req'):.0f} "
                    f"| {median(runs, 'server_cpu_cores'):.2f} | {median(runs, 'other_cpu_cores'):.2f} "
                    f"| {sum(r['failures'] for r in runs)} |"
                )
    table = "\n".join(lines)
    print()
    print(table)
    if args.out:
        command = " ".join(shlex.quote(arg) for arg in sys.argv)
        when = datetime.now(UTC).isoformat(timespec="seconds")
        header = (
            f"{when}, `python {command}`, {args.runs} run(s) x {args.duration} s, wrk -t{args.threads}, medians\n\n"
        )
        variants_text = "\n".join(f"- `{name}`: `{prefix or '(this checkout)'}`" for name, prefix in variants)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(header + variants_text + "\n\n" + table + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
