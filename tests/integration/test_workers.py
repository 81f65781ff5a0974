"""``anode serve --workers 2``: two processes share the port, the ledger and the audit chain.

Both processes serve requests (each reports its own pid and counts in ``GET /metrics``), every
signed operation is recorded exactly once, and the hash chain the two processes append to stays
unbroken (``anode audit verify``).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from anode.config import worker_count
from anode.devchain.anvil import Anvil
from anode.devchain.deploy import Deployment
from tests.support.server import running_server
from tests.support.wallet import server_config

REQUESTS = 120
#: fresh connections to ``/metrics`` before giving up on meeting both workers (each is a coin toss)
SCRAPES = 200
_PID = re.compile(r'^anode_worker_info\{pid="(\d+)"\} 1\.0$', re.MULTILINE)
_SIGNED = re.compile(r'^anode_sponsorships_total\{method="pm_getPaymasterData",result="ok"\} (\d+)\.0$', re.MULTILINE)


def _signed_per_worker(url: str, workers: int = 2) -> dict[int, int]:
    """Each worker's own count of signed pm_getPaymasterData calls, by its pid, as its
    ``/metrics`` says; every scrape is a new connection, which any worker may accept."""
    counts: dict[int, int] = {}
    for _ in range(SCRAPES * workers // 2):
        text = httpx.get(f"{url}/metrics", headers={"connection": "close"}).text
        (pid,) = _PID.findall(text)
        signed = _SIGNED.findall(text)
        counts[int(pid)] = int(signed[0]) if signed else 0
        if len(counts) == workers:
            break
    return counts


async def _sponsor_many(url: str, entry_point: str, chain_id: int) -> list[dict[str, Any]]:
    # a new connection per call: the workers take turns accepting them (kept-alive connections
    # opened in one burst can all land on the worker that happens to be awake)
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def one(nonce: int) -> dict[str, Any]:
            op = {
                "sender": "0x" + "c3" * 20,
                "nonce": hex(nonce),
                "callData": "0x",
                "callGasLimit": "0x10000",
                "verificationGasLimit": "0x10000",
                "preVerificationGas": "0x5000",
                "maxFeePerGas": "0x3b9aca00",
                "maxPriorityFeePerGas": "0x1",
            }
            body = {
                "jsonrpc": "2.0",
                "id": nonce,
                "method": "pm_getPaymasterData",
                "params": [op, entry_point, hex(chain_id), {}],
            }
            reply: dict[str, Any] = (await client.post(f"{url}/api/v1/rpc", json=body)).json()
            return reply

        return await asyncio.gather(*(one(n) for n in range(REQUESTS)))


def test_two_workers_record_every_signature_on_one_audit_chain(
    anvil: Anvil, deployment: Deployment, paymaster_key: str, tmp_path: Path
) -> None:
    config = server_config(anvil, deployment, paymaster_key, [("verifying", "v0.7")])
    config["database_url"] = f"sqlite:///{tmp_path / 'shared.db'}"
    with running_server(config, workers=2) as url:
        # the first worker to answer /health may be alone for a while: both must be up before the load
        assert len(_signed_per_worker(url)) == 2, "the second worker never answered /metrics"
        replies = asyncio.run(_sponsor_many(url, deployment.entry_points["v0.7"], deployment.chain_id))
        assert all("result" in reply for reply in replies), [r for r in replies if "result" not in r][:1]
        per_worker = _signed_per_worker(url)
        assert len(per_worker) == 2, f"one worker answered {SCRAPES} scrapes of /metrics: {per_worker}"
        assert all(signed > 0 for signed in per_worker.values()), f"a worker signed nothing: {per_worker}"
        assert sum(per_worker.values()) == REQUESTS
        books = httpx.get(f"{url}/api/v1/operations", params={"limit": 1000}).json()
        assert books["count"] == REQUESTS
        assert len({row["user_op_hash"] for row in books["operations"]}) == REQUESTS
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    verified = subprocess.run(
        [sys.executable, "-m", "anode.cli", "audit", "verify", "--config", str(config_file)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_workers_auto_runs_one_process_per_core(
    anvil: Anvil, deployment: Deployment, paymaster_key: str, tmp_path: Path
) -> None:
    """``server.workers: auto`` (the production setting): as many processes as this host has
    usable cores, each answering on the one port."""
    cores = len(os.sched_getaffinity(0))
    assert worker_count("auto") == cores
    config = server_config(anvil, deployment, paymaster_key, [("verifying", "v0.7")])
    config["database_url"] = f"sqlite:///{tmp_path / 'shared.db'}"
    config["server"] = {"workers": "auto"}
    with running_server(config, workers="auto") as url:
        seen = _signed_per_worker(url, workers=cores)
        assert len(seen) == cores, f"{cores} cores, but /metrics showed the pids {sorted(seen)}"
