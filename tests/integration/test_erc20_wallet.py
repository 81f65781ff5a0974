"""A wallet's ERC-20 flow, step by step, with a 6-decimals token, through Alto.

What a wallet does (viem's ``prepareUserOperation`` with an ERC-7677 paymaster): ask aNode for
stub data (``pm_getPaymasterStubData``, gas limits still zero), ask the bundler for the gas limits
with that stub (``eth_estimateUserOperationGas``), ask aNode for the signed data with the estimated
limits (``pm_getPaymasterData``), sign, send through the bundler. Here with what makes it hard:

- the sandbox's TUSD (6 decimals) at its feeds' price (3000 USD per ETH, 1 USD per TUSD, 10 %
  markup): about 3.3e9 base units per 1e18 wei, so a charge computed at a fee of 1 wei rounds to
  zero, and Alto simulates its estimate at ``maxFeePerGas`` 1 wei;
- the account's first operation, which approves the paymaster in its own callData;
- fees of 1 gwei;
- a treasury that has never held the token, so the real charge writes a new balance slot.

The estimate must measure the transfer the real operation makes, the operation must be included,
and the treasury gain exactly the ``tokenAmountPaid`` of ``UserOperationSponsored``.
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
from anode.devchain.deploy import Deployment, Erc20Deployment, deploy_erc20_sandbox
from anode.sandbox import erc20_section
from tests.support.erc20 import STUB_ACCOUNT_SIGNATURE, approve_paymaster, balance_of, mint, sponsored_events
from tests.support.onchain import USER_KEY, UserOp, get_user_op_hash, sign_user_op_hash
from tests.support.server import rpc, running_server
from tests.support.wallet import Client, rpc_op, server_config

VERSIONS = ["v0.6", "v0.7", "v0.8"]
#: mints the sandbox token's first supply (impersonated); not the treasury aNode is configured with
MINTER = to_checksum_address(keccak(b"anode erc20 wallet test minter")[:20])
#: one treasury per paymaster, none of which has held the token
TREASURIES = {v: to_checksum_address(keccak(b"anode erc20 wallet test treasury " + v.encode())[:20]) for v in VERSIONS}
GWEI = 10**9
MINTED = 1000 * 10**6  # 1000 TUSD
_GAS_LIMITS = ("callGasLimit", "verificationGasLimit", "preVerificationGas")


@pytest.fixture(scope="module")
def tusd(anvil: Anvil, deployment: Deployment) -> Erc20Deployment:
    return deploy_erc20_sandbox(anvil.rpc_url, deployment, MINTER)


@pytest.fixture(scope="module")
def alto(anvil: Anvil, deployment: Deployment) -> Iterator[Alto]:
    entry_points = [deployment.entry_points[v] for v in VERSIONS]
    with Alto(anvil.rpc_url, entry_points, ANVIL_EXECUTOR_KEYS, ANVIL_UTILITY_KEY) as bundler:
        yield bundler


@pytest.fixture(scope="module")
def server(anvil: Anvil, deployment: Deployment, paymaster_key: str, tusd: Erc20Deployment) -> Iterator[str]:
    """aNode as the sandbox configures ERC-20 mode (TUSD priced by its feeds, 10 % markup), with
    treasuries of its own: no bundler_url, the wallet asks the bundler itself."""
    config = server_config(anvil, deployment, paymaster_key, [("singleton", v) for v in VERSIONS])
    for version, paymaster in zip(VERSIONS, config["chains"][0]["paymasters"], strict=True):
        paymaster["erc20"] = erc20_section(replace(tusd, treasury=TREASURIES[version]))
    with running_server(config) as url:
        yield url


@pytest.fixture(params=VERSIONS)
def client(request: pytest.FixtureRequest, server: str, anvil: Anvil, deployment: Deployment) -> Client:
    return Client(server, anvil, deployment, request.param)


def _bundler(alto: Alto, method: str, params: list[Any]) -> dict[str, Any]:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    answer: dict[str, Any] = httpx.post(alto.url, json=body, timeout=60).json()
    return answer


def _with_paymaster_fields(fields: dict[str, Any], version: str, paymaster: dict[str, Any]) -> dict[str, Any]:
    """The wallet's operation with the paymaster fields of an ERC-7677 answer (stub or final)."""
    if version == "v0.6":
        return fields | {"paymasterAndData": paymaster["paymasterAndData"]}
    names = ("paymaster", "paymasterData", "paymasterVerificationGasLimit", "paymasterPostOpGasLimit")
    return fields | {name: paymaster[name] for name in names if name in paymaster}


