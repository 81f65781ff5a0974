"""Load-test aNode's JSON-RPC endpoint with wrk: req/s and p50/p99 at 1, 16 and 64 clients.

    python bench/run.py            # full matrix: 3 methods x 3 client counts x 3 runs x 10 s (~5 min)
    python bench/run.py --quick    # 1 run x 3 s per point (~40 s)
    python bench/run.py --url http://127.0.0.1:8080 --database .anode/sandbox.db --server-pid PID
    PYTHONPATH=/tmp/copy python bench/run.py   # the sandbox runs a modified copy of anode/

Without ``--url`` it starts its own ``anode sandbox`` (anvil, every contract, aNode on a fresh
SQLite file) on free ports in a temporary directory, and stops it afterwards.

Each point is measured ``--runs`` times, interleaved (run 1 of every point, then run 2, ...), so
that noise from other work on the machine spreads over all points instead of hitting one; the
table quotes medians. ``pm_supportedEntryPoints`` is the framework baseline: it goes through
HTTP, the app and the JSON-RPC dispatch and does no paymaster work (it does checksum the three
EntryPoint addresses on every call, which ``docs/performance.md`` counts).

A request counts as a success only if it got HTTP 200 and a JSON-RPC ``result`` (see
``jsonrpc.lua``). For ``pm_getPaymasterData`` the ledger is counted before and after every run:
it must have grown by at least the number of successes (at most that plus the connections whose
answer was in flight when wrk stopped), and every row must have its own userOpHash.

Besides wrk's numbers each run records CPU time: the server's (all its threads, from
``/proc/PID/stat``), wrk's, and the whole machine's, so "other" is the CPU that something else
on this shared machine took during the run. Server CPU per request is the figure least disturbed
by that noise.

Writes ``bench/results/latest.json`` (every run, medians, machine) and ``bench/results/latest.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
LUA_SCRIPT = BENCH_DIR / "jsonrpc.lua"
ENTRY_POINT_V07 = "0x0000000071727De22E5E9d8BAf0edAc6f37da032"
SANDBOX_CHAIN_ID = "0x7a69"
METHODS = ("pm_supportedEntryPoints", "pm_getPaymasterStubData", "pm_getPaymasterData")
SHORT = {"pm_supportedEntryPoints": "baseline", "pm_getPaymasterStubData": "stub", "pm_getPaymasterData": "data"}
CLIENTS = (1, 16, 64)
#: the issue's targets, at 16 clients: (min req/s, max p99 ms or None)
TARGETS = {"pm_getPaymasterData": (2000.0, 25.0), "pm_getPaymasterStubData": (5000.0, None)}
TICKS = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- the server under test


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rpc(url: str, method: str, params: list[Any], timeout: float = 5.0) -> dict[str, Any]:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


@dataclass
class Server:
    rpc_url: str
    database: Path | None
    pid: int | None


@contextlib.contextmanager
def sandbox(keep: bool, workers: int = 1) -> Iterator[Server]:
    """``anode sandbox`` on free ports in a temporary directory; stopped (and removed) on exit."""
    workdir = Path(tempfile.mkdtemp(prefix="anode-bench-"))
    port, anvil_port = free_port(), free_port()
    log = (workdir / "server.log").open("wb")
    command = [sys.executable, "-m", "anode.cli", "sandbox", "--workdir", str(workdir)]
    command += ["--port", str(port), "--anvil-port", str(anvil_port), "--workers", str(workers)]
    # run in the work directory: ``python -m`` would put the current directory ahead of PYTHONPATH
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=workdir)
    server = Server(f"http://127.0.0.1:{port}/api/v1/rpc", workdir / "sandbox.db", process.pid)
    try:
        wait_until_serving(process, server.rpc_url, workdir / "server.log", "anode sandbox", 120)
        print(f"sandbox: aNode pid {process.pid} at {server.rpc_url}, ledger {server.database}")
        yield server
    finally:
        # SIGINT: uvicorn shuts down, then the sandbox stops its anvil
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.close()
        if keep:
            print(f"sandbox files kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def wait_until_serving(process: subprocess.Popen[bytes], url: str, log: Path, what: str, seconds: float) -> None:
    """Return once ``url`` answers JSON-RPC; exit with the log's tail if the process dies or times out."""
    deadline = time.monotonic() + seconds
    while True:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not answer within {seconds:g} s:\n{_tail(log)}")
        with contextlib.suppress(OSError, ValueError):
            rpc(url, "pm_supportedEntryPoints", [], timeout=1.0)
            return
        time.sleep(0.3)


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def ledger_rows(database: Path) -> tuple[int, int]:
    """(rows, distinct userOpHashes) in the sponsorship ledger."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)) as db:
        rows, distinct = db.execute("SELECT count(*), count(DISTINCT user_op_hash) FROM sponsorships").fetchone()
        return int(rows), int(distinct)


def settled_rows(database: Path) -> int:
    """The row count once in-flight requests have been written (two equal reads 0.2 s apart)."""
    previous = -1
    for _ in range(50):
        rows = ledger_rows(database)[0]
        if rows == previous:
            return rows
        previous = rows
        time.sleep(0.2)
    return previous


# ---------------------------------------------------------------- CPU accounting


def process_cpu(pid: int | None) -> float:
    """CPU seconds (user + system, every thread) used by a process and its descendants, except anvil.

    Descendants count so that a multi-process server is measured whole; the sandbox's anvil is a
    child of the server process and is left out (it does no work for v0.7 VerifyingPaymaster calls).
    """
    if pid is None:
        return 0.0
    stats: dict[int, tuple[int, str, float]] = {}  # pid -> (parent, command, cpu seconds)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        command = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        stats[int(entry.name)] = (int(fields[1]), command, (int(fields[11]) + int(fields[12])) / TICKS)
    total = 0.0
    for candidate, (_, command, cpu) in stats.items():
        walk, hops = candidate, 0
        while walk in stats and walk != pid and hops < 64:
            walk, hops = stats[walk][0], hops + 1
        if walk == pid and command != "anvil":
            total += cpu
    return total


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (every core, not idle and not iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / TICKS


def machine_steal() -> float:
    """CPU seconds the hypervisor gave this VM's cores to someone else (``steal`` in /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return values[7] / TICKS if len(values) > 7 else 0.0


