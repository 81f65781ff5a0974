"""A real bundler, Alto 0.0.20 on anvil, estimates gas for the userOps aNode sponsors.

``pm_sponsorUserOperation`` fills in a stub paymasterData (same length as the final one, a
well-formed but wrong signature) and asks the bundler's ``eth_estimateUserOperationGas``. These
tests pin down that contract with the real thing: Alto estimates counterfactual SimpleAccount
ops on every EntryPoint version, with and without each paymaster, tolerates the stub's failing
paymaster signature, rejects a malformed one, and the limits it returns are enough for the op,
once really signed, to go through ``handleOps``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct

from anode.devchain.alto import ANVIL_EXECUTOR_KEYS, ANVIL_UTILITY_KEY, Alto, AltoError
from anode.devchain.anvil import Anvil
from anode.devchain.deploy import Deployment
from anode.devchain.rpc import DevRpc
from tests.support.onchain import (
    USER_ADDRESS,
    USER_KEY,
    UserOp,
    call_contract,
    execute_calldata,
    get_user_op_hash,
    handle_ops,
    sign_user_op_hash,
    simple_account_init,
    user_op_type,
)

pytestmark = pytest.mark.chain

#: A well-formed 65-byte ECDSA signature that recovers to an unrelated address (Pimlico's mock
#: paymaster uses the same one). OpenZeppelin's ECDSA.recover reverts on all-zero bytes, so a
#: zero stub would fail validation (AA33 / AA23) instead of returning SIG_VALIDATION_FAILED.
STUB_SIGNATURE = bytes.fromhex(
    "cd91f19f0f19ce862d7bec7b7d9b95457145afc6f639c28fd0360f488937bfa4"
    "1e6eedcd3a46054fd95fcd0e3ef6b0bc0a615c4d975eef55c8a3517257904d5b1c"
)
RECIPIENT = "0x000000000000000000000000000000000000A170"
SALT_BASE = 4337_000  # counterfactual accounts of this module; other tests use other salts
VALID_FOR_S = 3600
SINGLETON_VERIFYING_ALLOW_ALL_BUNDLERS = 0b01  # mode 0 (verifying) << 1 | allowAllBundlers

V07_RESULT_KEYS = {
    "preVerificationGas",
    "verificationGasLimit",
    "callGasLimit",
    "paymasterVerificationGasLimit",
    "paymasterPostOpGasLimit",
}
V06_RESULT_KEYS = {"preVerificationGas", "verificationGasLimit", "verificationGas", "callGasLimit"}

# (EntryPoint version, paymaster family); the v0.8 npm package ships no VerifyingPaymaster.
SPONSORED = [("v0.6", "verifying"), ("v0.6", "singleton"), ("v0.7", "verifying"), ("v0.7", "singleton"),
             ("v0.8", "singleton")]  # fmt: skip


class BundlerRejected(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.code = error.get("code")
        self.message = str(error.get("message"))


@pytest.fixture(scope="module", autouse=True)
def chain_as_found(anvil: Anvil, deployment: Deployment) -> Iterator[None]:
    """Put the shared chain back as this module found it (evm_snapshot / evm_revert): the ops it
    submits spend paymaster deposits other tests pin, and Alto deploys its simulation contracts."""
    with DevRpc(anvil.rpc_url) as rpc:
        snapshot = rpc.call("evm_snapshot")
    yield
    with DevRpc(anvil.rpc_url) as rpc:
        assert rpc.call("evm_revert", snapshot) is True


@pytest.fixture(scope="module")
def alto(anvil: Anvil, deployment: Deployment, chain_as_found: None) -> Iterator[Alto]:
    entry_points = list(deployment.entry_points.values())
    with Alto(anvil.rpc_url, entry_points, ANVIL_EXECUTOR_KEYS, ANVIL_UTILITY_KEY) as bundler:
        yield bundler


# -- helpers ----------------------------------------------------------------------------------------


def bundler_call(alto: Alto, method: str, *params: Any) -> Any:
    """One JSON-RPC call (Alto insists on a numeric id); raises BundlerRejected on an error answer."""
    request = {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}
    body = httpx.post(alto.url, json=request, timeout=30.0).json()
    if "error" in body:
        raise BundlerRejected(body["error"])
    return body["result"]


def to_rpc(op: UserOp, version: str) -> dict[str, Any]:
    """The JSON shape bundlers take: v0.6 packs initCode / paymasterAndData, v0.7+ splits them."""
    fields: dict[str, Any] = {"sender": op.sender, "nonce": hex(op.nonce)}
    if version == "v0.6":
        fields |= {"initCode": "0x" + op.init_code().hex()}
    elif op.factory is not None:
        fields |= {"factory": op.factory, "factoryData": "0x" + op.factory_data.hex()}
    fields |= {
        "callData": "0x" + op.call_data.hex(),
        "callGasLimit": hex(op.call_gas_limit),
        "verificationGasLimit": hex(op.verification_gas_limit),
        "preVerificationGas": hex(op.pre_verification_gas),
        "maxFeePerGas": hex(op.max_fee_per_gas),
        "maxPriorityFeePerGas": hex(op.max_priority_fee_per_gas),
    }
    if version == "v0.6":
        fields["paymasterAndData"] = "0x" + op.paymaster_and_data(version).hex()
    elif op.paymaster is not None:
        fields |= {"paymaster": op.paymaster, "paymasterData": "0x" + op.paymaster_data.hex()}
    fields["signature"] = "0x" + op.signature.hex()
    return fields


def estimate(alto: Alto, op: UserOp, version: str, entry_point: str, *overrides: Any) -> dict[str, int]:
    result = bundler_call(alto, "eth_estimateUserOperationGas", to_rpc(op, version), entry_point, *overrides)
    return {key: int(value, 16) for key, value in result.items()}


def counterfactual_op(anvil: Anvil, deployment: Deployment, version: str, salt: int) -> UserOp:
    sender, factory, factory_data = simple_account_init(
        anvil.rpc_url, deployment.factories[version], USER_ADDRESS, SALT_BASE + salt
    )
    return UserOp(
        sender=sender,
        factory=factory,
        factory_data=factory_data,
        call_data=execute_calldata(RECIPIENT, 0, b""),
        signature=STUB_SIGNATURE,  # the account's stub: the owner signs only once gas is known
    )


def paymaster_fields(family: str, valid_until: int, signature: bytes) -> bytes:
    """paymasterData (after the paymaster address and, v0.7+, its two gas limits)."""
    if family == "verifying":  # abi.encode(uint48 validUntil, uint48 validAfter) ‖ signature
        return valid_until.to_bytes(32, "big") + bytes(32) + signature
    # Singleton, verifying mode: mode byte ‖ validUntil(6) ‖ validAfter(6) ‖ signature
    return bytes([SINGLETON_VERIFYING_ALLOW_ALL_BUNDLERS]) + valid_until.to_bytes(6, "big") + bytes(6) + signature


def paymaster_signature(anvil: Anvil, family: str, version: str, op: UserOp, valid_until: int, key: str) -> bytes:
    """The real signature, over the paymaster contract's own ``getHash`` (EIP-191)."""
    op_type = user_op_type(version)
    if family == "verifying":
        unsigned = op.to_tuple(version)
        fn, types, args = f"getHash({op_type},uint48,uint48)", [op_type, "uint48", "uint48"], [unsigned, valid_until, 0]
    else:
        unsigned = replace(op, paymaster_data=op.paymaster_data[: -len(STUB_SIGNATURE)]).to_tuple(version)
        fn, types, args = f"getHash(uint8,{op_type})", ["uint8", op_type], [0, unsigned]
    (digest,) = call_contract(anvil.rpc_url, op.paymaster or "", fn, types, args, ["bytes32"])
    return bytes(Account.sign_message(encode_defunct(primitive=bytes(digest)), key).signature)


