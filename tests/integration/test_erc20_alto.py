"""ERC-20 mode through a real bundler: aNode (``anode serve`` with ``bundler_url``) asks Alto to
estimate an operation that pays in a token, signs it, and Alto bundles it on anvil.

For SingletonPaymaster V6 / V7 / V8: ``pm_sponsorUserOperation`` with ``context.token`` and no
gas fields comes back with limits that carry the operation, postOp's token transfer included;
sent with ``eth_sendUserOperation``, it is included, and the treasury gains exactly the
``tokenAmountPaid`` of ``UserOperationSponsored``, at the rate aNode quoted and signed. REST
``/estimate`` gets its gas limits from the same bundler.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from anode.devchain.alto import ANVIL_EXECUTOR_KEYS, ANVIL_UTILITY_KEY, Alto
from anode.devchain.anvil import Anvil
from anode.devchain.deploy import Deployment
from anode.devchain.rpc import DevRpc
from tests.contracts.solidity import compiled
from tests.support.erc20 import approve_paymaster, balance_of, mint, sponsored_events
from tests.support.onchain import USER_KEY, get_user_op_hash, sign_user_op_hash
from tests.support.server import rpc, running_server
from tests.support.wallet import Client, rpc_op, server_config, with_paymaster

VERSIONS = ["v0.6", "v0.7", "v0.8"]
SIGNED_RATE = 2500 * 10**18  # 2500 PNT per ETH, no markup
TREASURY = to_checksum_address(keccak(b"anode erc20 alto test treasury")[:20])
_GAS_FIELDS = ("callGasLimit", "verificationGasLimit", "preVerificationGas")


@pytest.fixture(scope="module")
def token(anvil: Anvil) -> str:
    with DevRpc(anvil.rpc_url) as node:
        receipt = node.transact(node.accounts()[0], None, compiled()["PointsToken"].creation_code())
    return to_checksum_address(receipt["contractAddress"])


@pytest.fixture(scope="module")
def alto(anvil: Anvil, deployment: Deployment) -> Iterator[Alto]:
    entry_points = [deployment.entry_points[v] for v in VERSIONS]
    with Alto(anvil.rpc_url, entry_points, ANVIL_EXECUTOR_KEYS, ANVIL_UTILITY_KEY) as bundler:
        yield bundler


@pytest.fixture(scope="module")
def server(anvil: Anvil, deployment: Deployment, paymaster_key: str, token: str, alto: Alto) -> Iterator[str]:
    config = server_config(anvil, deployment, paymaster_key, [("singleton", v) for v in VERSIONS])
    config["chains"][0]["bundler_url"] = alto.url
    for paymaster in config["chains"][0]["paymasters"]:
        paymaster["erc20"] = {
            "treasury": TREASURY,
            "tokens": [{"address": token, "price": {"source": "fixed", "tokens_per_native": "2500"}}],
        }
    with running_server(config) as url:
        yield url


@pytest.fixture(params=VERSIONS)
def client(request: pytest.FixtureRequest, server: str, anvil: Anvil, deployment: Deployment) -> Client:
    return Client(server, anvil, deployment, request.param)


def _send_through_alto(alto: Alto, client: Client, op: Any) -> dict[str, Any]:
    """``eth_sendUserOperation`` with the owner's signature, then the receipt once Alto bundled it."""
    signed = replace(
        op,
        signature=sign_user_op_hash(
            client.version, get_user_op_hash(client.anvil.rpc_url, client.entry_point, client.version, op), USER_KEY
        ),
    )
    fields = {**rpc_op(signed, client.version), "signature": "0x" + signed.signature.hex()}
    if client.version == "v0.6":
        fields["paymasterAndData"] = "0x" + signed.paymaster_and_data("v0.6").hex()
    else:
        fields |= {
            "paymaster": signed.paymaster,
            "paymasterData": "0x" + signed.paymaster_data.hex(),
            "paymasterVerificationGasLimit": hex(signed.paymaster_verification_gas_limit),
            "paymasterPostOpGasLimit": hex(signed.paymaster_post_op_gas_limit),
        }
    sent = httpx.post(
        alto.url,
        json={"jsonrpc": "2.0", "id": 1, "method": "eth_sendUserOperation", "params": [fields, client.entry_point]},
        timeout=30,
    ).json()
    assert "result" in sent, sent
    deadline = time.monotonic() + 60
    while True:
        receipt = httpx.post(
            alto.url,
            json={"jsonrpc": "2.0", "id": 1, "method": "eth_getUserOperationReceipt", "params": [sent["result"]]},
            timeout=30,
        ).json()
        if receipt.get("result"):
            result: dict[str, Any] = receipt["result"]
            return result
        assert time.monotonic() < deadline, f"Alto did not bundle {sent['result']}"
        time.sleep(0.2)


def test_a_token_paying_operation_estimated_by_alto_is_bundled_and_pays_the_treasury(
    client: Client, token: str, alto: Alto
) -> None:
    paymaster = client.deployment.singleton_paymasters[client.version]
    op = replace(client.new_op(), call_data=approve_paymaster(token, paymaster))
    mint(client.anvil, token, op.sender, 1000 * 10**18)
    fields = rpc_op(op, client.version)
    for name in _GAS_FIELDS:
        del fields[name]
    quotes = rpc(client.url, "pimlico_getTokenQuotes", [{"tokens": [token]}, client.entry_point, "0x7a69"])
    assert quotes["result"]["quotes"][0]["exchangeRate"] == hex(SIGNED_RATE)
    reply = rpc(client.url, "pm_sponsorUserOperation", [fields, client.entry_point, {"token": token}])
    assert "result" in reply, reply
    result = reply["result"]
    estimated = replace(
        op,
        call_gas_limit=int(result["callGasLimit"], 16),
        verification_gas_limit=int(result["verificationGasLimit"], 16),
        pre_verification_gas=int(result["preVerificationGas"], 16),
    )
    sponsored = with_paymaster(estimated, client.version, result)
    before = balance_of(client.anvil, token, TREASURY)
    receipt = _send_through_alto(alto, client, sponsored)
    assert receipt["success"] is True, receipt
    tx_hash = receipt["receipt"]["transactionHash"]
    ((mode, paid_token, paid, rate),) = sponsored_events(client.anvil, tx_hash, paymaster)
    assert (mode, paid_token, rate) == (1, token, SIGNED_RATE)
    assert paid > 0
    assert balance_of(client.anvil, token, TREASURY) - before == paid


def test_rest_estimate_asks_the_bundler_for_gas_limits(client: Client, token: str) -> None:
    paymaster = client.deployment.singleton_paymasters[client.version]
    op = replace(client.new_op(), call_data=approve_paymaster(token, paymaster))
    mint(client.anvil, token, op.sender, 1000 * 10**18)  # the bundler simulates postOp's transfer
    fields = rpc_op(op, client.version)
    for name in _GAS_FIELDS:
        del fields[name]
    body = {"userOperation": fields, "entryPoint": client.entry_point, "chainId": 31337, "token": token}
    reply = httpx.post(f"{client.url}/api/v1/paymaster/estimate", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    gas = reply.json()["gasEstimate"]
    assert int(gas["verificationGasLimit"], 16) > 100_000  # the account is deployed in validation: Alto's figure
    assert int(gas["preVerificationGas"], 16) > 20_000
    assert int(reply.json()["tokenAmount"]) > 0
