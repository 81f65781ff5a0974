"""CPU cost of one JSON-RPC call inside aNode, without network, load generator or anvil.

    python bench/inprocess.py                 # µs of CPU per call through the ASGI app, and per part
    python bench/inprocess.py --cprofile      # plus cProfile's top functions for pm_getPaymasterData
    PYTHONPATH=/tmp/copy python bench/inprocess.py   # the same against a modified copy of anode/

The app is built exactly as ``anode serve`` builds it (``wiring.build`` + ``create_app``) on a
fresh SQLite file, with a VerifyingPaymaster on the canonical v0.7 EntryPoint. No chain is needed:
v0.7 signing reads nothing on-chain. Calls go straight into the ASGI app (FastAPI, Starlette,
aNode), so the figures leave out uvicorn's HTTP parsing and the socket; ``run.py`` measures those.

CPU is ``time.process_time()``: every thread of this process, so the ledger writer's share of
each pm_getPaymasterData call is included. The per-part table times each step of ``_sign`` on its
own, to show what a request pays for.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

ENTRY_POINT_V07 = "0x0000000071727De22E5E9d8BAf0edAc6f37da032"
PAYMASTER = "0x" + "5a" * 20
CALL_DATA = "0xb61d27f6" + "00" * 12 + "ab" * 20 + "00" * 31 + "01" + "00" * 31 + "60" + "00" * 32


def user_op(nonce: int) -> dict[str, str]:
    """A distinct operation from a distinct sender for every nonce, as from many wallets."""
    return {
        "sender": "0x" + (nonce & (1 << 160) - 1).to_bytes(20, "big").hex(),
        "nonce": hex(nonce),
        "callData": CALL_DATA,
        "callGasLimit": "0x186a0",
        "verificationGasLimit": "0x186a0",
        "preVerificationGas": "0xc350",
        "maxFeePerGas": "0x3b9aca00",
        "maxPriorityFeePerGas": "0x3b9aca00",
    }


def body(method: str, nonce: int) -> bytes:
    params: list[Any] = [] if method == "pm_supportedEntryPoints" else [user_op(nonce), ENTRY_POINT_V07, "0x7a69", {}]
    return orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})


def build_app(database: Path) -> tuple[Any, Any]:
    from anode.api.app import create_app
    from anode.config import validate_settings
    from anode.wiring import build

    settings = validate_settings(
        {
            "database_url": f"sqlite:///{database}",
            "signer": {"type": "local", "private_key": "0x" + secrets.token_hex(32)},
            "chains": [
                {
                    "chain_id": 31337,
                    "rpc_url": "http://127.0.0.1:9",  # never called for v0.7 VerifyingPaymaster
                    "paymasters": [{"entry_point": ENTRY_POINT_V07, "address": PAYMASTER, "contract": "verifying"}],
                }
            ],
        }
    )
    anode = build(settings)
    app = create_app(anode, manage_lifecycle=False)
    return anode, app


async def call(app: Any, payload: bytes) -> bytes:
    """One POST /api/v1/rpc through the ASGI app; the response body."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v1/rpc",
        "raw_path": b"/api/v1/rpc",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
        "state": {},
    }
    sent = False
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return b"".join(chunks)


async def drive(app: Any, method: str, calls: int, concurrency: int, start_nonce: int) -> tuple[float, float]:
    """(CPU µs per call, wall µs per call) for ``calls`` calls, ``concurrency`` at a time."""
    nonces = iter(range(start_nonce, start_nonce + calls))

    async def worker(count: int) -> None:
        for _ in range(count):
            answer = await call(app, body(method, next(nonces)))
            if b'"result"' not in answer:
                raise SystemExit(f"{method} failed: {answer[:300]!r}")

    share = [calls // concurrency + (1 if i < calls % concurrency else 0) for i in range(concurrency)]
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(n) for n in share))
    return (time.process_time() - cpu) / calls * 1e6, (time.perf_counter() - wall) / calls * 1e6


