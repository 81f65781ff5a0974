"""A JSON ``null`` is the field left out, for every field of every EntryPoint version.

SDKs (viem, permissionless, ethers-based wallets) send ``"factory": null, "factoryData": null``
or ``"paymasterAndData": null`` for what they do not use. Each optional field given as null
parses exactly as the operation without it; a required one given as null is named as required;
a gas field given as null is missing for a final signature, not 0.
"""

from __future__ import annotations

from typing import Any

import pytest

from anode.errors import InvalidRequest
from anode.userop.models import UserOperationV06, UserOperationV07, parse_user_op
from anode.userop.versions import EntryPointVersion

V06, V07, V08 = EntryPointVersion.V06, EntryPointVersion.V07, EntryPointVersion.V08
BASE: dict[str, Any] = {"sender": "0x" + "11" * 20, "nonce": "0x1", "callData": "0xb61d27f6"}
GAS = {
    "callGasLimit": "0x186a0",
    "verificationGasLimit": "0x30d40",
    "preVerificationGas": "0xc350",
    "maxFeePerGas": "0x3b9aca00",
    "maxPriorityFeePerGas": "0x3b9aca00",
}
REQUIRED = ("sender", "nonce", "callData")


def optional_fields(model: type[UserOperationV06] | type[UserOperationV07]) -> list[str]:
    """Every wire field of ``model`` that has a default, read from the model (a new one is covered too)."""
    return sorted(info.alias or name for name, info in model.model_fields.items() if not info.is_required())


V06_OPTIONAL = optional_fields(UserOperationV06)
V07_OPTIONAL = [*optional_fields(UserOperationV07), "eip7702Auth"]  # EIP-7702 SDKs send it, null when unused
CASES = [(V06, name) for name in V06_OPTIONAL] + [(v, name) for v in (V07, V08) for name in V07_OPTIONAL]


def test_the_optional_fields_are_the_ones_sdks_send_as_null() -> None:
    assert {"initCode", "paymasterAndData", "signature", "callGasLimit"} <= set(V06_OPTIONAL)
    assert {"factory", "factoryData", "paymaster", "paymasterData", "paymasterVerificationGasLimit",
            "paymasterPostOpGasLimit", "signature", "maxFeePerGas"} <= set(V07_OPTIONAL)  # fmt: skip


@pytest.mark.parametrize(("version", "name"), CASES, ids=[f"{v.value}-{n}" for v, n in CASES])
def test_null_optional_field_is_the_field_left_out(version: EntryPointVersion, name: str) -> None:
    left_out = {key: value for key, value in (BASE | GAS).items() if key != name}
    assert parse_user_op(BASE | GAS | {name: None}, version) == parse_user_op(left_out, version)


@pytest.mark.parametrize("version", [V07, V08])
def test_every_unused_v07_field_null_at_once(version: EntryPointVersion) -> None:
    nulls = dict.fromkeys(V07_OPTIONAL)
    op = parse_user_op(BASE | nulls, version)
    assert isinstance(op, UserOperationV07)
    assert op.factory is None and op.factory_data == b"" and op.init_code == b""
    assert op.paymaster is None and op.paymaster_data == b"" and op.paymaster_verification_gas_limit is None


def test_every_unused_v06_field_null_at_once() -> None:
    op = parse_user_op(BASE | dict.fromkeys(V06_OPTIONAL), V06)
    assert isinstance(op, UserOperationV06)
    assert op.init_code == b"" and op.paymaster_and_data == b"" and op.signature == b""


@pytest.mark.parametrize("version", [V06, V07, V08])
@pytest.mark.parametrize("name", REQUIRED)
def test_null_required_field_is_named_as_required(version: EntryPointVersion, name: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_user_op(BASE | {name: None}, version)
    assert caught.value.field == f"userOp.{name}"
    assert caught.value.message == f"userOp.{name}: is required"


@pytest.mark.parametrize("version", [V06, V07, V08])
@pytest.mark.parametrize("name", GAS)
def test_null_gas_field_is_missing_for_a_final_signature_not_zero(version: EntryPointVersion, name: str) -> None:
    raw = BASE | GAS | {name: None}
    op = parse_user_op(raw, version)
    # the fees are checked before estimation, the gas limits and maxFeePerGas before signing
    checks = [op.require_fee_fields] if name.startswith("max") else []
    if name != "maxPriorityFeePerGas":
        checks.append(op.require_gas_fields)
    for check in checks:
        with pytest.raises(InvalidRequest) as caught:
            check(raw)
        assert caught.value.field == f"userOp.{name}", check


def test_factory_data_with_a_null_factory_still_names_factory_data() -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_user_op(BASE | {"factory": None, "factoryData": "0xabcd"}, V07)
    assert caught.value.field == "userOp.factoryData"
