"""Nulls over the wire: an SDK's ``null`` fields are accepted by every way in, and aNode's own
answers never carry a null for a field that does not apply (no ``"paymasterAndData": null`` on
v0.7, no ``"paymaster": null`` on v0.6)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from anode.api.rest.schemas import SponsorReply
from anode.config import validate_settings
from anode.wiring import build
from tests.integration.test_api_errors import (
    API_KEY,
    CHAIN_ID,
    EP07,
    EP08,
    PM07,
    PM08,
    build_anode,
    settings_tree,
    user_op,
)
from tests.support.asgi import client_of
from tests.support.fake_bundler import GAS as FAKE_GAS
from tests.support.fake_bundler import FakeBundler

V07_NULLS = dict.fromkeys(
    ["factory", "factoryData", "paymaster", "paymasterData", "paymasterVerificationGasLimit",
     "paymasterPostOpGasLimit", "signature", "eip7702Auth"]
)  # fmt: skip


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    node = build_anode(tmp_path, "http://127.0.0.1:9/unreachable")
    async with client_of(node, API_KEY) as http:
        yield http
    await node.aclose()


def nulls_in(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [k for k, v in value.items() if v is None] + [n for v in value.values() for n in nulls_in(v)]
    if isinstance(value, list):
        return [n for v in value for n in nulls_in(v)]
    return []


@pytest.mark.parametrize(("entry_point", "paymaster"), [(EP07, PM07), (EP08, PM08)])
async def test_rest_sponsor_takes_null_fields_and_answers_none(
    client: httpx.AsyncClient, entry_point: str, paymaster: str
) -> None:
    body = {"userOperation": user_op() | V07_NULLS, "entryPoint": entry_point, "chainId": CHAIN_ID}
    response = await client.post("/api/v1/paymaster/sponsor", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert nulls_in(answer) == [], answer
    assert "paymasterAndData" not in answer
    assert answer["paymaster"] == paymaster


@pytest.mark.parametrize("method", ["pm_getPaymasterStubData", "pm_getPaymasterData"])
async def test_json_rpc_takes_null_fields(client: httpx.AsyncClient, method: str) -> None:
    params = [user_op() | V07_NULLS, EP07, hex(CHAIN_ID), None]
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    reply = (await client.post("/api/v1/rpc", json=body)).json()
    assert "result" in reply, reply
    assert reply["result"]["paymaster"] == PM07


def test_the_rest_answer_of_a_v06_operation_has_no_v07_fields() -> None:
    fields = {"callGasLimit": "0x1", "verificationGasLimit": "0x1", "preVerificationGas": "0x1",
              "userOpHash": "0x00", "validUntil": "0x1", "validAfter": "0x0"}  # fmt: skip
    dumped = SponsorReply.model_validate(fields | {"paymasterAndData": "0x1234"}).model_dump(mode="json")
    assert nulls_in(dumped) == [] and dumped["paymasterAndData"] == "0x1234"
    assert not {"paymaster", "paymasterData", "paymasterVerificationGasLimit"} & set(dumped)


async def test_rest_sponsor_estimates_an_operation_whose_gas_limits_are_null(tmp_path: Path) -> None:
    """``"callGasLimit": null`` is a gas limit left out: estimated through the bundler, not refused."""
    bundler = FakeBundler()
    async with bundler.serving() as bundler_url:
        tree = settings_tree(tmp_path, "http://127.0.0.1:9/unreachable")
        tree["chains"][0]["bundler_url"] = bundler_url
        node = build(validate_settings(tree))
        async with client_of(node, API_KEY) as client:
            op = user_op() | dict.fromkeys(["callGasLimit", "verificationGasLimit", "preVerificationGas"])
            body = {"userOperation": op | V07_NULLS, "entryPoint": EP07, "chainId": CHAIN_ID}
            response = await client.post("/api/v1/paymaster/sponsor", json=body)
        await node.aclose()
    assert response.status_code == 200, response.text
    assert bundler.estimates == 1
    assert response.json()["callGasLimit"] == FAKE_GAS["callGasLimit"]
