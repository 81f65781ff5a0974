"""Sponsored operations through a running ``anode serve`` and the real EntryPoints on anvil.

For every supported pair (VerifyingPaymaster v0.6/v0.7, SingletonPaymaster V6/V7/V8) a client
asks the HTTP server for stub and final paymaster data for a counterfactual SimpleAccount
deploy-and-call, signs the operation and submits ``handleOps``. The operation must succeed and
the paymaster's deposit pay for it; a tampered signature, callData or gas fee must give AA34 and
an expired window AA32. Every hash aNode computes is compared with the contracts' own
``getHash`` and ``getUserOpHash``; the paymaster signature answered recovers to the signer over
the contract's ``getHash`` of the operation exactly as answered, and the books hold that
operation's hash, so an answer rebuilt from another operation than the one signed fails here
(VerifyingPaymaster has no v0.8 contract).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from anode.devchain.anvil import Anvil
from anode.devchain.deploy import Deployment
from anode.devchain.rpc import DevRpc
from anode.paymasters.base import GasDefaults, ValidityWindow
from anode.paymasters.registry import FAMILIES
from anode.userop import EntryPointVersion, parse_user_op, user_op_hash
from tests.support.onchain import (
    USER_ADDRESS,
    USER_KEY,
    UserOp,
    call_contract,
    execute_calldata,
    get_deposit,
    get_user_op_hash,
    user_op_type,
)
from tests.support.server import running_server
from tests.support.wallet import PAIRS, Client, rpc_op, server_config


@pytest.fixture(scope="module")
def servers(anvil: Anvil, deployment: Deployment, paymaster_key: str) -> Iterator[dict[tuple[str, str], str]]:
    """Two servers: one (chain, EntryPoint) pair has one paymaster, and we test five pairs."""
    first = [("verifying", "v0.6"), ("verifying", "v0.7"), ("singleton", "v0.8")]
    second = [("singleton", "v0.6"), ("singleton", "v0.7")]
    with (
        running_server(server_config(anvil, deployment, paymaster_key, first)) as a,
        running_server(server_config(anvil, deployment, paymaster_key, second)) as b,
    ):
        yield {**dict.fromkeys(first, a), **dict.fromkeys(second, b)}


@pytest.fixture(params=PAIRS, ids=[f"{c}-{v}" for c, v in PAIRS])
def pair(request: pytest.FixtureRequest) -> tuple[str, str]:
    value: tuple[str, str] = request.param
    return value


@pytest.fixture
def client(pair: tuple[str, str], servers: dict[tuple[str, str], str], anvil: Anvil, deployment: Deployment) -> Client:
    return Client(servers[pair], anvil, deployment, pair[1])


def _window_and_signature(contract: str, version: str, paymaster_data: bytes) -> tuple[ValidityWindow, bytes]:
    if contract == "verifying":
        window = ValidityWindow(
            int.from_bytes(paymaster_data[:32], "big"), int.from_bytes(paymaster_data[32:64], "big")
        )
        return window, paymaster_data[64:]
    window = ValidityWindow(int.from_bytes(paymaster_data[1:7], "big"), int.from_bytes(paymaster_data[7:13], "big"))
    return window, paymaster_data[13:]


def _onchain_get_hash(anvil: Anvil, contract: str, version: str, op: UserOp, window: ValidityWindow) -> bytes:
    tuple_type = user_op_type(version)
    if contract == "verifying":
        result = call_contract(
            anvil.rpc_url, op.paymaster or "", f"getHash({tuple_type},uint48,uint48)", [tuple_type, "uint48", "uint48"],
            [op.to_tuple(version), window.valid_until, window.valid_after], ["bytes32"],
        )  # fmt: skip
    else:
        result = call_contract(
            anvil.rpc_url, op.paymaster or "", f"getHash(uint8,{tuple_type})", ["uint8", tuple_type],
            [0, op.to_tuple(version)], ["bytes32"],
        )  # fmt: skip
    value: bytes = result[0]
    return value


def test_sponsored_deploy_and_call_succeeds_and_the_deposit_pays(
    client: Client, pair: tuple[str, str], anvil: Anvil, paymaster_address: str
) -> None:
    contract, version = pair
    op, stub, final = client.sponsor()

    # ERC-7677 stub: same length as the final data, never more zero bytes, a sponsor, postOp limit (v0.7+).
    if version == "v0.6":
        assert len(stub["paymasterAndData"]) == len(final["paymasterAndData"])
        stub_bytes, final_bytes = (
            bytes.fromhex(stub["paymasterAndData"][2:]),
            bytes.fromhex(final["paymasterAndData"][2:]),
        )
    else:
        assert "paymasterPostOpGasLimit" in stub and stub["paymaster"] == final["paymaster"]
        stub_bytes, final_bytes = bytes.fromhex(stub["paymasterData"][2:]), bytes.fromhex(final["paymasterData"][2:])
    assert len(stub_bytes) == len(final_bytes)
    assert stub_bytes.count(0) <= final_bytes.count(0)
    assert stub["sponsor"]["name"] and stub["isFinal"] is False

    # The contract's own getHash is exactly what aNode signed, and the signature recovers to its signer.
    window, signature = _window_and_signature(contract, version, op.paymaster_data)
    onchain = _onchain_get_hash(anvil, contract, version, op, window)
    ep_version = EntryPointVersion(version)
    model = parse_user_op(rpc_op(op, version) | _paymaster_rpc_fields(op, version), ep_version)
    family = FAMILIES[contract](bytes.fromhex((op.paymaster or "")[2:]), ep_version, GasDefaults(0, 0))
    assert family.digest(model, window, client.deployment.chain_id, 0) == onchain
    assert Account.recover_message(encode_defunct(primitive=onchain), signature=signature) == paymaster_address

    # aNode's userOp hash is the EntryPoint's.
    entry_point_hash = get_user_op_hash(anvil.rpc_url, client.entry_point, version, op)
    anode_hash = user_op_hash(model, ep_version, bytes.fromhex(client.entry_point[2:]), client.deployment.chain_id)
    assert anode_hash == entry_point_hash

    deposit_before = get_deposit(anvil.rpc_url, client.entry_point, op.paymaster or "")
    outcome = client.submit(op)
    assert outcome.success, outcome.reason
    (event,) = outcome.events
    assert event.success and event.paymaster == op.paymaster and event.sender == op.sender
    assert event.user_op_hash == entry_point_hash
    deposit_after = get_deposit(anvil.rpc_url, client.entry_point, op.paymaster or "")
    # The EntryPoint takes the prefund from the deposit and refunds all but actualGasCost (no other op
    # of this paymaster is in the transaction), so the deposit falls by exactly what the event reports.
    assert event.actual_gas_cost > 0
    assert deposit_after == deposit_before - event.actual_gas_cost

    # The books hold the signature, under the hash the EntryPoint emitted.
    books = httpx.get(f"{client.url}/api/v1/operations", params={"sender": op.sender}).json()
    assert [row["user_op_hash"] for row in books["operations"]] == ["0x" + entry_point_hash.hex()]
    assert books["operations"][0]["max_gas_cost_wei"] != "0"


def _paymaster_rpc_fields(op: UserOp, version: str) -> dict[str, Any]:
    if version == "v0.6":
        return {"paymasterAndData": "0x" + op.paymaster_and_data(version).hex()}
    return {
        "paymaster": op.paymaster,
        "paymasterData": "0x" + op.paymaster_data.hex(),
        "paymasterVerificationGasLimit": hex(op.paymaster_verification_gas_limit),
        "paymasterPostOpGasLimit": hex(op.paymaster_post_op_gas_limit),
    }


def _forge_signature(contract: str, op: UserOp) -> UserOp:
    """Replace the paymaster signature by one from a key the contract does not trust."""
    head = op.paymaster_data[:-65]
    forged = Account.sign_message(encode_defunct(primitive=b"\x01" * 32), private_key=USER_KEY).signature
    return replace(op, paymaster_data=head + bytes(forged))


@pytest.mark.parametrize("tamper", ["signature", "callData", "maxFeePerGas"])
def test_tampered_operation_is_rejected_with_aa34(client: Client, pair: tuple[str, str], tamper: str) -> None:
    op, _, _ = client.sponsor()
    if tamper == "signature":
        op = _forge_signature(pair[0], op)
    elif tamper == "callData":
        op = replace(op, call_data=execute_calldata(USER_ADDRESS, 0, b"\x12\x34"))
    else:
        op = replace(op, max_fee_per_gas=op.max_fee_per_gas + 1)
    outcome = client.submit(op)
    assert not outcome.success
    assert outcome.reason is not None and outcome.reason.startswith("AA34"), outcome.reason


def test_expired_window_is_rejected_with_aa32(client: Client, anvil: Anvil) -> None:
    op, _, _ = client.sponsor(context={"validForSeconds": 5})
    with DevRpc(anvil.rpc_url) as dev:
        snapshot = dev.call("evm_snapshot")
        try:
            dev.call("evm_increaseTime", 3600)
            dev.call("evm_mine")
            outcome = client.submit(op)
        finally:
            dev.call("evm_revert", snapshot)
    assert not outcome.success
    assert outcome.reason is not None and outcome.reason.startswith("AA32"), outcome.reason
