"""The pipeline as a client meets it: module order and concurrency, blocks and warnings on every
way in (ERC-7677, REST), /process reports, compensations when signing fails, API key kinds.

The modules here are test doubles registered under test names (``tests/pipeline/fakes.py``); the
real modules have their own suites. No chain is needed: v0.7 paymaster data needs no node.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from eth_account import Account
from eth_account.messages import encode_defunct

from anode.api.app import create_app
from anode.config import validate_settings
from anode.errors import ConfigError, SignerUnavailable
from anode.paymasters.base import GasDefaults, ValidityWindow
from anode.paymasters.verifying import VerifyingPaymaster
from anode.pipeline import registry
from anode.signers.base import SignedDigest
from anode.userop.codec import parse_address, to_hex
from anode.userop.hashing import user_op_hash
from anode.userop.models import parse_user_op
from anode.userop.versions import EntryPointVersion
from anode.wiring import Anode, build
from tests.pipeline import fakes
from tests.support.fake_bundler import FakeBundler

EP07 = "0x0000000071727De22E5E9d8BAf0edAc6f37da032"
PM07 = "0x0707070707070707070707070707070707070707"
PROJECT_KEY = "project-key-1"
ADMIN_KEY = "admin-key-1"
SIGNER = Account.from_key("0x" + "5a" * 32).address
OP = {
    "sender": "0x" + "a1" * 20,
    "nonce": "0x1",
    "callData": "0x",
    "callGasLimit": "0x10000",
    "verificationGasLimit": "0x10000",
    "preVerificationGas": "0x5000",
    "maxFeePerGas": "0x3b9aca00",
    "maxPriorityFeePerGas": "0x1",
}


@pytest.fixture(autouse=True)
def fake_modules(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    fakes.reset()
    for name in ("check_a", "check_b", "policy_a", "policy_b"):
        monkeypatch.setitem(registry.MODULES, name, "tests.pipeline.fakes")
    yield
    fakes.reset()


@pytest.fixture
def dead_node() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def tree(tmp_path: Path, node: str, modules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "database_url": f"sqlite:///{tmp_path / 'anode.db'}",
        "signer": {"type": "local", "private_key": "0x" + "5a" * 32},
        "auth": {"api_keys": [PROJECT_KEY], "admin_keys": [ADMIN_KEY]},
        "chains": [
            {
                "chain_id": 31337,
                "rpc_url": node,
                "paymasters": [{"entry_point": EP07, "address": PM07, "contract": "verifying"}],
            }
        ],
        "pipeline": {"modules": modules},
    }


def module(name: str, **config: Any) -> dict[str, Any]:
    return {"name": name, "config": {"name": name, **config}}


@pytest.fixture
async def bundler() -> AsyncIterator[FakeBundler]:
    yield FakeBundler()


@pytest.fixture
async def make_client(tmp_path: Path, dead_node: str, bundler: FakeBundler) -> AsyncIterator[Any]:
    anodes: list[Anode] = []
    clients: list[httpx.AsyncClient] = []
    stack = contextlib.AsyncExitStack()

    async def make(modules: list[dict[str, Any]], *, with_bundler: bool = False) -> tuple[httpx.AsyncClient, Anode]:
        config = tree(tmp_path, dead_node, modules)
        if with_bundler:
            config["chains"][0]["bundler_url"] = await stack.enter_async_context(bundler.serving())
        anode = build(validate_settings(config))
        app = create_app(anode, manage_lifecycle=False)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://anode")
        anodes.append(anode)
        clients.append(client)
        return client, anode

    yield make
    for client in clients:
        await client.aclose()
    for anode in anodes:
        await anode.aclose()
    await stack.aclose()


async def rpc(client: httpx.AsyncClient, method: str, params: list[Any], key: str = PROJECT_KEY) -> Any:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    return (await client.post("/api/v1/rpc", json=body, headers={"authorization": f"Bearer {key}"})).json()


SIGN = {"name": "paymaster_signer"}


async def test_checks_run_concurrently_and_policies_after_them(make_client: Any) -> None:
    # check_a waits for an event only check_b sets: run one after the other, check_a would time out.
    client, _ = await make_client(
        [
            module("check_a", wait_for="b-ran"),
            module("check_b", release="b-ran"),
            module("policy_a", stage="policy"),
            SIGN,
        ]
    )
    reply = await rpc(client, "pm_getPaymasterData", [OP, EP07, "0x7a69", {}])
    assert "result" in reply, reply
    assert [seen["name"] for seen in fakes.SEEN][-1] == "policy_a"
    assert {seen["name"] for seen in fakes.SEEN[:2]} == {"check_a", "check_b"}
    assert all(seen["final"] for seen in fakes.SEEN) and fakes.SEEN[0]["max_gas_cost"] > 0


async def test_a_block_is_the_same_decision_on_every_way_in(make_client: Any) -> None:
    client, _ = await make_client(
        [module("check_a", verdict="block", code="ANODE_001_SBT_NOT_FOUND", message="no SBT"), SIGN]
    )
    for method in ("pm_getPaymasterStubData", "pm_getPaymasterData"):
        reply = await rpc(client, method, [OP, EP07, "0x7a69", {}])
        assert reply["error"]["code"] == -32501
        assert reply["error"]["data"]["anodeCode"] == "ANODE_001_SBT_NOT_FOUND"
        assert reply["error"]["message"] == "no SBT"
    body = {"userOperation": OP, "entryPoint": EP07, "chainId": 31337}
    for path in ("/api/v1/paymaster/sponsor", "/api/v1/paymaster/process"):
        response = await client.post(path, json=body, headers={"authorization": f"Bearer {PROJECT_KEY}"})
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "ANODE_001_SBT_NOT_FOUND"
        assert response.json()["error"]["details"]["processing"]["modules"][0]["status"] == "block"
    assert (await client.get("/api/v1/operations", headers={"authorization": f"Bearer {PROJECT_KEY}"})).json()[
        "count"
    ] == 0


async def test_stub_calls_run_checks_but_reserve_nothing(make_client: Any) -> None:
    client, _ = await make_client([module("policy_a", stage="policy", reserve=True), SIGN])
    assert "result" in await rpc(client, "pm_getPaymasterStubData", [OP, EP07, "0x7a69", {}])
    assert fakes.SEEN[0]["final"] is False


async def test_a_disabled_module_is_skipped(make_client: Any) -> None:
    client, _ = await make_client([{**module("check_a", verdict="block"), "enabled": False}, SIGN])
    assert "result" in await rpc(client, "pm_getPaymasterData", [OP, EP07, "0x7a69", {}])
    assert fakes.SEEN == []


def test_an_unknown_module_name_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pipeline.modules\[0\]: unknown module 'sbt_validatr'"):
        build(validate_settings(tree(tmp_path, "http://127.0.0.1:1", [{"name": "sbt_validatr", "enabled": False}])))


def test_bad_module_config_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"pipeline.modules\[0\] \(check_a\).config.verdict"):
        build(validate_settings(tree(tmp_path, "http://127.0.0.1:1", [module("check_a", verdict="maybe")])))


async def test_a_warning_asks_for_confirmation(make_client: Any) -> None:
    client, _ = await make_client([module("check_a", verdict="warning", code="ANODE_021_CONFIRMATION_REQUIRED"), SIGN])
    body = {"userOperation": OP, "entryPoint": EP07, "chainId": 31337}
    response = await client.post(
        "/api/v1/paymaster/process", json=body, headers={"authorization": f"Bearer {PROJECT_KEY}"}
    )
    assert response.status_code == 200
    answer = response.json()
    assert answer["status"] == "requires_confirmation" and answer["requiresConfirmation"] is True
    assert answer["confirmationToken"] == "tok-123" and answer["securityWarning"]["riskScore"] == 50
    reply = await rpc(client, "pm_getPaymasterData", [OP, EP07, "0x7a69", {}])
    assert reply["error"]["data"]["anodeCode"] == "ANODE_021_CONFIRMATION_REQUIRED"
    assert reply["error"]["data"]["confirmationToken"] == "tok-123"


async def test_process_reports_every_module_and_signs(make_client: Any) -> None:
    client, _ = await make_client([module("check_a"), module("policy_a", stage="policy"), SIGN])
    body = {"userOperation": OP, "entryPoint": EP07, "chainId": 31337}
    answer = (
        await client.post("/api/v1/paymaster/process", json=body, headers={"authorization": f"Bearer {PROJECT_KEY}"})
    ).json()
    assert answer["status"] == "sponsored" and answer["paymasterData"].startswith("0x")
    assert [m["name"] for m in answer["processing"]["modules"]] == ["check_a", "policy_a"]
    assert all(m["status"] == "continue" and m["duration"] >= 0 for m in answer["processing"]["modules"])
    rpc_answer = await rpc(client, "anode_processUserOperation", [OP, EP07, "0x7a69", {}])
    assert rpc_answer["result"]["status"] == "sponsored"


async def test_signing_disabled_answers_the_decision_only(make_client: Any) -> None:
    client, _ = await make_client([module("check_a"), {"name": "paymaster_signer", "enabled": False}])
    body = {"userOperation": OP, "entryPoint": EP07, "chainId": 31337}
    answer = (
        await client.post("/api/v1/paymaster/process", json=body, headers={"authorization": f"Bearer {PROJECT_KEY}"})
    ).json()
    assert answer["status"] == "approved" and "paymasterData" not in answer
    reply = await rpc(client, "pm_getPaymasterData", [OP, EP07, "0x7a69", {}])
    assert reply["error"]["data"]["anodeCode"] == "ANODE_030_SIGNING_DISABLED"


class BrokenSigner:
    backend = "broken"
    address = "0x" + "00" * 20

    async def unsafe_sign_hash(self, digest: bytes) -> SignedDigest:
        raise SignerUnavailable("the signer is down")

    async def aclose(self) -> None:
        return None


async def test_reservations_are_released_when_signing_fails(make_client: Any) -> None:
    client, anode = await make_client([module("policy_a", stage="policy", reserve=True), SIGN])
    anode.service.signer = BrokenSigner()
    reply = await rpc(client, "pm_getPaymasterData", [OP, EP07, "0x7a69", {}])
    assert reply["error"]["data"]["anodeCode"] == "ANODE_SIGNER_UNAVAILABLE"
    assert fakes.UNDONE == ["policy_a"]


async def test_a_failing_check_waits_for_the_others_and_undoes_what_they_took(make_client: Any) -> None:
    # check_b takes something (a confirmation token, say) after check_a has already failed: its
    # compensation must still run, or the token stays spent for an operation nobody signed
    client, _ = await make_client([module("check_a", fail=True), module("check_b", delay_s=0.05, reserve=True), SIGN])
    reply = await rpc(client, "pm_getPaymasterData", [OP, EP07, "0x7a69", {}])
    assert "node is down" in reply["error"]["message"]
    assert fakes.UNDONE == ["check_b"]


async def test_signing_disabled_still_answers_a_warning_with_its_confirmation(make_client: Any) -> None:
    client, _ = await make_client(
        [module("check_a", verdict="warning"), {"name": "paymaster_signer", "enabled": False}]
    )
    body = {"userOperation": OP, "entryPoint": EP07, "chainId": 31337}
    reply = await client.post(
        "/api/v1/paymaster/process", json=body, headers={"authorization": f"Bearer {PROJECT_KEY}"}
    )
    answer = reply.json()
    assert reply.status_code == 200, answer
    assert answer["requiresConfirmation"] is True and answer["confirmationToken"] == "tok-123"


UNESTIMATED = {name: value for name, value in OP.items() if not name.endswith(("GasLimit", "VerificationGas"))}


async def test_sponsor_user_operation_asks_the_pipeline_before_the_bundler(
    make_client: Any, bundler: FakeBundler
) -> None:
    client, _ = await make_client([module("check_a", verdict="block"), SIGN], with_bundler=True)
    for method in ("pm_sponsorUserOperation", "anode_sponsorUserOperation"):
        reply = await rpc(client, method, [UNESTIMATED, EP07])
        assert reply["error"]["data"]["anodeCode"] == "ANODE_999_FAKE", reply  # as pm_getPaymasterData answers
    assert bundler.estimates == 0, "a refused operation costs no bundler call"


async def test_sponsor_user_operation_checks_first_and_reserves_once_on_the_estimate(
    make_client: Any, bundler: FakeBundler
) -> None:
    client, _ = await make_client(
        [module("check_a"), module("policy_a", stage="policy", reserve=True), SIGN], with_bundler=True
    )
    reply = await rpc(client, "pm_sponsorUserOperation", [UNESTIMATED, EP07])
    assert reply["result"]["callGasLimit"] == "0x20000", reply
    assert bundler.estimates == 1
    assert [(seen["name"], seen["final"]) for seen in fakes.SEEN] == [
        ("check_a", False), ("policy_a", False), ("check_a", True), ("policy_a", True),
    ]  # fmt: skip
    preflight, final = fakes.SEEN[1]["max_gas_cost"], fakes.SEEN[-1]["max_gas_cost"]
    estimated = (0x20000 + 0x30000 + 0x6000) * 0x3B9ACA00  # on top of the paymaster's own gas limits
    assert final == preflight + estimated, "the reservation counts the estimated limits"
    assert fakes.UNDONE == []


def _answered_op(reply: dict[str, Any], request: dict[str, Any]) -> Any:
    """The operation a wallet submits: its own fields, with the answer's fields over them."""
    fields = {**request, **reply["result"]}
    return parse_user_op(fields, EntryPointVersion.V07)


