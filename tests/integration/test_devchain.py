"""The dev chain itself: anvil starts and stops, the sandbox deployment is complete and
idempotent, and a real userOp goes through every EntryPoint version (no paymaster yet).

These tests prove ``tests/support/onchain.py`` (packing, signing, ``handleOps`` decoding) against
the real contracts, so paymaster tests can build on it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import httpx
import pytest

from anode.devchain.anvil import Anvil
from anode.devchain.artifacts import DevChainSetupError, load_artifact
from anode.devchain.deploy import (
    CANONICAL_ENTRY_POINTS,
    DEFAULT_DEPOSIT_WEI,
    DEFAULT_STAKE_WEI,
    DETERMINISTIC_DEPLOYER,
    ENTRY_POINT_SALTS,
    Deployment,
    create2_address,
    deploy_sandbox,
)
from anode.devchain.rpc import DevRpc
from tests.support.onchain import (
    USER_ADDRESS,
    USER_KEY,
    UserOp,
    call_contract,
    execute_calldata,
    get_deposit,
    get_nonce,
    get_user_op_hash,
    handle_ops,
    set_balance,
    sign_user_op_hash,
    simple_account_init,
)

VERSIONS = ("v0.6", "v0.7", "v0.8")
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"


def _paymasters(deployment: Deployment) -> list[tuple[str, str]]:
    return [*deployment.verifying_paymasters.items(), *deployment.singleton_paymasters.items()]


def test_anvil_stops_and_frees_its_port() -> None:
    node = Anvil(chain_id=1337)
    with node:
        with DevRpc(node.rpc_url) as rpc:
            assert rpc.chain_id() == 1337
        assert node.running
    assert not node.running
    with pytest.raises(httpx.TransportError), DevRpc(node.rpc_url, timeout=1.0) as rpc:
        rpc.chain_id()


def test_entry_point_artifacts_hash_to_canonical_addresses() -> None:
    """The npm artifacts with the canonical salts need no ``anvil_setCode`` copy (v0.6 included)."""
    for version, canonical in CANONICAL_ENTRY_POINTS.items():
        init_code = load_artifact(version, "EntryPoint").bytecode
        assert create2_address(ENTRY_POINT_SALTS[version], init_code) == canonical, version


def test_entry_points_land_on_canonical_addresses(anvil: Anvil, deployment: Deployment) -> None:
    assert deployment.entry_points == CANONICAL_ENTRY_POINTS
    with DevRpc(anvil.rpc_url) as rpc:
        for address in [*deployment.entry_points.values(), *deployment.factories.values()]:
            assert rpc.get_code(address), f"no code at {address}"
    assert set(deployment.verifying_paymasters) == {"v0.6", "v0.7"}
    assert set(deployment.singleton_paymasters) == set(VERSIONS)


def test_paymasters_are_funded_and_staked(anvil: Anvil, deployment: Deployment) -> None:
    for version, paymaster in _paymasters(deployment):
        entry_point = deployment.entry_points[version]
        assert get_deposit(anvil.rpc_url, entry_point, paymaster) > DEFAULT_DEPOSIT_WEI // 2
        info_types = ["uint256", "bool", "uint256", "uint32", "uint48"]
        info = call_contract(
            anvil.rpc_url, entry_point, "getDepositInfo(address)", ["address"], [paymaster], info_types
        )
        assert info[1:4] == (True, DEFAULT_STAKE_WEI, 86_400), (version, paymaster)


def test_paymasters_trust_the_configured_signer(anvil: Anvil, deployment: Deployment, paymaster_address: str) -> None:
    for version, paymaster in deployment.verifying_paymasters.items():
        (signer,) = call_contract(anvil.rpc_url, paymaster, "verifyingSigner()", return_types=["address"])
        (owner,) = call_contract(anvil.rpc_url, paymaster, "owner()", return_types=["address"])
        assert (signer.lower(), owner.lower()) == (paymaster_address.lower(), deployment.owner.lower()), version
    for version, paymaster in deployment.singleton_paymasters.items():
        for candidate, expected in ((paymaster_address, True), (USER_ADDRESS, False)):
            (trusted,) = call_contract(anvil.rpc_url, paymaster, "signers(address)", ["address"], [candidate], ["bool"])
            assert trusted is expected, (version, candidate)
        (admin,) = call_contract(
            anvil.rpc_url, paymaster, "hasRole(bytes32,address)", ["bytes32", "address"],
            [bytes(32), deployment.owner], ["bool"],
        )  # fmt: skip
        assert admin, version


def test_deploy_is_idempotent(anvil: Anvil, deployment: Deployment, paymaster_address: str) -> None:
    before = {pm: get_deposit(anvil.rpc_url, deployment.entry_points[v], pm) for v, pm in _paymasters(deployment)}
    again = deploy_sandbox(anvil.rpc_url, [paymaster_address])
    assert again == deployment
    after = {pm: get_deposit(anvil.rpc_url, again.entry_points[v], pm) for v, pm in _paymasters(again)}
    # nothing is redeployed; deposits spent by earlier tests are topped up to the default again
    assert after == {pm: max(value, DEFAULT_DEPOSIT_WEI) for pm, value in before.items()}


def test_v06_entry_point_takes_deposits(anvil: Anvil, deployment: Deployment) -> None:
    entry_point = deployment.entry_points["v0.6"]
    account = "0x000000000000000000000000000000000000bEEF"
    with DevRpc(anvil.rpc_url) as rpc:
        sender = rpc.accounts()[3]
        data = bytes.fromhex("b760faf9") + bytes(12) + bytes.fromhex(account[2:])  # depositTo(address)
        rpc.transact(sender, entry_point, data, value=12345)
    assert get_deposit(anvil.rpc_url, entry_point, account) == 12345


def test_concurrent_sends_from_one_account_all_land(anvil: Anvil) -> None:
    # Without the per-account send lock in DevRpc.transact, anvil hands two of these the same
    # nonce and refuses one ("nonce too low" / "replacement transaction underpriced"): the
    # failover test under load submits its samples this way.
    recipient = "0x000000000000000000000000000000000000dEaD"
    with DevRpc(anvil.rpc_url) as rpc:
        sender = rpc.accounts()[5]
        before = int(rpc.call("eth_getBalance", recipient, "latest"), 16)

    def send(_: int) -> str:
        with DevRpc(anvil.rpc_url) as own:
            return str(own.transact(sender, recipient, value=1)["status"])

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(send, range(96)))
    assert statuses == ["0x1"] * 96
    with DevRpc(anvil.rpc_url) as rpc:
        assert int(rpc.call("eth_getBalance", recipient, "latest"), 16) == before + 96


def _counterfactual_op(anvil: Anvil, deployment: Deployment, version: str, salt: int, recipient: str) -> UserOp:
    factory = deployment.factories[version]
    sender, factory, factory_data = simple_account_init(anvil.rpc_url, factory, USER_ADDRESS, salt)
    set_balance(anvil.rpc_url, sender, 10**18)
    return UserOp(
        sender=sender,
        nonce=get_nonce(anvil.rpc_url, deployment.entry_points[version], sender),
        factory=factory,
        factory_data=factory_data,
        call_data=execute_calldata(recipient, 12_345, b""),
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_counterfactual_account_deploys_and_calls(anvil: Anvil, deployment: Deployment, version: str) -> None:
    entry_point = deployment.entry_points[version]
    recipient = f"0x{'ab' * 19}{VERSIONS.index(version):02x}"
    op = _counterfactual_op(anvil, deployment, version, salt=100 + VERSIONS.index(version), recipient=recipient)
    user_op_hash = get_user_op_hash(anvil.rpc_url, entry_point, version, op)
    signed = replace(op, signature=sign_user_op_hash(version, user_op_hash, USER_KEY))

    result = handle_ops(anvil.rpc_url, entry_point, version, [signed.to_tuple(version)])

    assert result.success, result.reason
    (event,) = result.events
    assert (event.user_op_hash, event.sender, event.paymaster) == (user_op_hash, op.sender, ZERO_ADDRESS)
    assert event.actual_gas_cost > 0
    with DevRpc(anvil.rpc_url) as rpc:
        assert rpc.get_code(op.sender), "account was not deployed"
        assert rpc.get_balance(recipient) == 12_345


@pytest.mark.parametrize("version", VERSIONS)
def test_wrong_signature_is_reported_as_aa24(anvil: Anvil, deployment: Deployment, version: str) -> None:
    entry_point = deployment.entry_points[version]
    op = _counterfactual_op(anvil, deployment, version, salt=200 + VERSIONS.index(version), recipient=ZERO_ADDRESS)
    user_op_hash = get_user_op_hash(anvil.rpc_url, entry_point, version, op)
    other_form = "v0.8" if version != "v0.8" else "v0.7"  # the right key over the wrong hash form
    signed = replace(op, signature=sign_user_op_hash(other_form, user_op_hash, USER_KEY))

    result = handle_ops(anvil.rpc_url, entry_point, version, [signed.to_tuple(version)])

    assert not result.success
    assert result.reason == "AA24 signature error"
    assert result.tx_hash is None


def test_v06_entry_point_copied_onto_canonical_address_still_works() -> None:
    """The ``anvil_setCode`` fallback: an EntryPoint deployed elsewhere, its runtime code copied
    onto the canonical address (immutables and all), takes deposits and runs a real handleOps."""
    with Anvil() as node:
        with DevRpc(node.rpc_url) as rpc:
            init_code = load_artifact("v0.6", "EntryPoint").bytecode
            salt = (1).to_bytes(32, "big")
            elsewhere = create2_address(salt, init_code)
            rpc.transact(rpc.accounts()[0], DETERMINISTIC_DEPLOYER, salt + init_code)
            rpc.set_code(CANONICAL_ENTRY_POINTS["v0.6"], rpc.get_code(elsewhere))
        deployment = deploy_sandbox(node.rpc_url, [USER_ADDRESS])
        entry_point = deployment.entry_points["v0.6"]
        assert get_deposit(node.rpc_url, entry_point, deployment.singleton_paymasters["v0.6"]) > 0
        assert get_deposit(node.rpc_url, elsewhere, deployment.singleton_paymasters["v0.6"]) == 0
        op = _counterfactual_op(node, deployment, "v0.6", salt=1, recipient=ZERO_ADDRESS)
        user_op_hash = get_user_op_hash(node.rpc_url, entry_point, "v0.6", op)
        signed = replace(op, signature=sign_user_op_hash("v0.6", user_op_hash, USER_KEY))
        result = handle_ops(node.rpc_url, entry_point, "v0.6", [signed.to_tuple("v0.6")])
        assert result.success, result.reason
        assert result.events[0].user_op_hash == user_op_hash


def test_deploy_with_an_owner_anvil_does_not_hold() -> None:
    owner = "0x1111111111111111111111111111111111111111"
    with Anvil() as node:
        deployment = deploy_sandbox(node.rpc_url, [USER_ADDRESS], owner=owner)
        for version, paymaster in deployment.verifying_paymasters.items():
            (current,) = call_contract(node.rpc_url, paymaster, "owner()", return_types=["address"])
            assert current == owner, version
        for version, paymaster in deployment.singleton_paymasters.items():
            (admin,) = call_contract(
                node.rpc_url, paymaster, "hasRole(bytes32,address)", ["bytes32", "address"],
                [bytes(32), owner], ["bool"],
            )  # fmt: skip
            assert admin, version


def test_missing_node_modules_says_to_run_npm_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANODE_NODE_MODULES", "/nonexistent/node_modules")
    with pytest.raises(DevChainSetupError, match="npm install"):
        Anvil().start()


def test_a_busy_port_is_refused(anvil: Anvil) -> None:
    with pytest.raises(DevChainSetupError, match="already in use"):
        Anvil(port=anvil.port).start()
