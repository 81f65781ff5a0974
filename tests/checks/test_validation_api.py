"""The SBT and PNT checks as a client meets them, on anvil with the check contracts deployed:
``GET /api/v1/validation/sbt|pnt/{address}`` (shapes, chain selection, errors) and the same
modules in the pipeline of ``pm_getPaymasterData`` and REST sponsoring.

The app is built from settings by ``anode.wiring.build`` and served in process through
``httpx.ASGITransport``; the paymaster is a v0.7 VerifyingPaymaster, whose data needs no node,
so every chain read seen here is one the checks made.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from anode.api.app import create_app
from anode.config import validate_settings
from anode.devchain.anvil import Anvil
from anode.wiring import Anode, build
from tests.checks.conftest import CHAIN_ID, EP07, PM07, CountingChainClient, new_holder
from tests.contracts.checks import CheckContracts

API_KEY = "checks-api-key"
PNT = 10**18


def sbt_module(contracts: CheckContracts, **overrides: Any) -> dict[str, Any]:
    config = {
        "contracts": [
            {"address": contracts.sbt["identity"], "type": "identity"},
            {"address": contracts.sbt["reputation"], "type": "reputation"},
        ],
        "required_types": ["identity"],
        "cache_ttl": 300,
    }
    return {"name": "sbt_validator", **overrides, "config": config}


def pnt_module(contracts: CheckContracts, **overrides: Any) -> dict[str, Any]:
    config = {
        "contract_address": contracts.pnt,
        "min_balance": str(100 * PNT),
        "include_staked": True,
        "staking_contract": contracts.staking,
        "cache_ttl": 60,
    }
    return {"name": "pnt_balance_validator", **overrides, "config": config}


def app_for(anode: Anode) -> FastAPI:
    return create_app(anode, manage_lifecycle=False)


@pytest.fixture
async def serve(tmp_path: Path, anvil: Anvil) -> AsyncIterator[Callable[..., Any]]:
    """``await serve(modules, rpc_url=anvil)`` → (client, anode); everything is closed afterwards."""
    opened: list[tuple[httpx.AsyncClient, Anode]] = []

    async def start(modules: list[dict[str, Any]], rpc_url: str | None = None) -> tuple[httpx.AsyncClient, Anode]:
        tree = {
            "database_url": f"sqlite:///{tmp_path / f'anode{len(opened)}.db'}",
            "signer": {"type": "local", "private_key": "0x" + "5a" * 32},
            "auth": {"api_keys": [API_KEY]},
            "chains": [
                {
                    "chain_id": CHAIN_ID,
                    "rpc_url": rpc_url or anvil.rpc_url,
                    "paymasters": [{"entry_point": EP07, "address": PM07, "contract": "verifying"}],
                }
            ],
            "pipeline": {"modules": [*modules, {"name": "paymaster_signer"}]},
        }
        anode = build(validate_settings(tree))
        transport = httpx.ASGITransport(app=app_for(anode))
        client = httpx.AsyncClient(
            transport=transport, base_url="http://anode.test", headers={"authorization": f"Bearer {API_KEY}"}
        )
        opened.append((client, anode))
        return client, anode

    yield start
    for client, anode in opened:
        await client.aclose()
        await anode.aclose()


def counting(anode: Anode) -> CountingChainClient:
    """Swap the route's node client for one that counts its calls."""
    route = next(iter(anode.routes))
    node = CountingChainClient(route.chain.url)
    anode.routes.replace(replace(route, chain=node))
    anode.clients.append(node)
    return node


def op(sender: str) -> dict[str, Any]:
    return {
        "sender": sender,
        "nonce": "0x1",
        "callData": "0x",
        "callGasLimit": "0x10000",
        "verificationGasLimit": "0x10000",
        "preVerificationGas": "0x5000",
        "maxFeePerGas": "0x3b9aca00",
        "maxPriorityFeePerGas": "0x1",
    }


