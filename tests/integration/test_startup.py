"""``anode serve`` as an operator starts it, against the real contracts on anvil: what refuses to
start, and how it says so.

A refusal is one line, ``anode: <what to fix>``, on stderr and exit status 2: no traceback, no
aiohttp "Unclosed client session" noise (every connection opened for the checks is closed). An
open server (no API keys) starts, but says so loudly at start-up.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from anode.devchain.anvil import Anvil, free_port
from anode.devchain.deploy import Deployment
from tests.support.server import _wait_ready
from tests.support.wallet import paymaster_of, server_config

OPEN_SERVER_WARNING = "NO API KEYS CONFIGURED"
REVERTED = "its getHash() reverted (node refused eth_call: execution reverted)"


def write_config(tmp_path: Path, tree: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"database_url": f"sqlite:///{tmp_path / 'anode.db'}", **tree}))
    return path


def serve_command(config: Path, port: int, workers: int | None = 1) -> list[str]:
    """``anode serve``; ``workers=None``: no ``--workers`` (the file's ``server.workers`` decides)."""
    command = [sys.executable, "-m", "anode.cli", "serve", "--config", str(config), "--port", str(port)]
    return command if workers is None else [*command, "--workers", str(workers)]


def refused(tmp_path: Path, tree: dict[str, Any], workers: int | None = 1) -> str:
    """Run ``anode serve`` with ``tree``, expect it to refuse; return its one ``anode:`` line."""
    done = subprocess.run(
        serve_command(write_config(tmp_path, tree), free_port(), workers), capture_output=True, text=True, timeout=60
    )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output, output
    assert "Unclosed client session" not in output, output
    assert "Unclosed connector" not in output, output
    lines = [line for line in done.stderr.splitlines() if line.startswith("anode: ")]
    assert len(lines) == 1, output
    return lines[0]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_node_on_another_chain_refuses_to_start(
    tmp_path: Path, anvil: Anvil, deployment: Deployment, workers: int
) -> None:
    tree = server_config(anvil, deployment, "0x" + "5a" * 32, [("verifying", "v0.7")])
    tree["chains"][0]["chain_id"] = 1
    line = refused(tmp_path, tree, workers)
    assert line == f"anode: chain 1: the node at {anvil.rpc_url} reports chain id {deployment.chain_id}"


@pytest.mark.parametrize(
    ("deployed", "declared", "version", "reason"),
    [
        # each family's contract reverts the other's getHash call
        ("verifying", "singleton", "v0.7", REVERTED),
        ("verifying", "singleton", "v0.6", REVERTED),
        ("singleton", "verifying", "v0.7", REVERTED),
        ("singleton", "verifying", "v0.6", REVERTED),
    ],
)
def test_a_paymaster_declared_as_the_wrong_contract_refuses_to_start(
    tmp_path: Path, anvil: Anvil, deployment: Deployment, deployed: str, declared: str, version: str, reason: str
) -> None:
    address = paymaster_of(deployment, deployed, version)
    tree = server_config(anvil, deployment, "0x" + "5a" * 32, [(deployed, version)])
    tree["chains"][0]["paymasters"][0]["contract"] = declared
    assert refused(tmp_path, tree) == (
        f"anode: paymaster {address} on chain {deployment.chain_id} does not hash like a "
        f"`contract: {declared}` paymaster for EntryPoint {version}: {reason}. Check `contract:` for this "
        "paymaster (singleton or verifying) and its address (is it the contract you think it is?)"
    )


def test_a_paymaster_address_without_code_refuses_to_start(
    tmp_path: Path, anvil: Anvil, deployment: Deployment
) -> None:
    tree = server_config(anvil, deployment, "0x" + "5a" * 32, [("verifying", "v0.7")])
    tree["chains"][0]["paymasters"][0]["address"] = deployment.owner  # an account, not a contract
    line = refused(tmp_path, tree)
    assert f"anode: paymaster {deployment.owner} on chain {deployment.chain_id} does not hash like a" in line
    assert "its getHash() returned nothing (is a contract deployed at this address on this chain?)" in line


def started_log(tmp_path: Path, tree: dict[str, Any]) -> str:
    """Start ``anode serve`` with ``tree``, wait until it answers, stop it; return what it logged."""
    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            serve_command(write_config(tmp_path, tree), port), stdout=log, stderr=subprocess.STDOUT, env=os.environ
        )
    try:
        _wait_ready(f"http://127.0.0.1:{port}", process, log_path)
    finally:
        process.terminate()
        process.wait(timeout=10)
    text = log_path.read_text()
    assert "Application shutdown complete." in text, text  # uvicorn then re-raises the SIGTERM
    assert "Traceback" not in text and "Unclosed client session" not in text, text
    return text


def test_an_open_server_warns_loudly_at_start_up(tmp_path: Path, anvil: Anvil, deployment: Deployment) -> None:
    """Also the control for the refusals above: the same paymasters, declared right, start."""
    pairs = [("verifying", "v0.7"), ("singleton", "v0.6"), ("singleton", "v0.8")]
    tree = server_config(anvil, deployment, "0x" + "5a" * 32, pairs)
    assert "auth" not in tree  # no api_keys, no admin_keys, no stored keys
    log = started_log(tmp_path, tree)
    warnings = [line for line in log.splitlines() if OPEN_SERVER_WARNING in line]
    assert len(warnings) == 1, log
    assert " WARNING anode: " in warnings[0]
    assert "anyone who can reach this server can spend the paymaster deposit" in warnings[0]


# -- settings accepted and then without effect: refused before anything starts -----------------

BUDGET = {"id": "budget", "name": "a budget", "type": "global", "rate_limits": [{"type": "request", "limit": 10}]}


def test_policies_without_the_policy_engine_refuse_to_start(
    tmp_path: Path, anvil: Anvil, deployment: Deployment
) -> None:
    tree = server_config(anvil, deployment, "0x" + "5a" * 32, [("verifying", "v0.7")])
    tree["policies"] = [BUDGET]  # the default pipeline (the signer alone) would never enforce it
    line = refused(tmp_path, tree)
    assert line.startswith("anode: policies: are configured, but pipeline.modules has no enabled policy_engine")
    assert "add `- name: policy_engine` to pipeline.modules" in line


@pytest.mark.parametrize("workers_from", ["--workers", "server.workers"])
def test_a_memory_limiter_with_several_workers_refuses_to_start(
    tmp_path: Path, anvil: Anvil, deployment: Deployment, workers_from: str
) -> None:
    tree = server_config(anvil, deployment, "0x" + "5a" * 32, [("verifying", "v0.7")])
    engine = {"name": "policy_engine", "config": {"limiter": "memory"}}
    tree["pipeline"] = {"modules": [engine, {"name": "paymaster_signer"}]}
    if workers_from == "server.workers":
        tree["server"] = {"workers": 2}
        line = refused(tmp_path, tree, workers=None)
    else:
        line = refused(tmp_path, tree, workers=2)
    assert line.startswith("anode: policy_engine.config.limiter is memory, but 2 worker processes would each keep")
