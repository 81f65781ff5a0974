"""Sponsored operations through a running ``anode serve`` and the real EntryPoints on anvil.

For every supported pair (VerifyingPaymaster v0.6/v0.7, SingletonPaymaster V6/V7/V8) a client
asks the HTTP server for stub and final paymaster data for a counterfactual SimpleAccount
deploy-and-call, signs the operation and submits ``handleOps``. The operation must succeed and
the paymaster's deposit pay for it; a tampered signature, callData or gas fee must give AA34 and
an expired window AA32. Every hash aNode computes is compared with the contracts' own
``getHash`` and ``getUserOpHash``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils.address import to_checksum_address

from anode.devchain.anvil import Anvil
from anode.devchain.deploy import Deployment
from anode.devchain.rpc import DevRpc
from anode.paymasters.registry import FAMILIES
from anode.paymasters.base import GasDefaults, ValidityWindow
from anode.userop import EntryPointVersion, parse_user_op, user_op_hash
from tests.support.onchain import (
    USER_ADDRESS,
    USER_KEY,
    UserOp,
    call_contract,
    execute_calldata,
    get_deposit,
    get_user_op_hash,
    handle_ops,
    sign_user_op_hash,
    simple_account_init,
    user_op_type,
)
from tests.support.server import rpc, running_server

PAIRS = [
    ("verifying", "v0.6"),
    ("verifying", "v0.7"),
    ("singleton", "v0.6"),
    ("singleton", "v0.7"),
    ("singleton", "v0.8"),
]
_salts = itertools.count(1)


def _paymaster(deployment: Deployment, contract: str, version: str) -> str:
    table = deployment.verifying_paymasters if contract == "verifying" else deployment.singleton_paymasters
    return table[version]


def _config(anvil: Anvil, deployment: Deployment, key: str, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "signer": {"type": "local", "private_key": key},
        "chains": [
            {
                "chain_id": deployment.chain_id,
                "rpc_url": anvil.rpc_url,
                "paymasters": [
                    {
                        "entry_point": deployment.entry_points[version],
                        "address": _paymaster(deployment, contract, version),
                        "contract": contract,
                    }
                    for contract, version in pairs
                ],
            }
        ],
    }


@pytest.fixture(scope="module")
def servers(anvil: Anvil, deployment: Deployment, paymaster_key: str) -> Iterator[dict[tuple[str, str], str]]:
    """Two servers: one (chain, EntryPoint) pair has one paymaster, and we test five pairs."""
    first = [("verifying", "v0.6"), ("verifying", "v0.7"), ("singleton", "v0.8")]
    second = [("singleton", "v0.6"), ("singleton", "v0.7")]
    with (
        running_server(_config(anvil, deployment, paymaster_key, first)) as a,
        running_server(_config(anvil, deployment, paymaster_key, second)) as b,
    ):
        yield {**dict.fromkeys(first, a), **dict.fromkeys(second, b)}


def _rpc_op(op: UserOp, version: str) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "sender": op.sender,
        "nonce": hex(op.nonce),
        "callData": "0x" + op.call_data.hex(),
        "callGasLimit": hex(op.call_gas_limit),
        "verificationGasLimit": hex(op.verification_gas_limit),
        "preVerificationGas": hex(op.pre_verification_gas),
        "maxFeePerGas": hex(op.max_fee_per_gas),
        "maxPriorityFeePerGas": hex(op.max_priority_fee_per_gas),
        "signature": "0x",
    }
    if version == "v0.6":
        fields["initCode"] = "0x" + op.init_code().hex()
        fields["paymasterAndData"] = "0x"
    elif op.factory is not None:
        fields["factory"] = op.factory
        fields["factoryData"] = "0x" + op.factory_data.hex()
    return fields


def _with_paymaster(op: UserOp, version: str, result: dict[str, Any]) -> UserOp:
    if version == "v0.6":
        pnd = bytes.fromhex(result["paymasterAndData"][2:])
        return replace(op, paymaster=to_checksum_address(pnd[:20]), paymaster_data=pnd[20:])
    return replace(
        op,
        paymaster=result["paymaster"],
        paymaster_data=bytes.fromhex(result["paymasterData"][2:]),
        paymaster_verification_gas_limit=int(result["paymasterVerificationGasLimit"], 16),
        paymaster_post_op_gas_limit=int(result["paymasterPostOpGasLimit"], 16),
    )


class Client:
    """What a wallet does: build the op, ask aNode for paymaster data, sign, submit."""

    def __init__(self, url: str, anvil: Anvil, deployment: Deployment, version: str) -> None:
        self.url, self.anvil, self.deployment, self.version = url, anvil, deployment, version
        self.entry_point = deployment.entry_points[version]

    def new_op(self) -> UserOp:
        sender, factory, factory_data = simple_account_init(
            self.anvil.rpc_url, self.deployment.factories[self.version], USER_ADDRESS, next(_salts)
        )
        return UserOp(
            sender=sender, factory=factory, factory_data=factory_data, call_data=execute_calldata(USER_ADDRESS, 0, b"")
        )

    def call(self, method: str, op: UserOp, context: dict[str, Any] | None = None) -> dict[str, Any]:
        reply = rpc(self.url, method, [_rpc_op(op, self.version), self.entry_point, hex(self.deployment.chain_id), context or {}])
        assert "result" in reply, reply
        result: dict[str, Any] = reply["result"]
        return result

    def sponsor(self, context: dict[str, Any] | None = None) -> tuple[UserOp, dict[str, Any], dict[str, Any]]:
        op = self.new_op()
        stub = self.call("pm_getPaymasterStubData", op, context)
        final = self.call("pm_getPaymasterData", op, context)
        return _with_paymaster(op, self.version, final), stub, final

    def submit(self, op: UserOp) -> Any:
        op_hash = get_user_op_hash(self.anvil.rpc_url, self.entry_point, self.version, op)
        signed = replace(op, signature=sign_user_op_hash(self.version, op_hash, USER_KEY))
        return handle_ops(self.anvil.rpc_url, self.entry_point, self.version, [signed.to_tuple(self.version)])


@pytest.fixture(params=PAIRS, ids=[f"{c}-{v}" for c, v in PAIRS])
def pair(request: pytest.FixtureRequest) -> tuple[str, str]:
    value: tuple[str, str] = request.param
    return value


@pytest.fixture
def client(pair: tuple[str, str], servers: dict[tuple[str, str], str], anvil: Anvil, deployment: Deployment) -> Client:
    return Client(servers[pair], anvil, deployment, pair[1])


def _window_and_signature(contract: str, version: str, paymaster_data: bytes) -> tuple[ValidityWindow, bytes]:
    if contract == "verifying":
        window = ValidityWindow(int.from_bytes(paymaster_data[:32], "big"), int.from_bytes(paymaster_data[32:64], "big"))
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
        stub_bytes, final_bytes = bytes.fromhex(stub["paymasterAndData"][2:]), bytes.fromhex(final["paymasterAndData"][2:])
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
    model = parse_user_op(_rpc_op(op, version) | _paymaster_rpc_fields(op, version), ep_version)
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
    assert deposit_after == deposit_before - event.actual_gas_cost > 0 or deposit_after < deposit_before

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