def _signed(client: Client, op: UserOp, fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` (the final operation) with the owner's signature over its userOpHash."""
    pnd = bytes.fromhex((fields.get("paymasterAndData") or "0x")[2:])
    if client.version == "v0.6":
        final = replace(op, paymaster=to_checksum_address(pnd[:20]), paymaster_data=pnd[20:])
    else:
        final = replace(
            op,
            paymaster=fields["paymaster"],
            paymaster_data=bytes.fromhex(fields["paymasterData"][2:]),
            paymaster_verification_gas_limit=int(fields["paymasterVerificationGasLimit"], 16),
            paymaster_post_op_gas_limit=int(fields["paymasterPostOpGasLimit"], 16),
        )
    final = replace(
        final,
        call_gas_limit=int(fields["callGasLimit"], 16),
        verification_gas_limit=int(fields["verificationGasLimit"], 16),
        pre_verification_gas=int(fields["preVerificationGas"], 16),
    )
    op_hash = get_user_op_hash(client.anvil.rpc_url, client.entry_point, client.version, final)
    return fields | {"signature": "0x" + sign_user_op_hash(client.version, op_hash, USER_KEY).hex()}


def _receipt(alto: Alto, op_hash: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        found = _bundler(alto, "eth_getUserOperationReceipt", [op_hash]).get("result")
        if found:
            result: dict[str, Any] = found
            return result
        assert time.monotonic() < deadline, f"Alto did not bundle {op_hash}"
        time.sleep(0.2)


def test_a_wallet_pays_in_a_six_decimals_token_with_alto_estimating_the_stub(
    client: Client, alto: Alto, tusd: Erc20Deployment
) -> None:
    version, chain_id = client.version, hex(client.deployment.chain_id)
    paymaster = client.deployment.singleton_paymasters[version]
    context, treasury = {"token": tusd.token}, TREASURIES[version]
    assert balance_of(client.anvil, tusd.token, treasury) == 0  # a new balance slot for postOp to write

    op = replace(
        client.new_op(),
        call_data=approve_paymaster(tusd.token, paymaster),
        max_fee_per_gas=GWEI,
        max_priority_fee_per_gas=GWEI,
    )
    mint(client.anvil, tusd.token, op.sender, MINTED)
    fields = rpc_op(op, version) | dict.fromkeys(_GAS_LIMITS, "0x0")

    # 1. stub data from aNode, for the estimate
    stub = rpc(client.url, "pm_getPaymasterStubData", [fields, client.entry_point, chain_id, context])
    assert "result" in stub, stub

    # 2. the bundler's gas limits for the operation carrying the stub
    estimating = _with_paymaster_fields(fields, version, stub["result"])
    estimating["signature"] = "0x" + STUB_ACCOUNT_SIGNATURE.hex()
    estimate = _bundler(alto, "eth_estimateUserOperationGas", [estimating, client.entry_point])
    assert "result" in estimate, estimate
    gas = {name: value for name, value in estimate["result"].items() if name != "verificationGas"}

    # 3. the signed data for the operation with those limits
    priced = fields | gas
    if version != "v0.6":
        priced |= {"paymaster": stub["result"]["paymaster"], "paymasterData": stub["result"]["paymasterData"]}
    final = rpc(client.url, "pm_getPaymasterData", [priced, client.entry_point, chain_id, context])
    assert "result" in final, final
    ready = _with_paymaster_fields(fields | gas, version, final["result"])

    # 4. signed by the owner and sent through the bundler
    sent = _bundler(alto, "eth_sendUserOperation", [_signed(client, op, ready), client.entry_point])
    assert "result" in sent, sent
    receipt = _receipt(alto, sent["result"])
    assert receipt["success"] is True, receipt
    ((mode, token, paid, rate),) = sponsored_events(client.anvil, receipt["receipt"]["transactionHash"], paymaster)
    assert (mode, token) == (1, tusd.token)
    assert rate == 3_300_000_000  # 3000 TUSD per ETH, 6 decimals, 10 % markup
    assert paid > 0
    assert balance_of(client.anvil, tusd.token, treasury) == paid
    assert balance_of(client.anvil, tusd.token, op.sender) == MINTED - paid
