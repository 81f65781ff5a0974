"""An unmodified ERC-7677 client gets its UserOperations sponsored by aNode and executed on chain.

``tests/js/viem_sponsor.mjs`` is what a wallet team writes with viem: ``createPaymasterClient``
pointed at aNode's ``/api/v1/rpc``, ``createBundlerClient`` pointed at Alto, then
``sendUserOperation`` and ``waitForUserOperationReceipt`` for a counterfactual SimpleAccount.
viem alone decides what to send to aNode (``pm_getPaymasterStubData``, then
``pm_getPaymasterData``, with its own userOp shapes) and Alto bundles the result into a real
``handleOps`` on anvil. For every paymaster pair the operation must succeed, be paid by the
configured paymaster's deposit, and be in aNode's ledger under the hash viem reports.
"""

from __future__ import annotations

import itertools
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from anode.devchain.alto import ANVIL_EXECUTOR_KEYS, ANVIL_UTILITY_KEY, Alto, node_binary
from anode.devchain.anvil import Anvil
from anode.devchain.deploy import Deployment
from tests.support.onchain import USER_KEY, get_deposit
from tests.support.server import running_server
from tests.support.wallet import PAIRS, paymaster_of, server_config

SCRIPT = Path(__file__).resolve().parents[1] / "js" / "viem_sponsor.mjs"
_salts = itertools.count(50_000)  # apart from the salts other test modules use


@pytest.fixture(scope="module")
def alto(anvil: Anvil, deployment: Deployment) -> Iterator[Alto]:
    entry_points = [deployment.entry_points[v] for v in ("v0.6", "v0.7", "v0.8")]
    with Alto(anvil.rpc_url, entry_points, ANVIL_EXECUTOR_KEYS, ANVIL_UTILITY_KEY) as bundler:
        yield bundler


@pytest.fixture(scope="module")
def servers(anvil: Anvil, deployment: Deployment, paymaster_key: str) -> Iterator[dict[tuple[str, str], str]]:
    """The sandbox's pairs over two servers: one paymaster per (chain, EntryPoint) on each."""
    first = [("verifying", "v0.6"), ("verifying", "v0.7"), ("singleton", "v0.8")]
    second = [("singleton", "v0.6"), ("singleton", "v0.7")]
    with (
        running_server(server_config(anvil, deployment, paymaster_key, first)) as a,
        running_server(server_config(anvil, deployment, paymaster_key, second)) as b,
    ):
        yield {**dict.fromkeys(first, a), **dict.fromkeys(second, b)}


def run_viem(args: dict[str, Any]) -> dict[str, Any]:
    completed = subprocess.run(
        [str(node_binary()), str(SCRIPT), json.dumps(args)], capture_output=True, text=True, timeout=60, check=False
    )
    lines = completed.stdout.strip().splitlines()
    assert lines, f"viem script printed nothing (exit {completed.returncode}):\n{completed.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    assert completed.returncode == 0 and result["success"], json.dumps(result, indent=2)[-4000:]
    return result


@pytest.mark.parametrize("pair", PAIRS, ids=[f"{c}-{v}" for c, v in PAIRS])
def test_viem_paymaster_client_gets_operations_sponsored_and_executed(
    pair: tuple[str, str], servers: dict[tuple[str, str], str], alto: Alto, anvil: Anvil, deployment: Deployment
) -> None:
    contract, version = pair
    url, entry_point = servers[pair], deployment.entry_points[version]
    paymaster = paymaster_of(deployment, contract, version)
    deposit_before = get_deposit(anvil.rpc_url, entry_point, paymaster)

    result = run_viem(
        {
            "rpcUrl": anvil.rpc_url,
            "bundlerUrl": alto.url,
            "paymasterUrl": f"{url}/api/v1/rpc",
            "entryPoint": entry_point,
            "entryPointVersion": version.removeprefix("v"),
            "factory": deployment.factories[version],
            "ownerKey": USER_KEY,
            "salt": next(_salts),
        }
    )

    # viem spoke plain ERC-7677 to aNode: stub data, then final data, for this EntryPoint and chain.
    requests = result["paymasterRequests"]
    assert [r["method"] for r in requests] == ["pm_getPaymasterStubData", "pm_getPaymasterData"]
    for request in requests:
        op, sent_entry_point, chain_id = request["params"][:3]
        assert sent_entry_point.lower() == entry_point.lower()
        assert int(chain_id, 16) == deployment.chain_id
        assert op["sender"].lower() == result["sender"].lower()
    assert all("result" in reply for reply in result["paymasterResponses"]), result["paymasterResponses"]

    # Executed on chain, paid by the configured paymaster.
    assert result["receiptUserOpHash"] == result["userOpHash"]
    assert result["paymaster"].lower() == paymaster.lower()
    assert result["transactionHash"].startswith("0x")
    assert get_deposit(anvil.rpc_url, entry_point, paymaster) < deposit_before

    # aNode's ledger has the operation under the hash viem computed and the EntryPoint accepted.
    reply = httpx.get(f"{url}/api/v1/operations", params={"sender": result["sender"]}, timeout=10)
    assert reply.status_code == 200, reply.text
    hashes = [row["user_op_hash"].lower() for row in reply.json()["operations"]]
    assert result["userOpHash"].lower() in hashes, (result["userOpHash"], hashes)