def per_call_table(app: Any, calls: int, repeats: int) -> list[str]:
    lines = ["| method | concurrency | CPU µs/call (median) | wall µs/call |", "|---|---:|---:|---:|"]
    nonce = int(time.time() * 1000) << 24
    loop = asyncio.new_event_loop()
    try:
        for method in ("pm_supportedEntryPoints", "pm_getPaymasterStubData", "pm_getPaymasterData"):
            for concurrency in (1, 16):
                loop.run_until_complete(drive(app, method, 200, concurrency, nonce))  # warm-up
                nonce += 200
                samples = []
                for _ in range(repeats):
                    samples.append(loop.run_until_complete(drive(app, method, calls, concurrency, nonce)))
                    nonce += calls
                cpu = statistics.median(s[0] for s in samples)
                wall = statistics.median(s[1] for s in samples)
                lines.append(f"| {method} | {concurrency} | {cpu:.0f} | {wall:.0f} |")
    finally:
        loop.close()
    return lines


def _local_key(signer: Any) -> Any:
    """The in-process key behind ``signer`` (itself, or the first backend of a ``ManagedSigner``)."""
    if hasattr(signer, "sign_now"):
        return signer
    for backend in getattr(signer, "_backends", ()):
        if hasattr(backend.signer, "sign_now"):
            return backend.signer
    raise SystemExit(f"no in-process key behind {signer!r}")


