"""Signatures per second and p50/p99 latency of every signer backend, one at a time and 16 in flight.

    python bench/signers.py                          # every backend, 3 runs each (~2-3 min)
    python bench/signers.py --backends local remote --count 500 --runs 1

Backends: ``local``, ``keystore``, ``mnemonic`` (key in process memory), ``pkcs11`` (a SoftHSM2
token in a temporary directory, ``tests/signers/softhsm.py``), ``aws_kms`` (moto's KMS as a real
HTTP server in this process with its ``MessageType=DIGEST`` handling corrected,
``tests/signers/moto_kms.py``) and ``remote`` (``anode keyserver serve`` as a separate process
holding a local key, ``tests/signers/keyserver_process.py``: the figure is the HTTP round trip
plus the key server's own work). Settings go through ``signer_settings``/``build_signer`` as in
``anode serve``. A backend whose dependency is missing is skipped with the reason printed.

For each backend and run: a warm-up, then (a) sequential: ``--count`` signatures awaited one at a
time, (b) concurrent: as many signatures with 16 in flight (16 workers on one event loop). Each
signature is of a fresh random 32-byte digest; latency is per call (``perf_counter`` around the
await); signatures/s is the count over the wall time of the phase. Every 40th signature (at least
one per phase) is checked to be a canonical signature of its digest recovering to the signer's
address (``tests/support/signer_contract.assert_valid``). Runs are interleaved (run 1 of every
backend, then run 2, ...) so that noise from other work on the shared machine spreads over all
backends; the table quotes the median over runs of each figure.

Writes ``bench/results/signers.md`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import secrets
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # for tests.signers.* (the test helpers this reuses)

from anode.signers.base import Signer  # noqa: E402
from anode.signers.registry import build_signer, signer_settings  # noqa: E402
from tests.support.signer_contract import assert_valid  # noqa: E402

BACKENDS = ["local", "keystore", "mnemonic", "pkcs11", "aws_kms", "remote"]
#: sequential (and concurrent) signatures per run when --count is not given
DEFAULT_COUNT = {"local": 2000, "keystore": 2000, "mnemonic": 2000, "pkcs11": 2000, "aws_kms": 1000, "remote": 2000}
CONCURRENCY = 16
WARMUP = 50
CHECK_EVERY = 40

KEY = "0x" + "be9c4f1e" * 8
MNEMONIC = "legal winner thank year wave sausage worth useful legal winner thank yellow"
KEYSTORE_PASSWORD = "bench-keystore-password"
KEYSERVER_TOKEN = "bench-keyserver-token-0c4d"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIABENCHANODE0KMS99",
    "AWS_SECRET_ACCESS_KEY": "benchSecretAccessKey/0123456789abcdefXYZ",
    "AWS_EC2_METADATA_DISABLED": "true",
}
REGION = "eu-central-1"


class Skip(Exception):
    """A backend that cannot run here; the message says why."""


# --- backend set-up: each yields the ``signer:`` mapping, and keeps what it started alive -------


@contextmanager
def setup_local(tmp: Path) -> Iterator[dict[str, Any]]:
    yield {"type": "local", "private_key": KEY}


@contextmanager
def setup_keystore(tmp: Path) -> Iterator[dict[str, Any]]:
    from tests.signers.keyserver_process import write_keystore

    path = write_keystore(tmp, "bench", KEY, KEYSTORE_PASSWORD)
    os.environ["BENCH_KEYSTORE_PASSWORD"] = KEYSTORE_PASSWORD
    yield {"type": "keystore", "keystore_path": str(path), "password_env": "BENCH_KEYSTORE_PASSWORD"}


@contextmanager
def setup_mnemonic(tmp: Path) -> Iterator[dict[str, Any]]:
    yield {"type": "mnemonic", "mnemonic": MNEMONIC, "path": "m/44'/60'/0'/0/3"}


@contextmanager
def setup_pkcs11(tmp: Path) -> Iterator[dict[str, Any]]:
    from tests.signers.softhsm import available

    reason = available()
    if reason is not None:
        raise Skip(reason)
    from anode.signers.pkcs11 import Settings, generate_key
    from tests.signers.softhsm import softhsm_token

    (tmp / "softhsm").mkdir()
    with softhsm_token(tmp / "softhsm") as hsm:
        config = hsm.signer_config("bench-key")
        generate_key(Settings.model_validate(config))
        yield config


@contextmanager
def setup_aws_kms(tmp: Path) -> Iterator[dict[str, Any]]:
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError as exc:
        raise Skip(f"boto3/moto[server] is not installed ({exc})") from None
    import pytest

    from anode.signers.aws_kms import Settings, generate_key
    from tests.signers.moto_kms import KmsServer

    env = {**AWS_ENV, "AWS_CONFIG_FILE": str(tmp / "aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "aws-cred")}
    with pytest.MonkeyPatch.context() as patch, KmsServer() as kms:
        for name, value in env.items():
            patch.setenv(name, value)
        config = {"type": "aws_kms", "key_id": "alias/anode-bench", "region": REGION, "endpoint_url": kms.endpoint_url}
        generate_key(Settings.model_validate(config))
        yield config


@contextmanager
def setup_remote(tmp: Path) -> Iterator[dict[str, Any]]:
    from tests.signers.keyserver_process import KeyserverProcess

    directory = tmp / "keyserver"
    directory.mkdir()
    config = {
        "keys": [{"id": "paymaster", "signer": {"type": "local", "private_key": KEY}, "allowed_callers": ["anode"]}],
        "tokens": [{"id": "anode", "token": KEYSERVER_TOKEN}],
        "audit_log": str(directory / "audit.jsonl"),
    }
    process = KeyserverProcess(directory, config).start()
    try:
        yield {"type": "remote", "url": process.url, "token": KEYSERVER_TOKEN, "key_id": "paymaster"}
    finally:
        process.stop()


SETUPS: dict[str, Callable[[Path], Any]] = {
    "local": setup_local,
    "keystore": setup_keystore,
    "mnemonic": setup_mnemonic,
    "pkcs11": setup_pkcs11,
    "aws_kms": setup_aws_kms,
    "remote": setup_remote,
}


# --- measurement ---------------------------------------------------------------------------------


@dataclass
class Phase:
    rate: list[float] = field(default_factory=list)  # signatures/s, one per run
    p50: list[float] = field(default_factory=list)  # ms
    p99: list[float] = field(default_factory=list)  # ms


@dataclass
class Result:
    backend: str
    count: int
    sequential: Phase = field(default_factory=Phase)
    concurrent: Phase = field(default_factory=Phase)
    checked: int = 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]  # nearest rank


async def sign_checked(signer: Signer, index: int, latencies: list[float]) -> int:
    digest = secrets.token_bytes(32)
    start = time.perf_counter()
    signed = await signer.unsafe_sign_hash(digest)
    latencies.append(time.perf_counter() - start)
    if index % CHECK_EVERY == 0:
        assert_valid(signed, digest, signer.address)
        return 1
    return 0


async def sequential(signer: Signer, count: int) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    checked = 0
    start = time.perf_counter()
    for index in range(count):
        checked += await sign_checked(signer, index, latencies)
    return count / (time.perf_counter() - start), latencies, checked


async def concurrent(signer: Signer, count: int) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    counter = iter(range(count))
    checked = 0

    async def worker() -> None:
        nonlocal checked
        for index in counter:
            done = await sign_checked(signer, index, latencies)  # not `checked += await …`: that loses updates
            checked += done

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return count / (time.perf_counter() - start), latencies, checked


def record(phase: Phase, rate: float, latencies: list[float]) -> None:
    phase.rate.append(rate)
    phase.p50.append(percentile(latencies, 50) * 1000)
    phase.p99.append(percentile(latencies, 99) * 1000)


async def measure(signers: dict[str, Signer], results: dict[str, Result], runs: int) -> None:
    for signer in signers.values():  # warm-up: connections, sessions, code paths
        await sequential(signer, WARMUP)
        await concurrent(signer, CONCURRENCY * 4)
    for run in range(1, runs + 1):
        for name, signer in signers.items():
            result = results[name]
            rate, latencies, checked = await sequential(signer, result.count)
            record(result.sequential, rate, latencies)
            result.checked += checked
            rate, latencies, checked = await concurrent(signer, result.count)
            record(result.concurrent, rate, latencies)
            result.checked += checked
            print(
                f"  run {run}/{runs} {name:9} sequential {result.sequential.rate[-1]:9.1f}/s "
                f"p50 {result.sequential.p50[-1]:7.3f} ms p99 {result.sequential.p99[-1]:7.3f} ms | "
                f"x{CONCURRENCY} {result.concurrent.rate[-1]:9.1f}/s p50 {result.concurrent.p50[-1]:7.3f} ms "
                f"p99 {result.concurrent.p99[-1]:7.3f} ms",
                flush=True,
            )
    for signer in signers.values():
        await signer.aclose()


# --- report --------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def table(results: list[Result], skipped: dict[str, str], runs: int) -> str:
    def med(values: list[float], digits: int) -> str:
        return f"{statistics.median(values):,.{digits}f}"

    lines = [
        f"| backend | signatures/run | sequential sig/s | seq p50 ms | seq p99 ms "
        f"| x{CONCURRENCY} sig/s | x{CONCURRENCY} p50 ms | x{CONCURRENCY} p99 ms | checked |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        s, c = r.sequential, r.concurrent
        lines.append(
            f"| {r.backend} | {r.count} | {med(s.rate, 0)} | {med(s.p50, 3)} | {med(s.p99, 3)} "
            f"| {med(c.rate, 0)} | {med(c.p50, 3)} | {med(c.p99, 3)} | {r.checked} |"
        )
    for name, reason in skipped.items():
        lines.append(f"| {name} | skipped: {reason} | | | | | | | |")
    lines.append("")
    lines.append(
        f"Medians over {runs} interleaved runs per backend. 'checked': signatures verified to recover to the "
        "signer's address (every 40th, all runs)."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, help="signatures per phase and run (default 2000; aws_kms 1000)")
    parser.add_argument(
        "--backends",
        nargs="+",
        choices=BACKENDS,
        default=BACKENDS,
        metavar="NAME",
        help=f"subset of {', '.join(BACKENDS)}",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per backend; the table quotes medians (default 3)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "signers.md")
    args = parser.parse_args(argv)
    command = "python " + shlex.join(["bench/signers.py", *(sys.argv[1:] if argv is None else argv)])

    results: dict[str, Result] = {}
    skipped: dict[str, str] = {}
    signers: dict[str, Signer] = {}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="anode-bench-signers-")))
        for name in args.backends:
            try:
                config = stack.enter_context(SETUPS[name](tmp))
                signers[name] = build_signer(signer_settings(config))
            except Skip as exc:
                skipped[name] = str(exc)
                print(f"skipping {name}: {exc}", flush=True)
                continue
            results[name] = Result(name, args.count or DEFAULT_COUNT[name])
            print(f"{name}: {signers[name].address} ({signers[name].backend})", flush=True)
        asyncio.run(measure(signers, results, args.runs))

    report = table(list(results.values()), skipped, args.runs)
    print()
    print(report)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = [
        "# Signer backends: signatures/s and latency",
        "",
        f"- date: {now}",
        f"- command: `{command}`",
        f"- machine: {os.cpu_count()} CPUs (nproc), {cpu_model()}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}; shared machine, load average at the end "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"- method: per backend and run, {WARMUP} warm-up signatures, then N random 32-byte digests signed "
        f"one at a time (sequential), then N with {CONCURRENCY} in flight on one event loop; latency is per "
        "call, sig/s is N over the phase's wall time. `remote` is `anode keyserver serve` (a separate process, "
        "local key) over HTTP on 127.0.0.1; `aws_kms` is moto's KMS server in the benchmark's own process "
        "(its DIGEST handling corrected), so it measures moto + boto3 sharing one interpreter, not AWS; "
        "`pkcs11` is SoftHSM2. local/keystore/mnemonic sign synchronously inside the coroutine, so 16 in "
        "flight cannot overlap for them.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(header) + "\n" + report + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
