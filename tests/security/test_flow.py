"""The security filter as a wallet meets it, on anvil: ERC-7677 stub → confirmation → final data,
``/process``, a token that outlives a restart, refusals with their codes, and
``POST /api/v1/security/assess``.

The server is the real application (in process, ``httpx.ASGITransport``) reading a real chain:
contracts are deployed on anvil and aged by mining blocks. v0.7 paymaster data needs no
paymaster contract, so the paymaster address is a placeholder.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from eth_abi import encode
from eth_utils.address import to_checksum_address

from anode.api.app import create_app
from anode.config import validate_settings
from anode.devchain.anvil import Anvil
from anode.pipeline.security.decode import EXECUTE
from anode.store.confirmations import confirmations
from anode.wiring import Anode, build
from tests.security.test_deployment import deploy, mine

EP07 = "0x0000000071727De22E5E9d8BAf0edAc6f37da032"
PM07 = "0x0707070707070707070707070707070707070707"
KEY_A, KEY_B = "security-key-a", "security-key-b"
SENDER = to_checksum_address("0x" + "a1" * 20)
BAD = to_checksum_address("0x" + "0b" * 20)
WINDOW = 20  # blocks: younger contracts are "recent"


@pytest.fixture(scope="module")
def contracts(anvil: Anvil) -> dict[str, str]:
    """An old contract (``WINDOW`` + 10 blocks) and a fresh one."""
    old, _ = deploy(anvil.rpc_url)
    mine(anvil.rpc_url, WINDOW + 10)
    fresh, _ = deploy(anvil.rpc_url)
    return {"old": old, "fresh": fresh}


def tree(tmp_path: Path, rpc_url: str) -> dict[str, Any]:
    return {
        "database_url": f"sqlite:///{tmp_path / 'anode.db'}",
        "signer": {"type": "local", "private_key": "0x" + "5a" * 32},
        "auth": {"api_keys": [KEY_A, KEY_B]},
        "chains": [
            {
                "chain_id": 31337,
                "rpc_url": rpc_url,
                "paymasters": [{"entry_point": EP07, "address": PM07, "contract": "verifying"}],
            }
        ],
        "pipeline": {
            "modules": [
                {
                    "name": "security_filter",
                    "config": {"blacklist_contracts": [BAD], "recent_deployment_blocks": WINDOW},
                },
                {"name": "paymaster_signer"},
            ]
        },
    }


@pytest.fixture
async def servers(tmp_path: Path, anvil: Anvil) -> AsyncIterator[Callable[[], Any]]:
    """Start a server (each call: a new process, as far as state goes) on the same database."""
    started: list[tuple[Anode, httpx.AsyncClient]] = []

    async def start() -> tuple[Anode, httpx.AsyncClient]:
        anode = build(validate_settings(tree(tmp_path, anvil.rpc_url)))
        app = create_app(anode, manage_lifecycle=False)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://anode")
        started.append((anode, client))
        return anode, client

    yield start
    for anode, client in started:
        await client.aclose()
        await anode.aclose()


def op(target: str, *, gas: bool = True, data: bytes = b"\x01\x02\x03\x04") -> dict[str, Any]:
    call_data = EXECUTE + encode(["address", "uint256", "bytes"], [target, 0, data])
    fields: dict[str, Any] = {"sender": SENDER, "nonce": "0x7", "callData": "0x" + call_data.hex()}
    if gas:
        fields |= {
            "callGasLimit": "0x186a0",
            "verificationGasLimit": "0x30d40",
            "preVerificationGas": "0xc350",
            "maxFeePerGas": "0x3b9aca00",
            "maxPriorityFeePerGas": "0x1",
        }
    return fields


async def rpc(client: httpx.AsyncClient, method: str, params: list[Any], key: str = KEY_A) -> dict[str, Any]:
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    reply: dict[str, Any] = (
        await client.post("/api/v1/rpc", json=body, headers={"authorization": f"Bearer {key}"})
    ).json()
    return reply


def erc7677(user_op: dict[str, Any], token: str | None = None) -> list[Any]:
    return [user_op, EP07, "0x7a69", {} if token is None else {"confirmationToken": token}]


async def test_a_wallet_confirms_a_risky_operation(servers: Any, contracts: dict[str, str]) -> None:
    _, client = await servers()
    fresh = op(contracts["fresh"])
    # the stub already says the user must confirm, and hands out the token
    warned = await rpc(client, "pm_getPaymasterStubData", erc7677(op(contracts["fresh"], gas=False)))
    error = warned["error"]
    assert error["code"] == -32501 and error["data"]["anodeCode"] == "ANODE_021_CONFIRMATION_REQUIRED"
    assert "confirmation" in error["message"] and error["data"]["requiresConfirmation"] is True
    warning = error["data"]["securityWarning"]
    assert warning["riskScore"] == 45 and warning["riskLevel"] == "high"
    assert {f["type"] for f in warning["riskFactors"]} == {"unverified_contract", "recent_deployment"}
    token = error["data"]["confirmationToken"]
    # the user confirmed: stub (estimating with it) and final data both go through with the token
    stub = await rpc(client, "pm_getPaymasterStubData", erc7677(op(contracts["fresh"], gas=False), token))
    assert stub["result"]["paymaster"] == PM07
    signed = await rpc(client, "pm_getPaymasterData", erc7677(fresh, token))
    assert signed["result"]["paymasterData"].startswith("0x") and len(signed["result"]["paymasterData"]) > 130
    # once only
    again = await rpc(client, "pm_getPaymasterData", erc7677(fresh, token))
    assert again["error"]["data"]["anodeCode"] == "ANODE_022_CONFIRMATION_INVALID"
    assert again["error"]["data"]["reason"] == "reused" and "already used" in again["error"]["message"]


async def test_a_token_is_bound_to_its_key_and_operation(servers: Any, contracts: dict[str, str]) -> None:
    _, client = await servers()
    warned = await rpc(client, "pm_getPaymasterStubData", erc7677(op(contracts["fresh"], gas=False)))
    token = warned["error"]["data"]["confirmationToken"]
    foreign = await rpc(client, "pm_getPaymasterData", erc7677(op(contracts["fresh"]), token), key=KEY_B)
    assert foreign["error"]["data"]["reason"] == "other_key" and "another API key" in foreign["error"]["message"]
    other = await rpc(client, "pm_getPaymasterData", erc7677(op(contracts["fresh"]) | {"nonce": "0x8"}, token))
    assert other["error"]["data"]["reason"] == "other_operation"
    mine_ = await rpc(client, "pm_getPaymasterData", erc7677(op(contracts["fresh"]), token))
    assert "result" in mine_


async def test_a_token_survives_a_restart(servers: Any, contracts: dict[str, str]) -> None:
    _, before = await servers()
    warned = await rpc(before, "pm_getPaymasterStubData", erc7677(op(contracts["fresh"], gas=False)))
    token = warned["error"]["data"]["confirmationToken"]
    _, after = await servers()  # a new server on the same database
    assert "result" in await rpc(after, "pm_getPaymasterData", erc7677(op(contracts["fresh"]), token))


async def test_safe_and_blacklisted_operations(servers: Any, contracts: dict[str, str]) -> None:
    _, client = await servers()
    safe = await rpc(client, "pm_getPaymasterData", erc7677(op(contracts["old"])))
    assert "result" in safe  # unverified but old: 15, signed without asking
    blocked = await rpc(client, "pm_getPaymasterData", erc7677(op(BAD)))
    assert blocked["error"]["code"] == -32501 and blocked["error"]["data"]["anodeCode"] == "ANODE_020_SECURITY_BLOCKED"
    assert BAD in blocked["error"]["message"]
    assert blocked["error"]["data"]["securityAssessment"]["riskScore"] == 100


async def test_process_answers_the_confirmation_then_signs(servers: Any, contracts: dict[str, str]) -> None:
    _, client = await servers()
    headers = {"authorization": f"Bearer {KEY_A}"}
    body = {"userOperation": op(contracts["fresh"]), "entryPoint": EP07, "chainId": 31337}
    first = (await client.post("/api/v1/paymaster/process", json=body, headers=headers)).json()
    assert first["status"] == "requires_confirmation" and first["securityWarning"]["riskScore"] == 45
    body["context"] = {"confirmationToken": first["confirmationToken"]}
    second = (await client.post("/api/v1/paymaster/process", json=body, headers=headers)).json()
    assert second["status"] == "sponsored"
    assert [m["name"] for m in second["processing"]["modules"]] == ["security_filter"]


async def test_assess_endpoint(servers: Any, contracts: dict[str, str]) -> None:
    anode, client = await servers()
    headers = {"authorization": f"Bearer {KEY_A}"}
    body = {"userOperation": op(contracts["fresh"], gas=False), "entryPoint": EP07, "chainId": 31337}
    response = await client.post("/api/v1/security/assess", json=body, headers=headers)
    assert response.status_code == 200
    answer = response.json()
    assert answer["riskLevel"] == "high" and answer["riskScore"] == 45 and answer["decision"] == "confirm"
    target = answer["targetContract"]
    assert target["address"] == contracts["fresh"] and target["hasCode"] is True
    assert target["deploymentAgeBlocks"] < WINDOW and isinstance(target["deploymentBlock"], int)
    assert {f["type"] for f in answer["riskFactors"]} == {"unverified_contract", "recent_deployment"}
    assert all({"type", "severity", "description", "weight"} <= set(f) for f in answer["riskFactors"])
    assert len(answer["recommendations"]) == 2
    assert (
        answer["calls"] == [{"target": contracts["fresh"], "value": "0", "selector": "0x01020304", "kind": "call"}]
        and answer["layout"] == "execute"
    )

    blocked = (
        await client.post("/api/v1/security/assess", json=body | {"userOperation": op(BAD)}, headers=headers)
    ).json()
    assert blocked["riskLevel"] == "critical" and blocked["decision"] == "block"

    assert engine_rows(anode.deps.engine) == 0  # assessing issues no token
    assert (await client.post("/api/v1/security/assess", json=body)).status_code == 401
    wrong = await client.post("/api/v1/security/assess", json=body | {"entryPoint": "0x1234"}, headers=headers)
    assert wrong.status_code == 400 and wrong.json()["error"]["details"]["field"] == "entryPoint"
    bad_op = await client.post(
        "/api/v1/security/assess", json=body | {"userOperation": {"sender": SENDER}}, headers=headers
    )
    assert bad_op.status_code == 400 and "userOp.nonce" in bad_op.json()["error"]["message"]


def engine_rows(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.select(sa.func.count()).select_from(confirmations)).scalar_one())