async def rpc(client: httpx.AsyncClient, method: str, params: list[Any]) -> dict[str, Any]:
    response = await client.post("/api/v1/rpc", json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    assert response.status_code == 200, response.text
    reply: dict[str, Any] = response.json()
    return reply


# -- GET /api/v1/validation/sbt/{address} -------------------------------------------------------


async def test_sbt_endpoint_answers_in_the_designs_shape(serve: Any, contracts: CheckContracts) -> None:
    client, _ = await serve([sbt_module(contracts)])
    holder, stranger = new_holder(), new_holder()
    contracts.mint_sbt("identity", holder)
    contracts.mint_sbt("reputation", holder)

    response = await client.get(f"/api/v1/validation/sbt/{holder.lower()}")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "address": holder,
        "chainId": CHAIN_ID,
        "sbtValidation": {
            "isValid": True,
            "sbtTokens": [
                {"contract": contracts.sbt["identity"], "type": "identity", "balance": "1"},
                {"contract": contracts.sbt["reputation"], "type": "reputation", "balance": "1"},
            ],
            "requiredTypes": ["identity"],
            "missingTypes": [],
            "error": None,
        },
    }

    body = (await client.get(f"/api/v1/validation/sbt/{stranger}")).json()["sbtValidation"]
    assert body["isValid"] is False
    assert body["sbtTokens"] == []
    assert body["missingTypes"] == ["identity"]
    assert body["error"]["code"] == "ANODE_001_SBT_NOT_FOUND"
    assert contracts.sbt["identity"] in body["error"]["message"]