@pytest.mark.parametrize("method", ["pm_getPaymasterData", "pm_sponsorUserOperation"])
async def test_the_answer_is_the_operation_that_was_signed(make_client: Any, method: str) -> None:
    """A module shapes the operation (here its paymaster gas limit): the signature in the answer
    recovers to the paymaster's signer over the getHash of the operation the answer describes,
    and the recorded userOp hash is that operation's."""
    client, _ = await make_client([module("policy_a", stage="policy", paymaster_gas=0x12345), SIGN], with_bundler=True)
    request = OP if method == "pm_getPaymasterData" else UNESTIMATED
    params = [request, EP07, "0x7a69", {}] if method == "pm_getPaymasterData" else [request, EP07]
    reply = await rpc(client, method, params)
    answered = _answered_op(reply, request)
    family = VerifyingPaymaster(parse_address(PM07), EntryPointVersion.V07, GasDefaults(0, 0))
    window = ValidityWindow(
        int.from_bytes(answered.paymaster_data[:32], "big"), int.from_bytes(answered.paymaster_data[32:64], "big")
    )
    digest = family.digest(answered, window, 31337, 0)
    signature = answered.paymaster_data[64:]
    assert Account.recover_message(encode_defunct(primitive=digest), signature=signature) == SIGNER
    assert answered.paymaster_verification_gas_limit == 0x12345, "the limit the module set is the one answered"
    (row,) = (await client.get("/api/v1/operations", headers={"authorization": f"Bearer {ADMIN_KEY}"})).json()[
        "operations"
    ]
    assert row["user_op_hash"] == to_hex(user_op_hash(answered, EntryPointVersion.V07, parse_address(EP07), 31337))