def assert_sane(gas: dict[str, int], version: str, sponsored: bool) -> None:
    assert set(gas) == (V06_RESULT_KEYS if version == "v0.6" else V07_RESULT_KEYS)
    # A counterfactual SimpleAccount: deployment + ECDSA validation, a call to an empty account.
    assert 100_000 < gas["verificationGasLimit"] < 1_500_000, gas
    assert 9_000 <= gas["callGasLimit"] < 500_000, gas
    assert 21_000 < gas["preVerificationGas"] < 200_000, gas
    if version != "v0.6":
        if sponsored:
            assert 5_000 < gas["paymasterVerificationGasLimit"] < 300_000, gas
            assert gas["paymasterPostOpGasLimit"] >= 1, gas  # no postOp in verifying mode: Alto says 1
        else:
            assert gas["paymasterVerificationGasLimit"] == gas["paymasterPostOpGasLimit"] == 0, gas


# -- the bundler process ---------------------------------------------------------------------------


def test_alto_serves_every_entry_point_on_loopback_only(alto: Alto, deployment: Deployment) -> None:
    served = bundler_call(alto, "eth_supportedEntryPoints")
    assert [a.lower() for a in served] == [a.lower() for a in deployment.entry_points.values()]
    assert int(bundler_call(alto, "eth_chainId"), 16) == deployment.chain_id
    listening = _listening_addresses(alto.port)
    if listening is None:
        pytest.skip("/proc/net/tcp is not readable here: cannot check the bound address")
    assert listening == {"127.0.0.1"}, "Alto must not listen on all interfaces"