def parts_table(anode: Any, database: Path) -> list[str]:
    """Each step pm_getPaymasterData takes, timed on its own (µs, best of 5 repeats).

    The code under test keeps changing: a step whose API is missing is shown as n/a.
    """
    from dataclasses import fields

    from anode.paymasters.base import dummy_signature, eip191_digest
    from anode.sponsorship import SponsorRequest
    from anode.store.ledger import SponsorshipRecord
    from anode.userop.codec import checksum, to_hex
    from anode.userop.hashing import keccak, user_op_hash
    from anode.userop.models import parse_user_op

    service = anode.service
    route = next(iter(anode.routes))
    family = route.paymaster
    key = _local_key(anode.signer)
    raw = user_op(1)
    request = SponsorRequest(raw, ENTRY_POINT_V07, "0x7a69", {}, "pm_getPaymasterData")
    _, op, window = service._prepare(request)
    placeholder = family.attach(op, family.encode(window, dummy_signature()))
    digest = family.digest(placeholder, window, route.chain_id, 0)
    signed = key.sign_now(eip191_digest(digest))
    final = family.attach(op, family.encode(window, signed.signature))
    values: dict[str, Any] = {
        "created_at": datetime.now(UTC),
        "user_op_hash": to_hex(user_op_hash(final, route.version, route.entry_point, route.chain_id)),
        "chain_id": route.chain_id,
        "entry_point": route.entry_point_hex,
        "paymaster": checksum(family.address),
        "sender": checksum(final.sender),
        "nonce": final.nonce,
        "max_gas_cost_wei": final.max_gas_cost(),
        "valid_until": window.valid_until,
        "valid_after": window.valid_after,
        "signer": signed.signer,
        "api_key_id": None,
        "method": "pm_getPaymasterData",
        "backend": "primary:local",
        "request_id": None,
    }
    record = SponsorshipRecord(**{f.name: values[f.name] for f in fields(SponsorshipRecord) if f.name in values})
    payload = body("pm_getPaymasterData", 1)
    answer = {"jsonrpc": "2.0", "id": 1, "result": {"paymaster": PAYMASTER, "paymasterData": "0x" + "ab" * 129}}
    ledger = anode.ledger
    row = asdict(record)
    uncached_checksum = getattr(checksum, "__wrapped__", checksum)
    loop = asyncio.new_event_loop()

    def insert(rows: int) -> Callable[[], None]:
        if hasattr(ledger, "_write"):  # the driver path (records in, tuples to the DB-API)
            return lambda: ledger._write([record] * rows)
        return lambda: ledger._insert([dict(row) for _ in range(rows)])

    def awaited(make: Callable[[], Any], count: int = 200) -> Callable[[], None]:
        """``count`` awaits of ``make()`` per timed call (divided out below)."""

        async def many() -> None:
            for _ in range(count):
                await make()

        return lambda: loop.run_until_complete(many())

    def recover() -> object:
        from anode.signers.ecdsa import recovered

        return recovered(signed)

    managed = getattr(anode.signer, "sign_eip191_for", None)
    steps: list[tuple[str, Callable[[], object], int, int]] = [
        ("orjson.loads(request body)", lambda: orjson.loads(payload), 1, 1),
        ("orjson.dumps(answer)", lambda: orjson.dumps(answer), 1, 1),
        ("_prepare: route, parse_user_op (pydantic), window", lambda: service._prepare(request), 1, 1),
        ("  of which parse_user_op (pydantic validate)", lambda: parse_user_op(raw, route.version), 1, 1),
        ("family.attach (pydantic model_copy)", lambda: family.attach(op, family.encode(window, b"")), 2, 1),
        ("family.digest (getHash: 3 keccak)", lambda: family.digest(placeholder, window, route.chain_id, 0), 1, 1),
        ("eip191_digest (1 keccak)", lambda: eip191_digest(digest), 1, 1),
        ("keccak of 32 bytes (anode.userop.hashing.keccak)", lambda: keccak(digest), 0, 1),
        ("key.sign_now (coincurve, recoverable)", lambda: key.sign_now(digest), 1, 1),
        ("signature recovery (signer manager's verify_signatures)", recover, 1, 1),
        (
            "signer.sign_eip191_for (manager: timeout, breaker, metrics, verify, signing)",
            awaited(lambda: managed(family.address, digest, chain_id=route.chain_id)) if managed else None,  # type: ignore[misc]
            1,
            200,
        ),
        (
            "user_op_hash (5 keccak)",
            lambda: user_op_hash(final, route.version, route.entry_point, route.chain_id),
            1,
            1,
        ),
        ("checksum(address), uncached", lambda: uncached_checksum(family.address), 4, 1),
        ("dataclasses.asdict(record)", lambda: asdict(record), 1, 1),
        ("ledger _insert + commit, 1 row (and audit chain, if any)", insert(1), 0, 1),
        ("ledger _insert + commit, 16 rows", insert(16), 0, 1),
    ]
    lines = ["| step | µs per call | calls per request |", "|---|---:|---:|"]
    for name, function, per_request, inner in steps:
        try:
            if function is None:
                raise AttributeError
            timer = timeit.Timer(function)
            number, _ = timer.autorange()
            best = f"{min(timer.repeat(5, number)) / number / inner * 1e6:.1f}"
        except (AttributeError, ImportError, TypeError):
            best = "n/a"
        lines.append(f"| {name} | {best} | {per_request or '-'} |")
    loop.close()
    with sqlite3.connect(database) as db:
        db.execute("DELETE FROM sponsorships")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cprofile", action="store_true", help="cProfile pm_getPaymasterData at concurrency 16")
    parser.add_argument("--no-parts", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="anode-inprocess-") as tmp:
        database = Path(tmp) / "ledger.db"
        anode, app = build_app(database)
        import anode as package

        print(f"anode from {Path(package.__file__).parent}, python {sys.version.split()[0]}, pid {os.getpid()}")
        print("\n".join(per_call_table(app, args.calls, args.repeats)))
        if not args.no_parts:
            print()
            print("\n".join(parts_table(anode, database)))
        if args.cprofile:
            profiler = cProfile.Profile()
            loop = asyncio.new_event_loop()
            profiler.enable()
            loop.run_until_complete(drive(app, "pm_getPaymasterData", args.calls, 16, 1 << 40))
            profiler.disable()
            loop.close()
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(30)
            print(text.getvalue())
        asyncio.run(anode.ledger.aclose())
    return 0


if __name__ == "__main__":
    sys.exit(main())