def wait_for_quiet(max_cores: float, max_wait: float) -> float:
    """Wait until the rest of the machine uses less than ``max_cores`` over a second (or time runs out).

    Called between runs, when the server is idle: whatever is busy is someone else. Returns the
    seconds waited.
    """
    started = time.monotonic()
    while True:
        before = machine_busy()
        time.sleep(1.0)
        if machine_busy() - before < max_cores or time.monotonic() - started > max_wait:
            return time.monotonic() - started


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------- one wrk run


def wrk_run(
    server: Server, method: str, clients: int, seconds: int, threads: int, salt: int, senders: Path | None = None
) -> dict[str, Any]:
    """One wrk run; ``senders``: a file of addresses to cycle through (see ``jsonrpc.lua``)."""
    threads = max(1, min(threads, clients))
    command = ["wrk", f"-t{threads}", f"-c{clients}", f"-d{seconds}s", "--latency", "--timeout", "10s"]
    command += ["-s", str(LUA_SCRIPT), server.rpc_url, "--", method, ENTRY_POINT_V07, SANDBOX_CHAIN_ID, str(salt)]
    if senders is not None:
        command.append(str(senders))
    records = method == "pm_getPaymasterData" and server.database is not None
    rows_before = settled_rows(server.database) if records and server.database else 0
    server_before, machine_before, wrk_before = process_cpu(server.pid), machine_busy(), children_cpu()
    steal_before = machine_steal()
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    steal = machine_steal() - steal_before
    server_cpu = process_cpu(server.pid) - server_before
    wrk_cpu = children_cpu() - wrk_before
    machine_cpu = machine_busy() - machine_before
    lines = [line for line in done.stdout.splitlines() if line.startswith("BENCH_JSON ")]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("BENCH_JSON "))
    seconds_measured = result["duration_us"] / 1e6
    failures = result["requests"] - result["ok"] + sum(result["socket_errors"].values())
    result.update(
        method=method,
        clients=clients,
        threads=threads,
        failures=failures,
        rps=result["ok"] / seconds_measured,
        p50_ms=result["latency_us"]["p50"] / 1000,
        p99_ms=result["latency_us"]["p99"] / 1000,
        server_cpu_cores=server_cpu / wall,
        server_cpu_us_per_req=server_cpu / result["requests"] * 1e6 if server.pid and result["requests"] else None,
        wrk_cpu_cores=wrk_cpu / wall,
        other_cpu_cores=max(0.0, (machine_cpu - server_cpu - wrk_cpu) / wall) if server.pid else None,
        # the host running someone else on these cores (part of "other"): the noise a VM cannot see
        steal_cores=steal / wall,
    )
    if records and server.database:
        grown = settled_rows(server.database) - rows_before
        # wrk stops with up to one request per connection sent but not yet answered: those are
        # recorded by the server but not counted by wrk
        result["ledger_rows_added"] = grown
        result["ledger_ok"] = result["ok"] <= grown <= result["ok"] + clients + failures
    return result