async def test_pnt_endpoint_answers_in_the_designs_shape(serve: Any, contracts: CheckContracts) -> None:
    client, _ = await serve([pnt_module(contracts)])
    holder = new_holder()
    contracts.mint_pnt(holder, 60 * PNT)
    contracts.stake_for(holder, 30 * PNT)
    contracts.lock(holder, 10 * PNT)

    response = await client.get(f"/api/v1/validation/pnt/{holder}", params={"chainId": "0x7a69"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["address"] == holder
    assert body["chainId"] == CHAIN_ID
    validation_ = body["pntValidation"]
    assert validation_["isValid"] is False
    assert validation_["balance"] == {
        "available": str(60 * PNT),
        "staked": str(20 * PNT),
        "locked": str(10 * PNT),
        "total": str(90 * PNT),
    }
    assert validation_["requirements"] == {"minBalance": str(100 * PNT), "met": False, "shortfall": str(10 * PNT)}
    assert validation_["error"]["code"] == "ANODE_002_INSUFFICIENT_PNT"
    assert "get 10 PNT more" in validation_["error"]["message"]

    rich = new_holder()
    contracts.mint_pnt(rich, 100 * PNT)
    validation_ = (await client.get(f"/api/v1/validation/pnt/{rich}", params={"chainId": "31337"})).json()[
        "pntValidation"
    ]
    assert validation_["isValid"] is True
    assert validation_["requirements"] == {"minBalance": str(100 * PNT), "met": True, "shortfall": "0"}
    assert validation_["error"] is None


@pytest.mark.parametrize(
    ("path", "params", "status", "code"),
    [
        ("/api/v1/validation/sbt/0x1234", {}, 400, "ANODE_INVALID_PARAMS"),
        ("/api/v1/validation/pnt/alice", {}, 400, "ANODE_INVALID_PARAMS"),
        ("/api/v1/validation/sbt/{holder}", {"chainId": "1"}, 400, "ANODE_UNSUPPORTED_CHAIN"),
        ("/api/v1/validation/pnt/{holder}", {"chainId": "0xzz"}, 400, "ANODE_INVALID_PARAMS"),
        ("/api/v1/validation/pnt/{holder}", {"chainId": "-1"}, 400, "ANODE_INVALID_PARAMS"),
    ],
)
async def test_bad_requests_are_400_naming_the_field(
    serve: Any, contracts: CheckContracts, path: str, params: dict[str, str], status: int, code: str
) -> None:
    client, _ = await serve([sbt_module(contracts), pnt_module(contracts)])
    response = await client.get(path.format(holder=new_holder()), params=params)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["details"]["field"] in ("address", "chainId")
    assert error["details"]["field"] in error["message"]


async def test_an_api_key_is_required(serve: Any, contracts: CheckContracts) -> None:
    client, _ = await serve([sbt_module(contracts)])
    response = await client.get(f"/api/v1/validation/sbt/{new_holder()}", headers={"authorization": ""})
    assert response.status_code == 401
    response = await client.get(f"/api/v1/validation/sbt/{new_holder()}", headers={"authorization": "Bearer wrong"})
    assert response.status_code == 401


async def test_a_module_not_configured_or_disabled_is_404(serve: Any, contracts: CheckContracts) -> None:
    client, _ = await serve([pnt_module(contracts, enabled=False)])
    response = await client.get(f"/api/v1/validation/sbt/{new_holder()}")
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "ANODE_MODULE_NOT_CONFIGURED"
    assert "sbt_validator is not configured" in error["message"]
    response = await client.get(f"/api/v1/validation/pnt/{new_holder()}")
    assert response.status_code == 404
    assert "pnt_balance_validator is disabled" in response.json()["error"]["message"]


async def test_a_node_that_is_down_is_503_not_a_negative_answer(
    serve: Any, contracts: CheckContracts, dead_node_url: str
) -> None:
    client, _ = await serve([sbt_module(contracts), pnt_module(contracts)], rpc_url=dead_node_url)
    for kind in ("sbt", "pnt"):
        response = await client.get(f"/api/v1/validation/{kind}/{new_holder()}")
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "ANODE_CHAIN_UNAVAILABLE"
        assert "isValid" not in response.text


# -- the same modules in the pipeline ---------------------------------------------------------


async def test_the_pipeline_sponsors_holders_and_refuses_others_with_the_modules_code(
    serve: Any, contracts: CheckContracts
) -> None:
    client, _ = await serve([sbt_module(contracts), pnt_module(contracts)])
    member, no_sbt, no_pnt = new_holder(), new_holder(), new_holder()
    for account in (member, no_pnt):
        contracts.mint_sbt("identity", account)
    for account in (member, no_sbt):
        contracts.mint_pnt(account, 100 * PNT)

    reply = await rpc(client, "pm_getPaymasterData", [op(member), EP07, hex(CHAIN_ID), {}])
    assert reply["result"]["paymaster"] == PM07

    reply = await rpc(client, "pm_getPaymasterData", [op(no_sbt), EP07, hex(CHAIN_ID), {}])
    assert reply["error"]["code"] == -32501
    assert reply["error"]["data"]["anodeCode"] == "ANODE_001_SBT_NOT_FOUND"
    assert reply["error"]["data"]["missingTypes"] == ["identity"]
    assert contracts.sbt["identity"] in reply["error"]["message"]

    reply = await rpc(client, "pm_getPaymasterStubData", [op(no_pnt), EP07, hex(CHAIN_ID), {}])
    assert reply["error"]["data"]["anodeCode"] == "ANODE_002_INSUFFICIENT_PNT"
    assert reply["error"]["data"]["requirements"]["shortfall"] == str(100 * PNT)

    response = await client.post("/api/v1/paymaster/sponsor", json={"userOperation": op(no_pnt), "entryPoint": EP07})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "ANODE_002_INSUFFICIENT_PNT"


async def test_a_hot_sender_costs_no_rpc_call_across_the_endpoints_and_the_pipeline(
    serve: Any, contracts: CheckContracts
) -> None:
    client, anode = await serve([sbt_module(contracts), pnt_module(contracts)])
    node = counting(anode)
    member = new_holder()
    contracts.mint_sbt("identity", member)
    contracts.mint_pnt(member, 100 * PNT)

    assert (await client.get(f"/api/v1/validation/sbt/{member}")).json()["sbtValidation"]["isValid"]
    assert (await client.get(f"/api/v1/validation/pnt/{member}")).json()["pntValidation"]["isValid"]
    assert node.calls["eth_call"] == 2 + 3  # two SBT contracts; balanceOf, staked, locked
    for _ in range(3):
        reply = await rpc(client, "pm_getPaymasterData", [op(member), EP07, hex(CHAIN_ID), {}])
        assert "result" in reply, reply
    assert node.calls["eth_call"] == 5, "the pipeline found the endpoints' cache entries"


async def test_with_the_node_down_the_pipeline_refuses_as_unavailable_and_signs_nothing(
    serve: Any, contracts: CheckContracts, dead_node_url: str
) -> None:
    client, _ = await serve([sbt_module(contracts), pnt_module(contracts)], rpc_url=dead_node_url)
    reply = await rpc(client, "pm_getPaymasterData", [op(new_holder()), EP07, hex(CHAIN_ID), {}])
    assert reply["error"]["code"] == -32603
    assert reply["error"]["data"]["anodeCode"] == "ANODE_CHAIN_UNAVAILABLE"
    response = await client.get("/api/v1/operations")
    assert response.json()["operations"] == []
