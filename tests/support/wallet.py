"""A test wallet: builds counterfactual SimpleAccount operations, asks aNode for paymaster data
over HTTP, signs as the account owner and submits ``handleOps`` to the real EntryPoint."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

from eth_utils.address import to_checksum_address

from anode.devchain.anvil import Anvil
from anode.devchain.deploy import Deployment
from tests.support.onchain import (
    USER_ADDRESS,
    USER_KEY,
    UserOp,
    execute_calldata,
    get_user_op_hash,
    handle_ops,
    sign_user_op_hash,
    simple_account_init,
)
from tests.support.server import rpc

PAIRS = [
    ("verifying", "v0.6"),
    ("verifying", "v0.7"),
    ("singleton", "v0.6"),
    ("singleton", "v0.7"),
    ("singleton", "v0.8"),
]
_salts = itertools.count(10_000)  # apart from the salts other test modules use


def paymaster_of(deployment: Deployment, contract: str, version: str) -> str:
    table = deployment.verifying_paymasters if contract == "verifying" else deployment.singleton_paymasters
    return table[version]


def server_config(anvil: Anvil, deployment: Deployment, key: str, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "signer": {"type": "local", "private_key": key},
        "chains": [
            {
                "chain_id": deployment.chain_id,
                "rpc_url": anvil.rpc_url,
                "paymasters": [
                    {
                        "entry_point": deployment.entry_points[version],
                        "address": paymaster_of(deployment, contract, version),
                        "contract": contract,
                    }
                    for contract, version in pairs
                ],
            }
        ],
    }


def rpc_op(op: UserOp, version: str) -> dict[str, Any]:
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


def with_paymaster(op: UserOp, version: str, result: dict[str, Any]) -> UserOp:
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
        reply = rpc(
            self.url,
            method,
            [rpc_op(op, self.version), self.entry_point, hex(self.deployment.chain_id), context or {}],
        )
        assert "result" in reply, reply
        result: dict[str, Any] = reply["result"]
        return result

    def sponsor(self, context: dict[str, Any] | None = None) -> tuple[UserOp, dict[str, Any], dict[str, Any]]:
        op = self.new_op()
        stub = self.call("pm_getPaymasterStubData", op, context)
        final = self.call("pm_getPaymasterData", op, context)
        return with_paymaster(op, self.version, final), stub, final

    def submit(self, op: UserOp) -> Any:
        op_hash = get_user_op_hash(self.anvil.rpc_url, self.entry_point, self.version, op)
        signed = replace(op, signature=sign_user_op_hash(self.version, op_hash, USER_KEY))
        return handle_ops(self.anvil.rpc_url, self.entry_point, self.version, [signed.to_tuple(self.version)])