# ---------------------------------------------------------------- the matrix


def sample_requests(server: Server) -> None:
    """One call of each method before measuring: a benchmark of fast errors would be worthless."""
    op = {
        "sender": "0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0",
        "nonce": hex(int(time.time() * 1e6)),
        "callData": "0xb61d27f6",
        "callGasLimit": "0x186a0",
        "verificationGasLimit": "0x186a0",
        "preVerificationGas": "0xc350",
        "maxFeePerGas": "0x3b9aca00",
        "maxPriorityFeePerGas": "0x3b9aca00",
    }
    for method in METHODS:
        params: list[Any] = [] if method == "pm_supportedEntryPoints" else [op, ENTRY_POINT_V07, SANDBOX_CHAIN_ID, {}]
        answer = rpc(server.rpc_url, method, params)
        if "result" not in answer:
            raise SystemExit(f"{method} does not succeed, refusing to benchmark errors: {answer}")
        print(f"  sample {method}: {json.dumps(answer['result'])[:110]}")


def median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [run[key] for run in runs if run.get(key) is not None]
    return statistics.median(values) if values else None


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    points: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for run in runs:
        points.setdefault((run["method"], run["clients"]), []).append(run)
    rows = []
    for (method, clients), group in sorted(points.items(), key=lambda item: (METHODS.index(item[0][0]), item[0][1])):
        rps = [run["rps"] for run in group]
        rows.append(
            {
                "method": method,
                "clients": clients,
                "runs": len(group),
                "rps": median(group, "rps"),
                "rps_min": min(rps),
                "rps_max": max(rps),
                "p50_ms": median(group, "p50_ms"),
                "p99_ms": median(group, "p99_ms"),
                "server_cpu_us_per_req": median(group, "server_cpu_us_per_req"),
                "server_cpu_cores": median(group, "server_cpu_cores"),
                "wrk_cpu_cores": median(group, "wrk_cpu_cores"),
                "other_cpu_cores": median(group, "other_cpu_cores"),
                "steal_cores": median(group, "steal_cores"),
                "failures": sum(run["failures"] for run in group),
                "requests": sum(run["requests"] for run in group),
                "ledger_ok": all(run.get("ledger_ok", True) for run in group),
            }
        )
    return rows


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for method, (min_rps, max_p99) in TARGETS.items():
        row = next((r for r in rows if r["method"] == method and r["clients"] == 16), None)
        if row is None:
            continue
        ok = row["rps"] >= min_rps and (max_p99 is None or row["p99_ms"] < max_p99)
        want = f">= {min_rps:,.0f} req/s" + (f", p99 < {max_p99:g} ms" if max_p99 else "")
        got = f"{row['rps']:,.0f} req/s, p99 {row['p99_ms']:.1f} ms"
        lines.append(f"{method} @16 clients: {got} (target {want}): {'MET' if ok else 'MISSED'}")
    return lines


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(rows: list[dict[str, Any]]) -> str:
    out = [
        "| method | clients | req/s (median) | req/s (min-max) | p50 ms | p99 ms | server CPU µs/req "
        "| server cores | wrk cores | other cores | of which steal | failures | ledger |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ledger = ("ok" if r["ledger_ok"] else "MISMATCH") if r["method"] == "pm_getPaymasterData" else ""
        out.append(
            f"| {r['method']} | {r['clients']} | {r['rps']:,.0f} | {r['rps_min']:,.0f}-{r['rps_max']:,.0f} "
            f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {_fmt(r['server_cpu_us_per_req'], '.0f')} "
            f"| {_fmt(r['server_cpu_cores'], '.2f')} | {_fmt(r['wrk_cpu_cores'], '.2f')} "
            f"| {_fmt(r['other_cpu_cores'], '.2f')} | {_fmt(r.get('steal_cores'), '.2f')} "
            f"| {r['failures']} | {ledger} |"
        )
    return "\n".join(out)


def side_by_side(label: str, results: dict[str, list[dict[str, Any]]], clients: list[int]) -> str:
    """Medians per server and client count, servers side by side (``pipeline.py``, ``e2e_signers.py``)."""
    lines = [
        f"| {label} | clients | req/s | p50 ms | p99 ms | server CPU µs/req | other cores | failures | ledger |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for count in clients:
        for name, runs_all in results.items():
            runs = [r for r in runs_all if r["clients"] == count]
            ledger = "ok" if all(r.get("ledger_ok") for r in runs) else "MISMATCH"
            lines.append(
                f"| {name} | {count} | {median(runs, 'rps'):,.0f} | {median(runs, 'p50_ms'):.2f} "
                f"| {median(runs, 'p99_ms'):.2f} | {median(runs, 'server_cpu_us_per_req'):.0f} "
                f"| {median(runs, 'other_cpu_cores'):.2f} | {sum(r['failures'] for r in runs)} | {ledger} |"
            )
    return "\n".join(lines)


def write_report(out: Path | None, text: str, runs: int, duration: int) -> None:
    """Print ``text``; with ``out``, also write it under a line naming the time and the command."""
    print()
    print(text)
    if out is None:
        return
    command = " ".join(shlex.quote(arg) for arg in sys.argv)
    when = datetime.now(UTC).isoformat(timespec="seconds")
    header = f"{when}, `python {command}`, {runs} run(s) x {duration} s, wrk -t1, medians\n\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + text + "\n")
    print(f"wrote {out}")


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), platform.processor())
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout.split("\n")[0]
    commit = subprocess.run(
        ["git", "-C", str(BENCH_DIR), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(BENCH_DIR.parent), "status", "--porcelain", "--", "anode"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    spec = importlib.util.find_spec("anode")
    return {
        "anode": str(Path(spec.origin).parent) if spec and spec.origin else None,
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": wrk_version.strip(),
        "git_commit": commit,
        "anode_uncommitted_files": len(dirty),
        "load_average_at_start": os.getloadavg(),
    }


def progress(result: dict[str, Any]) -> str:
    """One line per wrk run, printed while the matrix runs."""
    line = (
        f"{SHORT[result['method']]:8} c={result['clients']:<3} {result['rps']:8,.0f} req/s"
        f"  p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms"
        f"  server {_fmt(result['server_cpu_us_per_req'], '.0f')} µs/req"
        f"  other {_fmt(result['other_cpu_cores'], '.2f')} cores (steal {result.get('steal_cores', 0.0):.2f})"
        f"  failures {result['failures']}"
    )
    if "ledger_rows_added" in result:
        line += f"  ledger +{result['ledger_rows_added']} {'ok' if result['ledger_ok'] else 'MISMATCH'}"
    return line


def run_matrix(server: Server, args: argparse.Namespace) -> list[dict[str, Any]]:
    sample_requests(server)
    salt = int(time.time()) & 0x7FFFFFFF
    for method in args.methods if args.warmup > 0 else ():  # warm-up: caches, SQLite pages; not recorded
        wrk_run(server, method, 16, args.warmup, args.threads, salt)
        salt += 1
    runs = []
    total = args.runs * len(args.clients) * len(args.methods)
    for run_index in range(args.runs):
        for clients in args.clients:
            for method in args.methods:
                salt += 1
                waited = wait_for_quiet(args.quiet_below, args.quiet_wait) if args.quiet_below else 0.0
                result = wrk_run(server, method, clients, args.duration, args.threads, salt)
                result["run"] = run_index + 1
                result["waited_for_quiet_s"] = round(waited, 1)
                runs.append(result)
                print(f"  [{len(runs):2}/{total}] {progress(result)}", flush=True)
                if result["failures"] and result["sample_error"]:
                    print(f"      first failure: {result['sample_error']}")
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 run x 3 s per point, 1 s warm-up")
    parser.add_argument("--runs", type=int, help="runs per point (default 3)")
    parser.add_argument("--duration", type=int, help="seconds per run (default 10)")
    parser.add_argument("--warmup", type=int, help="seconds of unrecorded warm-up per method (default 2)")
    parser.add_argument("--clients", type=int, nargs="+", default=list(CLIENTS), help="connection counts")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (capped at the client count)")
    parser.add_argument("--workers", type=int, default=1, help="server processes (anode serve --workers)")
    parser.add_argument("--url", help="benchmark a running server (its JSON-RPC URL) instead of a fresh sandbox")
    parser.add_argument("--database", type=Path, help="with --url: its SQLite ledger file, for the ledger check")
    parser.add_argument("--server-pid", type=int, help="with --url: the server's pid, for CPU accounting")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "latest", help="results path prefix")
    parser.add_argument("--keep", action="store_true", help="keep the sandbox's temporary directory")
    parser.add_argument(
        "--quiet-below",
        type=float,
        metavar="CORES",
        help="before each run, wait until the rest of the machine uses less than CORES (shared machines)",
    )
    parser.add_argument("--quiet-wait", type=float, default=30.0, help="longest wait for quiet, seconds (default 30)")
    parser.add_argument("--enforce-targets", action="store_true", help="exit 1 when a target at 16 clients is missed")
    args = parser.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    args.duration = args.duration or (3 if args.quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")

    started = time.monotonic()
    info = machine()
    print(f"{info['nproc']} x {info['cpu']}, load average {info['load_average_at_start']}, {info['wrk']}")
    print(f"anode from {info['anode']}, commit {info['git_commit']} ({info['anode_uncommitted_files']} files changed)")
    if args.url:
        url = args.url if args.url.rstrip("/").endswith("/rpc") else args.url.rstrip("/") + "/api/v1/rpc"
        if args.database is None:
            print("no --database: the ledger check is skipped")
        runs = run_matrix(Server(url, args.database, args.server_pid), args)
    else:
        with sandbox(args.keep, args.workers) as server:
            runs = run_matrix(server, args)
            assert server.database is not None
            rows, distinct = ledger_rows(server.database)
            if rows != distinct:
                raise SystemExit(f"ledger: {rows} rows but only {distinct} distinct userOpHashes")
            print(f"ledger: {rows} rows, every userOpHash distinct")

    rows = summarise(runs)
    table = markdown(rows)
    checks = verdicts(rows)
    command = "python bench/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print()
    print(table)
    print()
    for line in checks:
        print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command.strip(),
        "settings": {
            "runs": args.runs,
            "duration_s": args.duration,
            "wrk_threads": args.threads,
            "quiet_below_cores": args.quiet_below,
        },
        "machine": info,
        "wall_seconds": round(time.monotonic() - started, 1),
        "summary": rows,
        "targets": checks,
        "runs": runs,
    }
    args.out.with_suffix(".json").write_text(json.dumps(document, indent=2) + "\n")
    header = (
        f"{document['date']}, `{document['command']}`, anode {info['anode']} at {info['git_commit']}, "
        f"{info['nproc']} x {info['cpu']}, "
        f"{args.runs} run(s) x {args.duration:g} s per point, wrk -t{args.threads}, medians\n\n"
    )
    args.out.with_suffix(".md").write_text(header + table + "\n\n" + "\n".join(f"- {c}" for c in checks) + "\n")
    print(f"\nwrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')} ({document['wall_seconds']} s)")
    failed = any(r["failures"] for r in rows) or not all(r["ledger_ok"] for r in rows)
    if args.enforce_targets and any(line.endswith("MISSED") for line in checks):
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