def test_alto_stops_cleanly_and_frees_its_port(anvil: Anvil, deployment: Deployment) -> None:
    bundler = Alto(anvil.rpc_url, [deployment.entry_points["v0.7"]], ANVIL_EXECUTOR_KEYS, ANVIL_UTILITY_KEY)
    with bundler:
        url, log = bundler.url, bundler.log_path
        assert bundler.running
    assert not bundler.running
    assert not log.exists(), "the temporary log directory is removed"
    with pytest.raises(httpx.TransportError):
        httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}, timeout=1.0)


def test_a_failed_start_quotes_alto_log(anvil: Anvil) -> None:
    no_code = "0x000000000000000000000000000000000000dEaD"
    started = time.monotonic()
    with pytest.raises(AltoError, match=rf"(?is)exited with code 1.*entry point {no_code} does not exist"):
        Alto(anvil.rpc_url, [no_code], ANVIL_EXECUTOR_KEYS, ANVIL_UTILITY_KEY, startup_timeout=30.0).start()
    assert time.monotonic() - started < 30.0, "a crash is reported at once, not after the timeout"


# -- gas estimation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v0.6", "v0.7", "v0.8"])
def test_estimates_an_unsponsored_counterfactual_account(
    alto: Alto, anvil: Anvil, deployment: Deployment, version: str
) -> None:
    op = counterfactual_op(anvil, deployment, version, salt=0)
    entry_point = deployment.entry_points[version]

    with pytest.raises(BundlerRejected, match="AA21 didn't pay prefund") as rejected:
        estimate(alto, op, version, entry_point)  # the sender holds nothing and nobody sponsors it
    assert rejected.value.code == -32500

    funded = {op.sender: {"balance": hex(10**18)}}  # the optional third param: state overrides
    assert_sane(estimate(alto, op, version, entry_point, funded), version, sponsored=False)


