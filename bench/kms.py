"""Dual-signature signatures per second: ``anode kms serve`` with PKCS#11 custody (SoftHSM2).

    python bench/kms.py --clients 16 --per-client 200 [--database postgresql://…]

One real KMS process (a SoftHSM2 token in a temporary directory, a SQLite file unless
``--database`` is given) on anvil with the sandbox contracts. Each client is a wallet with its own
account (its owner key made in the token) and its own passkey (the tests' software
authenticator). Before the clock starts, each client prepares its operations: the KMS's
challenge for each userOpHash, the passkey's assertion over it (counter order) and the
paymaster's EIP-712 approval. Timed: only ``POST /kms/sign-user-operation``, each client sending
its requests one after the other, all clients at once. Every request does the whole check: one
P-256 verification (the assertion), one secp256k1 recovery (the approval), the nonce, challenge and
counter taken in the store, one HSM signature, one audit record. Every answer must be a signature.

The timed requests go out over one keep-alive HTTP/1.1 connection per client, written from bytes
prepared beforehand (httpx cost ~2 ms of this process's CPU per request, as much as the KMS
itself, on the same two cores); the load generator's own CPU per request is printed beside the KMS's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anode.devchain.anvil import DEFAULT_ACCOUNT_KEYS, Anvil
from anode.devchain.deploy import deploy_sandbox
from anode.userop.hashing import user_op_hash
from anode.userop.models import parse_user_op
from anode.userop.versions import EntryPointVersion
from tests.kms.authenticator import SoftAuthenticator
from tests.kms.harness import ADMIN_HEADERS, PAYMASTER, KmsProcess, Prepared, Wallet, full_rpc_op, kms_config
from tests.signers.softhsm import softhsm_token
from tests.support.onchain import UserOp


class Connection:
    """One keep-alive HTTP/1.1 connection sending prepared requests (each answer read whole)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        return cls(*await asyncio.open_connection(host, port))

    async def send(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


def request_bytes(host: str, prepared: Prepared) -> bytes:
    body = orjson.dumps(prepared.body)
    headers = {"host": host, "content-type": "application/json", "content-length": str(len(body)), **prepared.headers}
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"POST /kms/sign-user-operation HTTP/1.1\r\n{lines}\r\n".encode() + body


def local_op_hash(wallet: Wallet) -> Callable[[UserOp], bytes]:
    """The userOpHash computed here (the KMS checks it against its own: a wrong one is refused)."""
    version = EntryPointVersion(wallet.version)
    entry_point = bytes.fromhex(wallet.entry_point[2:])

    def op_hash(op: UserOp) -> bytes:
        parsed = parse_user_op(full_rpc_op(op, wallet.version), version)
        return user_op_hash(parsed, version, entry_point, wallet.deployment.chain_id)

    return op_hash


async def prepare(wallet: Wallet, passkey: SoftAuthenticator, count: int) -> list[Prepared]:
    await wallet.create()
    await wallet.register(passkey)
    wallet.op_hash = local_op_hash(wallet)  # type: ignore[method-assign]
    base = wallet.new_op()
    return [await wallet.prepare(passkey, replace(base, nonce=i)) for i in range(count)]


async def run(clients: int, per_client: int, database: str | None) -> None:
    from eth_account import Account

    with tempfile.TemporaryDirectory(prefix="anode-kms-bench-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "softhsm").mkdir()
        with softhsm_token(tmp / "softhsm") as hsm, Anvil() as anvil:
            deployment = deploy_sandbox(anvil.rpc_url, [Account.from_key(DEFAULT_ACCOUNT_KEYS[9]).address])
            url = database or f"sqlite:///{tmp / 'kms.db'}"
            config = kms_config(tmp, anvil, deployment, url, hsm, log_level="WARNING")
            process = KmsProcess(tmp, config, hsm.env).start()
            try:
                limits = httpx.Limits(max_connections=clients * 2)
                async with httpx.AsyncClient(base_url=process.url, timeout=60, limits=limits) as client:
                    added = await client.post("/admin/authorized-signers", json={"address": PAYMASTER},
                                              headers=ADMIN_HEADERS)  # fmt: skip
                    assert added.status_code == 200, added.text
                    run = os.urandom(4).hex()  # a database given with --database keeps earlier runs' accounts
                    wallets = [Wallet(client, anvil, deployment, "v0.7", f"bench-{run}-{i}") for i in range(clients)]
                    passkeys = [SoftAuthenticator() for _ in range(clients)]
                    started = time.perf_counter()
                    batches = await asyncio.gather(
                        *(prepare(w, p, per_client) for w, p in zip(wallets, passkeys, strict=True))
                    )
                    print(f"prepared {clients * per_client} operations in {time.perf_counter() - started:.1f} s")
                    latencies: list[float] = []
                    host = f"127.0.0.1:{process.port}"
                    requests = [[request_bytes(host, prepared) for prepared in batch] for batch in batches]
                    connections = [await Connection.open("127.0.0.1", process.port) for _ in range(clients)]

                    async def send(connection: Connection, batch: list[bytes]) -> None:
                        for request in batch:
                            began = time.perf_counter()
                            status, reply = await connection.send(request)
                            latencies.append(time.perf_counter() - began)
                            assert status == 200 and orjson.loads(reply)["success"] is True, reply

                    cpu_before, own_before = server_cpu(process), time.process_time()
                    started = time.perf_counter()
                    await asyncio.gather(*(send(c, b) for c, b in zip(connections, requests, strict=True)))
                    elapsed = time.perf_counter() - started
                    cpu, own = server_cpu(process) - cpu_before, time.process_time() - own_before
                    for connection in connections:
                        connection.close()
            finally:
                process.stop()
    latencies.sort()
    count = len(latencies)
    print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; store: {url.split(':')[0]}")
    print(f"{count} dual-signature signatures, {clients} clients: {count / elapsed:.0f}/s, "
          f"p50 {latencies[count // 2] * 1000:.1f} ms, p99 {latencies[int(count * 0.99)] * 1000:.1f} ms, "
          f"KMS CPU {cpu / count * 1e6:.0f} µs per signature, "
          f"load generator CPU {own / count * 1e6:.0f} µs per request")  # fmt: skip


def server_cpu(process: KmsProcess) -> float:
    """CPU seconds (user + system) the KMS process has used so far."""
    assert process._process is not None
    fields = Path(f"/proc/{process._process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--per-client", type=int, default=200)
    parser.add_argument("--database", help="a PostgreSQL URL (default: a SQLite file)")
    args = parser.parse_args()
    asyncio.run(run(args.clients, args.per_client, args.database))


if __name__ == "__main__":
    main()
