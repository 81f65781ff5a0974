"""The passkey flow's ``send: true`` through a real bundler: aNode (``anode serve`` with
``bundler_url`` pointing at Alto 0.0.20 on anvil) prepares an operation without gas limits (Alto
estimates them), the passkey approves it, and ``pm_sponsor_with_passkey`` with ``send: true`` hands
the KMS-signed operation to Alto, answers the bundler's userOpHash, and Alto includes it (v0.6, v0.7).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from anode.devchain.alto import ANVIL_EXECUTOR_KEYS, ANVIL_UTILITY_KEY, Alto
from anode.devchain.anvil import Anvil
from anode.devchain.deploy import Deployment
from anode.devchain.rpc import DevRpc
from tests.kms.test_anode_flow import PasskeyWallet, anode_config, kms_url  # noqa: F401  (the fixture)
from tests.support.server import rpc, running_server
from tests.support.wallet import rpc_op

VERSIONS = ["v0.6", "v0.7"]
_GAS_FIELDS = ("callGasLimit", "verificationGasLimit", "preVerificationGas")


@pytest.fixture(scope="module")
def alto(anvil: Anvil, deployment: Deployment) -> Iterator[Alto]:
    """Alto, and the shared chain put back as this module found it (Alto deploys its simulation contracts)."""
    with DevRpc(anvil.rpc_url) as node:
        snapshot = node.call("evm_snapshot")
    try:
        entry_points = [deployment.entry_points[v] for v in VERSIONS]
        with Alto(anvil.rpc_url, entry_points, ANVIL_EXECUTOR_KEYS, ANVIL_UTILITY_KEY) as bundler:
            yield bundler
    finally:
        with DevRpc(anvil.rpc_url) as node:
            assert node.call("evm_revert", snapshot) is True


@pytest.fixture(scope="module")
def anode_url(anvil: Anvil, deployment: Deployment, kms_url: str, alto: Alto) -> Iterator[str]:  # noqa: F811
    config = anode_config(anvil, deployment, [kms_url])
    config["chains"][0]["bundler_url"] = alto.url
    with running_server(config) as url:
        yield url


def _receipt(anode_url: str, op_hash: str) -> dict[str, Any]:
    """The receipt through aNode's relay (the same bundler), once Alto has bundled the operation."""
    deadline = time.monotonic() + 60
    while True:
        reply = rpc(anode_url, "eth_getUserOperationReceipt", [op_hash])
        if reply.get("result"):
            result: dict[str, Any] = reply["result"]
            return result
        assert time.monotonic() < deadline, f"Alto did not bundle {op_hash}: {reply}"
        time.sleep(0.2)


@pytest.mark.parametrize("version", VERSIONS)
def test_send_true_hands_the_signed_operation_to_the_bundler_and_it_is_included(
    kms_url: str, anode_url: str, anvil: Anvil, deployment: Deployment, version: str,  # noqa: F811
) -> None:  # fmt: skip
    wallet = PasskeyWallet(kms_url, anode_url, anvil, deployment, version).create()
    op = rpc_op(wallet.new_op(), version)
    for name in _GAS_FIELDS:
        del op[name]
    reply = wallet.call("anode_preparePasskeyOperation", op, {"accountId": wallet.account_id})
    assert "result" in reply, reply
    prepared = reply["result"]
    assert int(prepared["userOperation"]["preVerificationGas"], 16) > 0  # Alto's estimate
    reply = wallet.sponsor(prepared["userOperation"], wallet.passkey.assert_(prepared["challenge"]), send=True)
    assert "result" in reply, reply
    assert reply["result"]["sent"] == prepared["userOpHash"]
    receipt = _receipt(anode_url, prepared["userOpHash"])
    assert receipt["success"] is True, receipt
    assert receipt["sender"] == wallet.account["address"]
    assert (
        receipt["paymaster"].lower()
        == prepared["userOperation"]
        .get("paymaster", prepared["userOperation"].get("paymasterAndData", "")[:42])
        .lower()
    )