@pytest.mark.parametrize(("version", "family"), SPONSORED)
def test_estimates_with_stub_paymaster_data_and_the_limits_suffice_on_chain(
    alto: Alto, anvil: Anvil, deployment: Deployment, paymaster_key: str, version: str, family: str
) -> None:
    paymasters = deployment.verifying_paymasters if family == "verifying" else deployment.singleton_paymasters
    entry_point = deployment.entry_points[version]
    valid_until = int(time.time()) + VALID_FOR_S
    op = replace(
        counterfactual_op(anvil, deployment, version, salt=1 + SPONSORED.index((version, family))),
        paymaster=paymasters[version],
        paymaster_data=paymaster_fields(family, valid_until, STUB_SIGNATURE),
    )

    gas = estimate(alto, op, version, entry_point)

    assert_sane(gas, version, sponsored=True)
    # Fill in exactly what the bundler said, sign for real, and submit: the limits must hold.
    op = replace(
        op,
        call_gas_limit=gas["callGasLimit"],
        verification_gas_limit=gas["verificationGasLimit"],
        pre_verification_gas=gas["preVerificationGas"],
        paymaster_verification_gas_limit=gas.get("paymasterVerificationGasLimit", 0),
        paymaster_post_op_gas_limit=gas.get("paymasterPostOpGasLimit", 0),
    )
    signature = paymaster_signature(anvil, family, version, op, valid_until, paymaster_key)
    op = replace(op, paymaster_data=paymaster_fields(family, valid_until, signature))
    op = replace(op, signature=sign_user_op_hash(version, get_user_op_hash(anvil.rpc_url, entry_point, version, op),
                                                 USER_KEY))  # fmt: skip
    result = handle_ops(anvil.rpc_url, entry_point, version, [op.to_tuple(version)])
    assert result.success, result.reason
    assert result.events[0].paymaster == paymasters[version]


@pytest.mark.parametrize(("version", "family"), [("v0.6", "verifying"), ("v0.7", "verifying"),
                                                 ("v0.7", "singleton")])  # fmt: skip
def test_a_malformed_stub_signature_fails_paymaster_validation(
    alto: Alto, anvil: Anvil, deployment: Deployment, version: str, family: str
) -> None:
    """Why the stub carries a well-formed signature: all-zero bytes make ECDSA.recover revert."""
    paymasters = deployment.verifying_paymasters if family == "verifying" else deployment.singleton_paymasters
    op = replace(
        counterfactual_op(anvil, deployment, version, salt=90),
        paymaster=paymasters[version],
        paymaster_data=paymaster_fields(family, 0, bytes(65)),
    )
    with pytest.raises(BundlerRejected, match="AA33 reverted") as rejected:
        estimate(alto, op, version, deployment.entry_points[version])
    assert rejected.value.code == -32501  # ERC-7769: rejected by paymaster


def test_a_singleton_stub_must_allow_all_bundlers(alto: Alto, anvil: Anvil, deployment: Deployment) -> None:
    """Estimation runs as an eth_call whose tx.origin is no allowed bundler: a stub that leaves the
    allowAllBundlers bit clear reverts (BundlerNotAllowed) and gets no estimate."""
    op = replace(
        counterfactual_op(anvil, deployment, "v0.7", salt=91),
        paymaster=deployment.singleton_paymasters["v0.7"],
        paymaster_data=bytes([0]) + bytes(12) + STUB_SIGNATURE,
    )
    with pytest.raises(BundlerRejected, match="AA33 reverted"):
        estimate(alto, op, "v0.7", deployment.entry_points["v0.7"])


def _listening_addresses(port: int) -> set[str] | None:
    """IPv4/IPv6 addresses with a socket listening on ``port`` (Linux ``/proc/net``), or None."""
    if not Path("/proc/net/tcp").exists():
        return None
    found: set[str] = set()
    for table in ("tcp", "tcp6"):
        path = Path("/proc/net") / table
        if not path.exists():  # no IPv6 on this machine
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.rsplit(":", 1)
            if state == "0A" and int(port_hex, 16) == port:  # 0A = LISTEN
                if len(address) == 8:
                    found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
                else:
                    found.add("::" if int(address, 16) == 0 else address)
    return found
