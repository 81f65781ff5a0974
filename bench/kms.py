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
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anode.devchain.anvil import DEFAULT_ACCOUNT_KEYS, Anvil
from anode.devchain.deploy import deploy_sandbox
from tests.kms.authenticator import SoftAuthenticator
from tests.kms.harness import ADMIN_HEADERS, PAYMASTER, KmsProcess, Prepared, Wallet, kms_config
from tests.signers.softhsm import softhsm_token


async def prepare(wallet: Wallet, passkey: SoftAuthenticator, count: int) -> list[Prepared]:
    await wallet.create()
    await wallet.register(passkey)
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
                    wallets = [Wallet(client, anvil, deployment, "v0.7", f"bench-{i}") for i in range(clients)]
                    passkeys = [SoftAuthenticator() for _ in range(clients)]
                    started = time.perf_counter()
                    batches = await asyncio.gather(
                        *(prepare(w, p, per_client) for w, p in zip(wallets, passkeys, strict=True))
                    )
                    print(f"prepared {clients * per_client} operations in {time.perf_counter() - started:.1f} s")
                    latencies: list[float] = []

                    async def send(wallet: Wallet, batch: list[Prepared]) -> None:
                        for prepared in batch:
                            began = time.perf_counter()
                            reply = await wallet.sign(prepared)
                            latencies.append(time.perf_counter() - began)
                            assert reply.status_code == 200, reply.text

                    cpu_before = server_cpu(process)
                    started = time.perf_counter()
                    await asyncio.gather(*(send(w, b) for w, b in zip(wallets, batches, strict=True)))
                    elapsed = time.perf_counter() - started
                    cpu = server_cpu(process) - cpu_before
            finally:
                process.stop()
    latencies.sort()
    count = len(latencies)
    print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; store: {url.split(':')[0]}")
    print(f"{count} dual-signature signatures, {clients} clients: {count / elapsed:.0f}/s, "
          f"p50 {latencies[count // 2] * 1000:.1f} ms, p99 {latencies[int(count * 0.99)] * 1000:.1f} ms, "
        f"KMS CPU {cpu / count * 1e6:.0f} µs per signature")  # fmt: skip


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