async def test_admin_endpoints_need_an_admin_key(make_client: Any) -> None:
    client, _ = await make_client([SIGN])
    made = await client.post("/api/v1/keys", json={"name": "ci"}, headers={"authorization": f"Bearer {PROJECT_KEY}"})
    assert made.status_code == 403 and made.json()["error"]["code"] == "ANODE_FORBIDDEN"
    made = await client.post("/api/v1/keys", json={"name": "ci"}, headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert made.status_code == 201
    new_key = made.json()["key"]
    assert "result" in await rpc(client, "pm_getPaymasterStubData", [OP, EP07, "0x7a69", {}], key=new_key)
    listed = (await client.get("/api/v1/keys", headers={"authorization": f"Bearer {ADMIN_KEY}"})).json()["keys"]
    assert [k["name"] for k in listed] == ["ci"] and "key" not in listed[0]
    revoked = await client.delete(f"/api/v1/keys/{made.json()['id']}", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert revoked.status_code == 200
    reply = await client.post(
        "/api/v1/rpc",
        json={"jsonrpc": "2.0", "id": 1, "method": "pm_supportedEntryPoints", "params": []},
        headers={"authorization": f"Bearer {new_key}"},
    )
    assert reply.status_code == 401


def test_cli_makes_keys_that_the_server_accepts(tmp_path: Path, dead_node: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tree(tmp_path, dead_node, [SIGN])))
    made = subprocess.run(
        [sys.executable, "-m", "anode.cli", "keys", "create", "--admin", "--name", "ops", "--config", str(config)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    plaintext = made.stdout.strip().splitlines()[-1]
    assert plaintext.startswith("anode_") and "admin key" in made.stdout
    listed = subprocess.run(
        [sys.executable, "-m", "anode.cli", "keys", "list", "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "admin" in listed.stdout and plaintext not in listed.stdout


async def test_the_checks_cache_keeps_at_most_server_cache_max_entries(tmp_path: Path, dead_node: str) -> None:
    """``server.cache_max_entries`` bounds the chain-read cache the modules share: one entry past it
    drops the least recently used one (read again from the chain on its next use)."""
    config = tree(tmp_path, dead_node, [module("check_a")])
    config["server"] = {"cache_max_entries": 1_000}
    anode = build(validate_settings(config))
    try:
        assert anode.deps is not None
        cache, loads = anode.deps.cache, []

        async def load(key: str) -> str:
            loads.append(key)
            return key

        for n in range(1_001):
            await cache.get_or_load(f"k{n}", 60, functools.partial(load, f"k{n}"))
        await cache.get_or_load("k1000", 60, functools.partial(load, "k1000"))  # kept: the newest
        await cache.get_or_load("k0", 60, functools.partial(load, "k0"))  # dropped: read again
        assert loads[1_001:] == ["k0"]
    finally:
        await anode.aclose()
