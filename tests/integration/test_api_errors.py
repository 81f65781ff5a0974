"""The HTTP API as a client meets it: authentication, JSON-RPC envelopes, every client error, the
ledger behind every signature, REST and the OpenAPI document.

No chain runs here: the configured node is a port that refuses connections. v0.7/v0.8 stub and
final paymaster data need no node (only v0.6 VerifyingPaymaster reads ``senderNonce``), so each
of those answers is real; what needs the node is checked to fail cleanly and without leaking the
node URL. The app runs in process through ``httpx.ASGITransport`` on a temporary SQLite ledger.

Exceptions, each saying so: ``pm_sponsorUserOperation``'s fee checks use a small fake bundler
over HTTP, and the last tests (fuzzing with every pipeline module enabled and an admin key) read
real SBT and points contracts on the session's anvil.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from coincurve import PublicKey
from eth_abi import decode
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from anode.api.app import create_app
from anode.config import validate_settings
from anode.devchain.anvil import Anvil
from anode.paymasters.base import ValidityWindow, eip191_digest
from anode.sponsorship import SponsorshipService
from anode.userop.models import parse_user_op
from anode.wiring import Anode, build
from tests.contracts.checks import deploy_check_contracts
from tests.support.fake_bundler import FakeBundler
from tests.support.http_server import serving_posts

CHAIN_ID = 31337
EP06 = "0x5FF137D4b0FDCD49DcA30c7CF57E578a026d2789"
EP07 = "0x0000000071727De22E5E9d8BAf0edAc6f37da032"
EP08 = "0x4337084D9E255Ff0702461CF8895CE9E3b5Ff108"
PM06 = to_checksum_address("0x" + "06" * 20)
PM07 = to_checksum_address("0x" + "07" * 20)
PM08 = to_checksum_address("0x" + "08" * 20)
SIGNER_KEY = "0x" + "5a" * 32
SIGNER = to_checksum_address(keccak(PublicKey.from_secret(bytes.fromhex(SIGNER_KEY[2:])).format(False)[1:])[12:])
API_KEY = "test-api-key-1"
OTHER_KEY = "test-api-key-2"
NODE_SECRET = "node-provider-key-0123456789"
SPONSOR_NAME = "Test Sponsor"
SPONSOR_ICON = "data:image/png;base64,iVBORw0KGgo="
SENDER_A = to_checksum_address("0x" + "a1" * 20)
SENDER_B = to_checksum_address("0x" + "b2" * 20)
POST_OP_GAS = 30_000


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def dead_node() -> Iterator[str]:
    """A node URL that refuses connections: the port is bound (so nobody else takes it), never listened on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v2/{NODE_SECRET}"


def settings_tree(tmp_path: Path, rpc_url: str) -> dict[str, Any]:
    return {
        "database_url": f"sqlite:///{tmp_path / 'anode.db'}",
        "signer": {"type": "local", "private_key": SIGNER_KEY},
        "auth": {"api_keys": [API_KEY, OTHER_KEY]},
        "sponsorship": {"sponsor_name": SPONSOR_NAME, "sponsor_icon": SPONSOR_ICON},
        "chains": [
            {
                "chain_id": CHAIN_ID,
                "rpc_url": rpc_url,
                "paymasters": [
                    {"entry_point": EP06, "address": PM06, "contract": "verifying"},
                    {"entry_point": EP07, "address": PM07, "contract": "verifying"},
                    {
                        "entry_point": EP08,
                        "address": PM08,
                        "contract": "singleton",
                        "post_op_gas_limit": POST_OP_GAS,
                    },
                ],
            }
        ],
    }


def build_anode(tmp_path: Path, rpc_url: str, *, health_cache_seconds: float | None = None) -> Anode:
    tree = settings_tree(tmp_path, rpc_url)
    if health_cache_seconds is not None:
        tree.setdefault("server", {})["health_cache_seconds"] = health_cache_seconds
    node = build(validate_settings(tree))
    # one fixed clock: stub and final data of a test share their validity window
    now = float(int(time.time()))
    node.service = SponsorshipService(
        node.routes, node.signer, node.ledger, node.settings.sponsorship, clock=lambda: now
    )
    return node


@pytest.fixture
async def anode(tmp_path: Path, dead_node: str) -> AsyncIterator[Anode]:
    node = build_anode(tmp_path, dead_node)
    yield node
    await node.aclose()


@pytest.fixture
def app(anode: Anode) -> FastAPI:
    return create_app(anode, manage_lifecycle=False)


@pytest.fixture
async def anonymous(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://anode.test") as client:
        yield client


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"authorization": f"Bearer {API_KEY}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://anode.test", headers=headers) as client:
        yield client


# -- helpers ----------------------------------------------------------------------------------


def user_op(sender: str = SENDER_A, *, gas: bool = True, **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"sender": sender, "nonce": "0x2a", "callData": "0xb61d27f6"}
    if gas:
        op |= {
            "callGasLimit": "0x186a0",
            "verificationGasLimit": "0x30d40",
            "preVerificationGas": "0xc350",
            "maxFeePerGas": "0x3b9aca00",
            "maxPriorityFeePerGas": "0x3b9aca00",
        }
    return op | extra


def v06_op(sender: str = SENDER_A) -> dict[str, Any]:
    return user_op(sender) | {"initCode": "0x", "paymasterAndData": "0x", "signature": "0x"}


async def call(client: httpx.AsyncClient, method: str, params: Any, call_id: Any = 1) -> dict[str, Any]:
    response = await client.post(
        "/api/v1/rpc", json={"jsonrpc": "2.0", "id": call_id, "method": method, "params": params}
    )
    assert response.status_code == 200, response.text
    reply: dict[str, Any] = response.json()
    assert reply["jsonrpc"] == "2.0"
    assert reply["id"] == call_id
    return reply


async def error_of(client: httpx.AsyncClient, method: str, params: Any) -> dict[str, Any]:
    reply = await call(client, method, params)
    assert "result" not in reply, reply
    error: dict[str, Any] = reply["error"]
    return error


async def result_of(client: httpx.AsyncClient, method: str, params: Any) -> Any:
    reply = await call(client, method, params)
    assert "error" not in reply, reply
    return reply["result"]


async def ledger_rows(client: httpx.AsyncClient, **query: str) -> list[dict[str, Any]]:
    response = await client.get("/api/v1/operations", params={"limit": "1000", **query})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == len(body["operations"])
    rows: list[dict[str, Any]] = body["operations"]
    return rows


def data_bytes(hex_text: str) -> bytes:
    return bytes.fromhex(hex_text[2:])


def recover(digest: bytes, signature: bytes) -> str:
    public = PublicKey.from_signature_and_message(signature[:64] + bytes([signature[64] - 27]), digest, hasher=None)
    return to_checksum_address(keccak(public.format(compressed=False)[1:])[12:])


# -- authentication ---------------------------------------------------------------------------


async def test_missing_api_key_is_refused_with_401(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.post(
        "/api/v1/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "pm_supportedEntryPoints", "params": []}
    )
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == -32001
    assert "apikey" in error["message"]
    assert "Bearer" in error["message"]


@pytest.mark.parametrize("how", ["query", "bearer"])
async def test_wrong_api_key_is_refused_with_401(anonymous: httpx.AsyncClient, how: str) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "pm_supportedEntryPoints", "params": []}
    if how == "query":
        response = await anonymous.post("/api/v1/rpc", params={"apikey": "not-a-key"}, json=body)
    else:
        response = await anonymous.post("/api/v1/rpc", headers={"authorization": "Bearer not-a-key"}, json=body)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == -32001
    assert "not valid" in response.json()["error"]["message"]


@pytest.mark.parametrize("how", ["query", "bearer", "root-path"])
@pytest.mark.parametrize("key", [API_KEY, OTHER_KEY])
async def test_accepted_api_key_works_either_way(anonymous: httpx.AsyncClient, how: str, key: str) -> None:
    body = {"jsonrpc": "2.0", "id": 7, "method": "pm_supportedEntryPoints", "params": []}
    if how == "query":
        response = await anonymous.post("/api/v1/rpc", params={"apikey": key}, json=body)
    elif how == "bearer":
        response = await anonymous.post("/api/v1/rpc", headers={"authorization": f"Bearer {key}"}, json=body)
    else:
        response = await anonymous.post("/", params={"apikey": key}, json=body)
    assert response.status_code == 200
    assert response.json() == {"jsonrpc": "2.0", "id": 7, "result": sorted([EP06, EP07, EP08])}


async def test_rest_endpoints_need_the_api_key_too(anonymous: httpx.AsyncClient) -> None:
    assert (await anonymous.get("/api/v1/operations")).status_code == 401
    body = {"userOperation": user_op(), "entryPoint": EP07, "chainId": CHAIN_ID}
    response = await anonymous.post("/api/v1/paymaster/sponsor", json=body)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "ANODE_UNAUTHORIZED"
    response = await anonymous.get("/api/v1/operations", headers={"authorization": f"Bearer {OTHER_KEY}"})
    assert response.status_code == 200


async def test_signed_calls_record_which_key_asked(client: httpx.AsyncClient, anonymous: httpx.AsyncClient) -> None:
    params = [user_op(), EP07, hex(CHAIN_ID)]
    await result_of(client, "pm_getPaymasterData", params)
    body = {"jsonrpc": "2.0", "id": 1, "method": "pm_getPaymasterData", "params": params}
    assert (await anonymous.post("/api/v1/rpc", params={"apikey": OTHER_KEY}, json=body)).status_code == 200
    mine = await ledger_rows(client)
    theirs = await ledger_rows(anonymous, apikey=OTHER_KEY)  # each key sees its own rows only
    assert len(mine) == len(theirs) == 1
    ids = {mine[0]["api_key_id"], theirs[0]["api_key_id"]}
    assert len(ids) == 2 and None not in ids
    assert not any(key in str(mine + theirs) for key in (API_KEY, OTHER_KEY))


# -- JSON-RPC envelope ------------------------------------------------------------------------


async def test_unknown_method_is_32601(client: httpx.AsyncClient) -> None:
    error = await error_of(client, "eth_sendTransaction", [])
    assert error["code"] == -32601
    assert "eth_sendTransaction" in error["message"]


async def test_body_that_is_not_json_is_a_parse_error(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/rpc", content=b'{"jsonrpc": "2.0", "id": 1, "method"', headers={"content-type": "application/json"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["id"] is None
    assert body["error"]["code"] == -32700


@pytest.mark.parametrize(
    ("payload", "reply_id"),
    [
        ({"jsonrpc": "1.0", "id": 5, "method": "pm_supportedEntryPoints"}, 5),
        ({"id": 5, "method": "pm_supportedEntryPoints"}, 5),
        ({"jsonrpc": "2.0", "id": 5, "method": 42}, 5),
        ({"jsonrpc": "2.0", "id": {"nested": 1}, "method": "pm_supportedEntryPoints"}, None),
        ({"jsonrpc": "2.0", "id": True, "method": "pm_supportedEntryPoints"}, None),
        (42, None),
        ("pm_supportedEntryPoints", None),
    ],
)
async def test_invalid_request_is_32600(client: httpx.AsyncClient, payload: Any, reply_id: Any) -> None:
    response = await client.post("/api/v1/rpc", json=payload)
    assert response.status_code == 200
    body = response.json()
    assert body["error"]["code"] == -32600
    assert body["id"] == reply_id


async def test_params_as_object_is_refused(client: httpx.AsyncClient) -> None:
    error = await error_of(client, "pm_getPaymasterStubData", {"userOp": user_op(), "entryPoint": EP07})
    assert error["code"] == -32602
    assert "positional" in error["message"]


async def test_batch_answers_each_call_by_id_and_skips_notifications(client: httpx.AsyncClient) -> None:
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "pm_getPaymasterStubData", "params": [user_op(), EP07, hex(CHAIN_ID)]},
        {"jsonrpc": "2.0", "id": "two", "method": "no_such_method", "params": []},
        {"jsonrpc": "2.0", "method": "pm_supportedEntryPoints", "params": []},  # notification
        {"jsonrpc": "2.0", "method": "no_such_method"},  # a failing notification: still no answer
        {"id": 3, "method": "pm_supportedEntryPoints"},  # no jsonrpc member
        {"jsonrpc": "2.0", "id": 4, "method": "pm_getPaymasterStubData", "params": [user_op(), EP07, "0x1"]},
        {"jsonrpc": "2.0", "id": 5, "method": "pm_supportedEntryPoints", "params": []},
    ]
    response = await client.post("/api/v1/rpc", json=batch)
    assert response.status_code == 200
    replies = {reply["id"]: reply for reply in response.json()}
    assert set(replies) == {1, "two", 3, 4, 5}
    assert replies[1]["result"]["paymaster"] == PM07
    assert replies["two"]["error"]["code"] == -32601
    assert replies[3]["error"]["code"] == -32600
    assert replies[4]["error"]["code"] == -32602
    assert replies[5]["result"] == sorted([EP06, EP07, EP08])


async def test_notifications_alone_get_no_body(client: httpx.AsyncClient) -> None:
    single = {"jsonrpc": "2.0", "method": "pm_supportedEntryPoints", "params": []}
    response = await client.post("/api/v1/rpc", json=single)
    assert response.status_code == 204
    assert response.content == b""
    response = await client.post("/api/v1/rpc", json=[single, single])
    assert response.status_code == 204
    assert response.content == b""


async def test_empty_batch_is_one_invalid_request_error(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/rpc", json=[])
    body = response.json()
    assert isinstance(body, dict)
    assert body["error"]["code"] == -32600
    assert "empty" in body["error"]["message"]


async def test_oversized_batch_is_refused(client: httpx.AsyncClient) -> None:
    call_ = {"jsonrpc": "2.0", "id": 1, "method": "pm_supportedEntryPoints", "params": []}
    body = (await client.post("/api/v1/rpc", json=[call_] * 101)).json()
    assert body["error"]["code"] == -32600


# -- invalid params name the field ------------------------------------------------------------

STUB = "pm_getPaymasterStubData"
DATA = "pm_getPaymasterData"


@pytest.mark.parametrize(
    ("method", "params", "field"),
    [
        (STUB, [user_op(sender="0x1234"), EP07, hex(CHAIN_ID)], "userOp.sender"),
        (STUB, [{"sender": SENDER_A, "callData": "0x"}, EP07, hex(CHAIN_ID)], "userOp.nonce"),
        (STUB, [user_op(callData="0xabc"), EP07, hex(CHAIN_ID)], "userOp.callData"),
        (STUB, [user_op(callGasLimit=hex(2**128)), EP07, hex(CHAIN_ID)], "userOp.callGasLimit"),
        (STUB, [user_op(), "0xnothex", hex(CHAIN_ID)], "entryPoint"),
        (STUB, [user_op(), EP07[:-2], hex(CHAIN_ID)], "entryPoint"),
        (STUB, [user_op(), 12345, hex(CHAIN_ID)], "entryPoint"),
        (STUB, [user_op(), EP07], "chainId"),
        (STUB, [user_op(), EP07, None, {}], "chainId"),
        (STUB, [user_op(), EP07, "0xzz"], "chainId"),
        (STUB, [user_op(), EP07, hex(CHAIN_ID), "sponsor me"], "context"),
        (STUB, [user_op(), EP07, hex(CHAIN_ID), [1]], "context"),
        (STUB, [user_op(), EP07, hex(CHAIN_ID), {"validForSeconds": 601}], "context.validForSeconds"),
        (STUB, [user_op(), EP07, hex(CHAIN_ID), {"validForSeconds": 0}], "context.validForSeconds"),
        (STUB, [user_op(), EP07, hex(CHAIN_ID), {"validForSeconds": "60"}], "context.validForSeconds"),
        (STUB, ["0xdeadbeef", EP07, hex(CHAIN_ID)], "userOp"),
        (STUB, [], "userOp"),
        (DATA, [user_op(sender="0x1234"), EP07, hex(CHAIN_ID)], "userOp.sender"),
        (DATA, [user_op(), EP07, hex(CHAIN_ID), {"validForSeconds": 86_401}], "context.validForSeconds"),
        ("pm_sponsorUserOperation", [None, EP07], "userOp"),
        ("pm_sponsorUserOperation", [user_op(), EP07, "ctx"], "context"),
    ],
)
async def test_invalid_params_are_32602_naming_the_field(
    client: httpx.AsyncClient, method: str, params: list[Any], field: str
) -> None:
    error = await error_of(client, method, params)
    assert error["code"] == -32602, error
    assert error["data"]["field"] == field, error
    assert error["data"]["anodeCode"].startswith("ANODE_")


@pytest.mark.parametrize(
    ("params", "field", "expected", "got"),
    [
        ([user_op(), EP07, 31337.0], "chainId", 'must be a hex string like "0x7a69" (or an integer)', "number"),
        ([user_op(), EP07, 1.5], "chainId", 'must be a hex string like "0x7a69" (or an integer)', "number"),
        ([user_op(), EP07, True], "chainId", 'must be a hex string like "0x7a69" (or an integer)', "boolean"),
        ([user_op(), EP07, [hex(CHAIN_ID)]], "chainId", 'must be a hex string like "0x7a69" (or an integer)', "array"),
        ([user_op(), EP07, {"id": 1}], "chainId", 'must be a hex string like "0x7a69" (or an integer)', "object"),
        (["0xdeadbeef", EP07, hex(CHAIN_ID)], "userOp", "must be a UserOperation object", "string"),
        ([[user_op()], EP07, hex(CHAIN_ID)], "userOp", "must be a UserOperation object", "array"),
        ([user_op(), 12345, hex(CHAIN_ID)], "entryPoint", "must be an address string", "number"),
        ([user_op(), False, hex(CHAIN_ID)], "entryPoint", "must be an address string", "boolean"),
        ([user_op(), EP07, hex(CHAIN_ID), "sponsor me"], "context", "must be an object", "string"),
        ([user_op(), EP07, hex(CHAIN_ID), [1]], "context", "must be an object", "array"),
        ([user_op(), EP07, hex(CHAIN_ID), 7], "context", "must be an object", "number"),
    ],
)
async def test_a_param_of_the_wrong_json_type_says_what_it_must_be_and_what_came(
    client: httpx.AsyncClient, params: list[Any], field: str, expected: str, got: str
) -> None:
    error = await error_of(client, STUB, params)
    assert error["code"] == -32602, error
    assert error["data"]["field"] == field
    assert expected in error["message"], error["message"]
    assert error["message"].endswith(f"got {got}"), error["message"]
    assert "string or string" not in error["message"]


async def test_params_that_are_not_an_array_say_what_came(client: httpx.AsyncClient) -> None:
    error = await error_of(client, STUB, "0x1234")
    assert error["code"] == -32602
    assert error["message"] == "params must be an array, got string"


async def test_too_many_params_are_refused(client: httpx.AsyncClient) -> None:
    error = await error_of(client, STUB, [user_op(), EP07, hex(CHAIN_ID), {}, "extra"])
    assert error["code"] == -32602
    assert "at most 4" in error["message"]


async def test_unsupported_chain_is_refused_with_the_served_list(client: httpx.AsyncClient) -> None:
    error = await error_of(client, STUB, [user_op(), EP07, "0x1"])
    assert error["code"] == -32602
    assert error["data"]["anodeCode"] == "ANODE_UNSUPPORTED_CHAIN"
    assert error["data"]["field"] == "chainId"
    assert error["data"]["supportedChainIds"] == [hex(CHAIN_ID)]


async def test_unsupported_entry_point_is_refused_with_the_supported_list(client: httpx.AsyncClient) -> None:
    other = to_checksum_address("0x" + "12" * 20)
    error = await error_of(client, STUB, [user_op(), other, hex(CHAIN_ID)])
    assert error["code"] == -32602
    assert error["data"]["anodeCode"] == "ANODE_UNSUPPORTED_ENTRYPOINT"
    assert error["data"]["field"] == "entryPoint"
    assert sorted(error["data"]["supportedEntryPoints"]) == sorted([EP06, EP07, EP08])
    assert other in error["message"]


async def test_final_data_without_gas_fields_is_refused_naming_call_gas_limit(client: httpx.AsyncClient) -> None:
    error = await error_of(client, DATA, [user_op(gas=False), EP07, hex(CHAIN_ID)])
    assert error["code"] == -32602
    assert error["data"]["field"] == "userOp.callGasLimit"
    assert "estimate" in error["message"]
    assert await ledger_rows(client) == []


async def test_sponsor_user_operation_without_a_bundler_says_so(client: httpx.AsyncClient) -> None:
    for method in ("pm_sponsorUserOperation", "anode_sponsorUserOperation"):
        error = await error_of(client, method, [user_op(gas=False), EP07])
        assert error["code"] == -32603
        assert error["data"]["anodeCode"] == "ANODE_BUNDLER_UNAVAILABLE"
        assert "bundler_url" in error["message"]
        assert "pm_getPaymasterStubData" in error["message"]  # ...and what to use instead
    assert await ledger_rows(client) == []


# -- pm_sponsorUserOperation prices nothing: the wallet's fees are required --------------------


@pytest.fixture
async def estimating(tmp_path: Path, dead_node: str) -> AsyncIterator[tuple[httpx.AsyncClient, FakeBundler]]:
    """A client of an app whose chain has a bundler (the node is still dead: v0.7 needs none)."""
    bundler = FakeBundler()
    async with bundler.serving() as bundler_url:
        tree = settings_tree(tmp_path, dead_node)
        tree["chains"][0]["bundler_url"] = bundler_url
        node = build(validate_settings(tree))
        transport = httpx.ASGITransport(app=create_app(node, manage_lifecycle=False))
        headers = {"authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://anode.test", headers=headers) as client:
            yield client, bundler
        await node.aclose()


def unpriced(*missing: str) -> dict[str, Any]:
    """An operation without gas limits (the bundler estimates those) and without the ``missing`` fees."""
    op = user_op(gas=False) | {"maxFeePerGas": "0x3b9aca00", "maxPriorityFeePerGas": "0x3b9aca00"}
    return {name: value for name, value in op.items() if name not in missing}


@pytest.mark.parametrize("method", ["pm_sponsorUserOperation", "anode_sponsorUserOperation"])
@pytest.mark.parametrize(
    ("missing", "field"),
    [
        (("maxFeePerGas",), "userOp.maxFeePerGas"),
        (("maxPriorityFeePerGas",), "userOp.maxPriorityFeePerGas"),
        (("maxFeePerGas", "maxPriorityFeePerGas"), "userOp.maxFeePerGas"),
    ],
)
async def test_sponsor_user_operation_without_fees_is_refused_naming_the_fee(
    estimating: tuple[httpx.AsyncClient, FakeBundler], method: str, missing: tuple[str, ...], field: str
) -> None:
    """The bundler estimates gas limits, not fees: a missing fee would be signed as 0 (and booked as 0 wei)."""
    client, bundler = estimating
    error = await error_of(client, method, [unpriced(*missing), EP07])
    assert error["code"] == -32602, error
    assert error["data"]["field"] == field
    assert field in error["message"] and "fees" in error["message"]
    assert bundler.estimates == 0, "refused before the bundler is asked"
    assert await ledger_rows(client) == []


async def test_rest_sponsor_to_be_estimated_needs_the_fees_too(
    estimating: tuple[httpx.AsyncClient, FakeBundler],
) -> None:
    client, bundler = estimating
    body = {"userOperation": unpriced("maxPriorityFeePerGas"), "entryPoint": EP07}
    response = await client.post("/api/v1/paymaster/sponsor", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["details"]["field"] == "userOp.maxPriorityFeePerGas"
    assert bundler.estimates == 0
    assert await ledger_rows(client) == []


async def test_sponsor_user_operation_with_fees_signs_over_them_and_books_the_cost(
    estimating: tuple[httpx.AsyncClient, FakeBundler],
) -> None:
    client, bundler = estimating
    result = await result_of(client, "pm_sponsorUserOperation", [unpriced(), EP07])
    assert result["callGasLimit"] == "0x20000"
    assert bundler.estimates == 1
    (row,) = await ledger_rows(client)
    gas = 0x30000 + 0x20000 + 100_000 + 0 + 0x6000  # verification + call + paymaster verification + postOp + pre
    assert int(row["max_gas_cost_wei"]) == gas * 0x3B9ACA00


# -- stub and final data ----------------------------------------------------------------------


@pytest.mark.parametrize(("entry_point", "paymaster"), [(EP07, PM07), (EP08, PM08)])
async def test_stub_matches_final_in_length_and_has_no_more_zero_bytes(
    client: httpx.AsyncClient, anode: Anode, entry_point: str, paymaster: str
) -> None:
    stub = await result_of(client, STUB, [user_op(gas=False), entry_point, hex(CHAIN_ID), {}])
    assert stub["paymaster"] == paymaster
    assert stub["sponsor"] == {"name": SPONSOR_NAME, "icon": SPONSOR_ICON}
    assert stub["isFinal"] is False
    assert "paymasterPostOpGasLimit" in stub
    assert "paymasterVerificationGasLimit" in stub
    expected_post_op = POST_OP_GAS if entry_point == EP08 else 0
    assert int(stub["paymasterPostOpGasLimit"], 16) == expected_post_op

    # the wallet estimates with the stub fields, then asks for the final data
    estimated = user_op() | {
        "paymaster": stub["paymaster"],
        "paymasterVerificationGasLimit": stub["paymasterVerificationGasLimit"],
        "paymasterPostOpGasLimit": stub["paymasterPostOpGasLimit"],
        "paymasterData": stub["paymasterData"],
    }
    final = await result_of(client, DATA, [estimated, entry_point, hex(CHAIN_ID), {}])
    assert final["paymaster"] == paymaster
    stub_data, final_data = data_bytes(stub["paymasterData"]), data_bytes(final["paymasterData"])
    assert len(stub_data) == len(final_data)
    assert stub_data.count(0) <= final_data.count(0)
    assert stub_data != final_data
    assert stub_data[:-65] == final_data[:-65]  # same window, only the signature differs

    # the final signature is the configured signer's, over the contract's getHash
    route = anode.routes.resolve(entry_point, CHAIN_ID)
    submitted = parse_user_op(estimated | {"paymasterData": final["paymasterData"]}, route.version)
    if entry_point == EP07:
        valid_until, valid_after = decode(["uint48", "uint48"], final_data[:64])
    else:
        valid_until = int.from_bytes(final_data[1:7], "big")
        valid_after = int.from_bytes(final_data[7:13], "big")
    window = ValidityWindow(valid_until, valid_after)
    digest = route.paymaster.digest(submitted, window, CHAIN_ID, 0)
    assert recover(eip191_digest(digest), final_data[-65:]) == SIGNER
    assert valid_until - valid_after == 600 + 60  # valid_for_seconds + the clock-lag slack


async def test_v06_stub_returns_paymaster_and_data(client: httpx.AsyncClient) -> None:
    stub = await result_of(client, STUB, [v06_op(), EP06, hex(CHAIN_ID)])
    assert "paymaster" not in stub
    assert "paymasterData" not in stub
    data = data_bytes(stub["paymasterAndData"])
    assert len(data) == 20 + 64 + 65
    assert to_checksum_address(data[:20]) == PM06
    assert 0 not in data[-65:]
    assert stub["sponsor"]["name"] == SPONSOR_NAME


async def test_valid_for_seconds_shortens_the_window(client: httpx.AsyncClient) -> None:
    result = await result_of(client, DATA, [user_op(), EP07, hex(CHAIN_ID), {"validForSeconds": 30}])
    valid_until, valid_after = decode(["uint48", "uint48"], data_bytes(result["paymasterData"])[:64])
    assert valid_until - valid_after == 30 + 60


async def test_chain_id_may_come_in_the_context(client: httpx.AsyncClient) -> None:
    """``pm_sponsorUserOperation`` has no chainId param: ``context.chainId`` picks (or refuses) the chain."""
    error = await error_of(client, "pm_sponsorUserOperation", [user_op(), EP07, {"chainId": "0x1"}])
    assert error["data"]["anodeCode"] == "ANODE_UNSUPPORTED_CHAIN"
    error = await error_of(client, "pm_sponsorUserOperation", [user_op(), EP07, {"chainId": hex(CHAIN_ID)}])
    assert error["data"]["anodeCode"] == "ANODE_BUNDLER_UNAVAILABLE"


# -- what needs the node fails cleanly, without leaking the node URL --------------------------


async def test_v06_final_data_without_a_node_is_a_clean_error(client: httpx.AsyncClient) -> None:
    """v0.6 VerifyingPaymaster hashes the on-chain senderNonce: no node, no signature, no row."""
    error = await error_of(client, DATA, [v06_op(), EP06, hex(CHAIN_ID)])
    assert error["code"] == -32603
    assert error["data"]["anodeCode"] == "ANODE_CHAIN_UNAVAILABLE"
    assert await ledger_rows(client) == []


async def test_node_url_secrets_never_reach_clients(client: httpx.AsyncClient) -> None:
    """Provider URLs carry API keys (``/v2/<key>``, ``?apikey=``); errors must not echo them."""
    response = await client.post(
        "/api/v1/rpc", json={"jsonrpc": "2.0", "id": 1, "method": DATA, "params": [v06_op(), EP06, hex(CHAIN_ID)]}
    )
    assert "error" in response.json()
    assert NODE_SECRET not in response.text


async def test_health_reports_a_dead_node_without_leaking_its_url(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    assert body["chains"][0]["nodeReachable"] is False
    assert body["signer"]["address"] == SIGNER
    assert NODE_SECRET not in response.text


class FakeNode:
    """A node over real HTTP on the right chain that answers ``eth_call`` as a test tells it."""

    def __init__(self) -> None:
        #: the JSON-RPC reply (without ``jsonrpc`` and ``id``) for each method
        self.replies: dict[str, dict[str, Any]] = {"eth_chainId": {"result": hex(CHAIN_ID)}}
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        reply = self.replies.get(body["method"], {"error": {"code": -32601, "message": "no such method"}})
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], **reply})


@pytest.fixture
async def fake_node(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, FakeNode]]:
    """A client of an app whose node is a :class:`FakeNode`."""
    node = FakeNode()
    async with serving_posts(node.handle) as url:
        node.url = url.rstrip("/")
        anode = build_anode(tmp_path, url, health_cache_seconds=0)  # each hit reads the node
        transport = httpx.ASGITransport(app=create_app(anode, manage_lifecycle=False))
        headers = {"authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://anode.test", headers=headers) as client:
            yield client, node
        await anode.aclose()


async def test_health_is_degraded_when_a_deposit_cannot_be_read(
    fake_node: tuple[httpx.AsyncClient, FakeNode],
) -> None:
    """The node is up and on the right chain, but its ``balanceOf`` calls revert: not "ok"."""
    client, node = fake_node
    node.replies["eth_call"] = {"error": {"code": 3, "message": "execution reverted"}}
    response = await client.get("/health")
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["status"] == "degraded"
    (chain,) = body["chains"]
    assert chain["nodeReachable"] is True and chain["nodeChainId"] == CHAIN_ID
    for paymaster in chain["paymasters"]:
        assert "deposit" not in paymaster
        assert paymaster["error"] == "node refused eth_call: execution reverted"

    node.replies["eth_call"] = {"result": "0x" + (10**18).to_bytes(32, "big").hex()}
    response = await client.get("/health")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ok"
    assert {p["deposit"] for p in response.json()["chains"][0]["paymasters"]} == {str(10**18)}


@pytest.mark.parametrize(
    ("result", "reason"),
    [(None, "null"), ("0xzz", "not hex bytes: '0xzz'"), (12, "expected 0x-prefixed hex bytes")],
)
async def test_a_node_reply_of_the_wrong_shape_is_an_unavailable_node_not_an_internal_error(
    fake_node: tuple[httpx.AsyncClient, FakeNode], result: Any, reason: str
) -> None:
    client, node = fake_node
    node.replies["eth_call"] = {"result": result}
    message = f"node at {node.url} answered eth_call with a malformed result ({reason})"

    response = await client.get("/health")
    assert response.status_code == 503, response.text
    assert response.json()["chains"][0]["paymasters"][0]["error"] == message

    error = await error_of(client, DATA, [v06_op(), EP06, hex(CHAIN_ID)])  # reads the v0.6 senderNonce
    assert error["code"] == -32603, error
    assert error["data"]["anodeCode"] == "ANODE_CHAIN_UNAVAILABLE"
    assert error["message"] == message

    body = {"userOperation": v06_op(), "entryPoint": EP06, "chainId": CHAIN_ID}
    response = await client.post("/api/v1/paymaster/sponsor", json=body)
    assert response.status_code == 503, response.text
    assert await ledger_rows(client) == []


async def test_a_malformed_chain_id_reads_as_an_unreachable_node(fake_node: tuple[httpx.AsyncClient, FakeNode]) -> None:
    client, node = fake_node
    node.replies["eth_chainId"] = {"result": None}
    response = await client.get("/health")
    assert response.status_code == 503, response.text
    (chain,) = response.json()["chains"]
    assert chain["nodeReachable"] is False
    assert chain["error"].endswith("answered eth_chainId with a malformed result (null)")


# -- the ledger behind every signature --------------------------------------------------------


async def test_every_signed_response_adds_exactly_one_ledger_row(client: httpx.AsyncClient) -> None:
    assert await ledger_rows(client) == []
    await result_of(client, STUB, [user_op(), EP07, hex(CHAIN_ID)])
    await result_of(client, STUB, [user_op(), EP08, hex(CHAIN_ID)])
    await result_of(client, STUB, [v06_op(), EP06, hex(CHAIN_ID)])
    assert await ledger_rows(client) == [], "stub data is not a sponsorship"

    await result_of(client, DATA, [user_op(SENDER_A), EP07, hex(CHAIN_ID)])
    assert len(await ledger_rows(client)) == 1
    await result_of(client, DATA, [user_op(SENDER_B, nonce="0x7"), EP08, hex(CHAIN_ID)])
    assert len(await ledger_rows(client)) == 2
    response = await client.post(
        "/api/v1/paymaster/sponsor", json={"userOperation": user_op(SENDER_A), "entryPoint": EP07}
    )
    assert response.status_code == 200, response.text
    rows = await ledger_rows(client)
    assert len(rows) == 3

    newest = rows[0]  # newest first
    assert newest["method"] == "rest.sponsor"
    assert newest["user_op_hash"] == response.json()["userOpHash"]
    assert newest["sender"] == SENDER_A
    assert newest["paymaster"] == PM07
    assert newest["entry_point"] == EP07
    assert newest["chain_id"] == CHAIN_ID
    assert newest["signer"] == SIGNER
    assert newest["nonce"] == "0x2a"
    assert int(newest["valid_until"]) == int(response.json()["validUntil"], 16)
    # v0.7 max cost: (verification + call + paymaster verification + postOp + preVerification) * maxFee
    gas = 0x30D40 + 0x186A0 + 100_000 + 0 + 0xC350
    assert int(newest["max_gas_cost_wei"]) == gas * 0x3B9ACA00
    assert [row["method"] for row in rows] == ["rest.sponsor", DATA, DATA]
    assert rows[1]["sender"] == SENDER_B
    assert rows[1]["nonce"] == "0x7"
    assert rows[1]["entry_point"] == EP08


async def test_operations_filter_by_sender(client: httpx.AsyncClient) -> None:
    for sender in (SENDER_A, SENDER_B, SENDER_A):
        await result_of(client, DATA, [user_op(sender), EP07, hex(CHAIN_ID)])
    assert len(await ledger_rows(client, sender=SENDER_A)) == 2
    assert len(await ledger_rows(client, sender=SENDER_B.lower())) == 1  # any case
    assert await ledger_rows(client, sender=to_checksum_address("0x" + "cc" * 20)) == []
    assert len(await ledger_rows(client, since="2000-01-01T00:00:00Z")) == 3
    assert await ledger_rows(client, since="2999-01-01T00:00:00Z") == []
    assert len(await ledger_rows(client, limit="1")) == 1


@pytest.mark.parametrize(
    ("query", "field"),
    [({"sender": "0x1234"}, "sender"), ({"sender": "alice"}, "sender"), ({"limit": "0"}, "limit")],
)
async def test_operations_bad_query_is_400(client: httpx.AsyncClient, query: dict[str, str], field: str) -> None:
    response = await client.get("/api/v1/operations", params=query)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "ANODE_INVALID_PARAMS"
    assert field in error["message"]


# -- REST -------------------------------------------------------------------------------------


async def test_rest_sponsor_signs_and_reports_the_window_and_hash(client: httpx.AsyncClient) -> None:
    op = user_op()
    response = await client.post(
        "/api/v1/paymaster/sponsor",
        json={"userOperation": op, "entryPoint": EP07, "chainId": hex(CHAIN_ID), "context": {"validForSeconds": 90}},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["paymaster"] == PM07
    assert len(data_bytes(body["paymasterData"])) == 64 + 65
    assert body["callGasLimit"] == op["callGasLimit"]
    assert body["verificationGasLimit"] == op["verificationGasLimit"]
    assert body["preVerificationGas"] == op["preVerificationGas"]
    assert int(body["validUntil"], 16) - int(body["validAfter"], 16) == 90 + 60
    assert len(data_bytes(body["userOpHash"])) == 32


MALFORMED_BODIES = {
    "not json": b"not json",
    "array": b"[]",
    "null": b"null",
    "no userOperation": orjson.dumps({"entryPoint": EP07}),
    "no entryPoint": orjson.dumps({"userOperation": user_op()}),
    "userOperation not an object": orjson.dumps({"userOperation": "0x1234", "entryPoint": EP07}),
    "unknown member": orjson.dumps({"userOperation": user_op(), "entryPoint": EP07, "surprise": 1}),
    "fractional chainId": orjson.dumps({"userOperation": user_op(), "entryPoint": EP07, "chainId": 1.5}),
    "boolean chainId": orjson.dumps({"userOperation": user_op(), "entryPoint": EP07, "chainId": True}),
    "float chainId": orjson.dumps({"userOperation": user_op(), "entryPoint": EP07, "chainId": float(CHAIN_ID)}),
    "negative chainId": orjson.dumps({"userOperation": user_op(), "entryPoint": EP07, "chainId": -1}),
    "unserved chainId": orjson.dumps({"userOperation": user_op(), "entryPoint": EP07, "chainId": "0x1"}),
    "context not an object": orjson.dumps({"userOperation": user_op(), "entryPoint": EP07, "context": "x"}),
    "validForSeconds too large": orjson.dumps(
        {"userOperation": user_op(), "entryPoint": EP07, "context": {"validForSeconds": 10**6}}
    ),
    "bad sender": orjson.dumps({"userOperation": user_op(sender="0x12"), "entryPoint": EP07}),
    "negative nonce": orjson.dumps({"userOperation": user_op(nonce=-1), "entryPoint": EP07}),
    "bad entryPoint": orjson.dumps({"userOperation": user_op(), "entryPoint": "0x12"}),
    "no gas and no bundler": orjson.dumps({"userOperation": user_op(gas=False), "entryPoint": EP07}),
}


@pytest.mark.parametrize("body", list(MALFORMED_BODIES.values()), ids=list(MALFORMED_BODIES))
async def test_rest_sponsor_malformed_body_is_400(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post(
        "/api/v1/paymaster/sponsor", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"].startswith("ANODE_")
    assert error["message"]
    assert await ledger_rows(client) == []


REST_WITH_CHAIN_ID = ["/api/v1/paymaster/sponsor", "/api/v1/security/assess"]


@pytest.mark.parametrize("path", REST_WITH_CHAIN_ID)
@pytest.mark.parametrize(
    ("chain_id", "got"),
    [
        (True, "boolean"),
        (False, "boolean"),
        (float(CHAIN_ID), "number"),
        (1.0, "number"),
        ([1], "array"),
        ({}, "object"),
    ],
)
async def test_rest_chain_id_must_be_an_integer_or_a_hex_string(
    client: httpx.AsyncClient, path: str, chain_id: Any, got: str
) -> None:
    """JSON ``true`` is not chain 1, and ``31337.0`` is no chain id: a 400 naming the field, not a guess."""
    response = await client.post(path, json={"userOperation": user_op(), "entryPoint": EP07, "chainId": chain_id})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "ANODE_INVALID_PARAMS"
    assert error["details"]["field"] == "chainId"
    assert error["message"] == f'chainId: must be a hex string like "0x7a69" or an integer, got {got}'
    assert "not served" not in error["message"]
    assert await ledger_rows(client) == []


@pytest.mark.parametrize("chain_id", [CHAIN_ID, hex(CHAIN_ID), None])
async def test_rest_chain_id_as_integer_or_hex_or_left_out_is_served(client: httpx.AsyncClient, chain_id: Any) -> None:
    body: dict[str, Any] = {"userOperation": user_op(), "entryPoint": EP07}
    if chain_id is not None:
        body["chainId"] = chain_id
    response = await client.post("/api/v1/paymaster/sponsor", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["paymaster"] == PM07


@pytest.mark.parametrize("path", REST_WITH_CHAIN_ID)
@pytest.mark.parametrize("body", [b"not json", b'{"userOperation": {"sender": "0x', b"{'a': 1}", b"\xff\xfe"])
async def test_rest_body_that_is_not_json_says_so_without_a_field(
    client: httpx.AsyncClient, path: str, body: bytes
) -> None:
    response = await client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "ANODE_INVALID_PARAMS"
    assert error["message"].startswith("request body is not valid JSON"), error["message"]
    assert "details" not in error  # no bogus "field": the character offset is not a field


@pytest.mark.parametrize("path", REST_WITH_CHAIN_ID)
async def test_rest_body_without_a_json_content_type_says_so(client: httpx.AsyncClient, path: str) -> None:
    body = orjson.dumps({"userOperation": user_op(), "entryPoint": EP07})
    response = await client.post(path, content=body, headers={"content-type": "text/plain"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["message"].startswith("request body is not JSON"), error["message"]
    assert "Content-Type: application/json" in error["message"]
    assert "details" not in error


@pytest.mark.parametrize("path", REST_WITH_CHAIN_ID)
async def test_rest_empty_body_says_the_body_is_missing(client: httpx.AsyncClient, path: str) -> None:
    response = await client.post(path, content=b"", headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["message"].startswith("request body is missing"), error["message"]
    assert "details" not in error


# -- OpenAPI ----------------------------------------------------------------------------------


async def test_openapi_document_is_valid_and_docs_are_served(anonymous: httpx.AsyncClient) -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    response = await anonymous.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    validator.validate(spec)
    assert spec["openapi"].startswith("3.")
    for path in ("/api/v1/rpc", "/api/v1/paymaster/sponsor", "/api/v1/operations", "/health"):
        assert path in spec["paths"], path
    docs = await anonymous.get("/docs")
    assert docs.status_code == 200
    assert "text/html" in docs.headers["content-type"]
    assert "swagger-ui" in docs.text.lower()


# -- fuzzing: no input makes the server fail ---------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**300)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.binary(max_size=40).map(lambda b: "0x" + b.hex()),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
USER_OP_FIELDS = [
    "sender", "nonce", "initCode", "callData", "callGasLimit", "verificationGasLimit", "preVerificationGas",
    "maxFeePerGas", "maxPriorityFeePerGas", "paymasterAndData", "signature", "factory", "factoryData",
    "paymaster", "paymasterVerificationGasLimit", "paymasterPostOpGasLimit", "paymasterData",
]  # fmt: skip
fuzzed_ops = (
    st.builds(
        lambda base, changes: base | changes,
        st.sampled_from([user_op(), user_op(gas=False), v06_op()]),
        st.dictionaries(st.sampled_from(USER_OP_FIELDS), json_values, max_size=3),
    )
    | json_values
)
fuzzed_calls = st.fixed_dictionaries(
    {
        "jsonrpc": st.just("2.0"),
        "id": st.integers(0, 1000),
        "method": st.sampled_from(
            [STUB, DATA, "pm_sponsorUserOperation", "anode_sponsorUserOperation", "pm_supportedEntryPoints"]
        ),
        "params": st.tuples(
            fuzzed_ops,
            st.sampled_from([EP06, EP07, EP08]) | json_values,
            st.sampled_from([hex(CHAIN_ID), CHAIN_ID, None]) | json_values,
            st.none() | st.fixed_dictionaries({}, optional={"validForSeconds": json_values, "chainId": json_values}),
        ).map(list)
        | json_values,
    }
)

INTERNAL = "internal error: the server logged the cause"


@pytest.fixture
def sync_app(tmp_path: Path, dead_node: str) -> Iterator[FastAPI]:
    """The app for synchronous drivers (Hypothesis, schemathesis), which run their own event loops."""
    node = build_anode(tmp_path, dead_node)
    yield create_app(node, manage_lifecycle=False)
    asyncio.run(node.aclose())


def test_json_rpc_fuzz_never_fails_internally(sync_app: FastAPI) -> None:
    """Random params for every method: each answer is a result or a client/availability error."""
    headers = {"authorization": f"Bearer {API_KEY}"}

    async def post(payload: dict[str, Any]) -> httpx.Response:
        transport = httpx.ASGITransport(app=sync_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://anode.test", headers=headers) as http:
            return await http.post("/api/v1/rpc", json=payload)

    @given(fuzzed_calls)
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(payload: dict[str, Any]) -> None:
        response = asyncio.run(post(payload))
        assert response.status_code == 200, response.text
        reply = response.json()
        assert reply["id"] == payload["id"]
        assert ("result" in reply) != ("error" in reply), reply
        if "error" in reply:
            assert reply["error"]["message"] != INTERNAL, payload
            assert reply["error"]["code"] in (-32602, -32603, -32501, -32500), reply

    check()


def test_schemathesis_finds_no_server_error(sync_app: FastAPI) -> None:
    """Every documented operation, with valid and invalid inputs, answers below 500.

    ``/health`` is left out: with the node down it answers 503 by design.
    """
    schemathesis = pytest.importorskip("schemathesis")
    schema = schemathesis.openapi.from_asgi("/openapi.json", sync_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} >= {
        ("POST", "/api/v1/rpc"),
        ("POST", "/api/v1/paymaster/sponsor"),
        ("GET", "/api/v1/operations"),
    }
    headers = {"authorization": f"Bearer {API_KEY}"}
    for operation in operations:
        if operation.path == "/health":
            continue
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def check(case: Any) -> None:
                response = case.call(headers=headers)
                assert response.status_code < 500, (case.method, case.path, case.body, response.text)

            try:
                check()
            except Unsatisfiable:
                # an operation with no inputs (GET /api/v1/keys) has nothing to make invalid
                assert mode is schemathesis.GenerationMode.NEGATIVE, operation.path


ADMIN_KEY = "test-admin-key-0123456789"
ALL_MODULES_OPERATIONS = {
    ("POST", "/api/v1/paymaster/process"),
    ("POST", "/api/v1/security/assess"),
    ("GET", "/api/v1/validation/sbt/{address}"),
    ("GET", "/api/v1/validation/pnt/{address}"),
    ("POST", "/api/v1/policies"),
    ("PUT", "/api/v1/policies/{policy_id}"),
    ("POST", "/api/v1/keys"),
}


@pytest.fixture
def all_modules_app(tmp_path: Path, anvil: Anvil) -> Iterator[FastAPI]:
    """Every pipeline module enabled, reading real SBT and PNT contracts on the session's anvil.

    The paymasters stay at made-up addresses (v0.6 final data then fails cleanly: no contract
    answers ``senderNonce``); SENDER_A holds an identity SBT and enough points, so operations of
    that sender pass the checks and reach the policy engine and the signer.
    """
    contracts = deploy_check_contracts(anvil.rpc_url)
    contracts.mint_sbt("identity", SENDER_A)
    contracts.mint_pnt(SENDER_A, 500 * 10**18)
    tree = settings_tree(tmp_path, anvil.rpc_url)
    tree["auth"]["admin_keys"] = [ADMIN_KEY]
    tree["pipeline"] = {
        "modules": [
            {
                "name": "sbt_validator",
                "config": {"contracts": [{"address": contracts.sbt["identity"], "type": "identity"}],
                           "required_types": ["identity"]},
            },
            {
                "name": "pnt_balance_validator",
                "config": {"contract_address": contracts.pnt, "min_balance": str(100 * 10**18),
                           "include_staked": True, "staking_contract": contracts.staking},
            },
            {"name": "security_filter", "config": {"block_threshold": 80, "confirm_threshold": 40}},
            {"name": "policy_engine"},
            {"name": "paymaster_signer"},
        ]
    }  # fmt: skip
    tree["policies"] = [
        {"id": "per-wallet", "name": "each wallet", "type": "wallet", "target": "*",
         "rate_limits": [{"type": "request", "limit": 1000, "window": 3600}]},
    ]  # fmt: skip
    node = build(validate_settings(tree))
    yield create_app(node, manage_lifecycle=False)

    asyncio.run(node.aclose())


def internal_errors(response: httpx.Response) -> list[Any]:
    """The internal-error objects in an answer (REST ``error``, JSON-RPC ``error``, batches too)."""
    try:
        body = response.json()
    except ValueError:
        return []
    replies = body if isinstance(body, list) else [body]
    errors = [reply.get("error") for reply in replies if isinstance(reply, dict)]
    return [
        e
        for e in errors
        if isinstance(e, dict) and (e.get("code") in ("ANODE_INTERNAL", -32603) and e.get("message") == INTERNAL)
    ]


def test_the_zero_address_holds_no_sbt_rather_than_failing_the_node(all_modules_app: FastAPI) -> None:
    """Found by the run below: ERC-721 ``balanceOf(0)`` reverts, which answered 503 "chain unavailable"
    for a client's input. The zero address holds no token: the check says so, the node is fine."""
    zero = "0x" + "00" * 20

    async def ask() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=all_modules_app)
        headers = {"authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://anode.test", headers=headers) as http:
            holder = await http.get(f"/api/v1/validation/sbt/{SENDER_A}")
            nobody = await http.get(f"/api/v1/validation/sbt/{zero}")
            body = {"userOperation": user_op(zero), "entryPoint": EP07, "chainId": CHAIN_ID}
            processed = await http.post("/api/v1/paymaster/process", json=body)
        for client in all_modules_app.state.anode.clients:
            await client.aclose()  # its connections belong to this event loop
        return holder, nobody, processed

    holder, nobody, processed = asyncio.run(ask())
    assert holder.status_code == 200 and holder.json()["sbtValidation"]["isValid"] is True, holder.text
    assert nobody.status_code == 200, nobody.text
    assert nobody.json()["sbtValidation"]["isValid"] is False
    assert nobody.json()["sbtValidation"]["missingTypes"] == ["identity"]
    assert processed.status_code == 403, processed.text
    assert processed.json()["error"]["code"] in ("ANODE_001_SBT_NOT_FOUND", "ANODE_002_INSUFFICIENT_PNT")


def test_schemathesis_with_every_module_and_an_admin_key_finds_no_internal_error(all_modules_app: FastAPI) -> None:
    """The pipeline's endpoints (``/process``, ``/security/assess``, ``/validation/*``) and the admin
    ones (``/api/v1/keys``, ``/api/v1/policies``) get past routing and authentication here: no
    answer is a 500 or an internal error. A 503 is allowed only as a named unavailability (the
    made-up paymasters are no contracts)."""
    schemathesis = pytest.importorskip("schemathesis")
    schema = schemathesis.openapi.from_asgi("/openapi.json", all_modules_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(op.method.upper(), op.path) for op in operations} >= ALL_MODULES_OPERATIONS
    headers = {"authorization": f"Bearer {ADMIN_KEY}"}
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def check(case: Any) -> None:
                response = case.call(headers=headers)
                where = (case.method, case.path, case.path_parameters, case.query, case.body, response.text)
                assert response.status_code != 500, where
                assert not internal_errors(response), where
                if response.status_code >= 500:
                    assert response.status_code == 503, where
                    if case.path != "/health":
                        assert response.json()["error"]["code"].endswith("_UNAVAILABLE"), where

            try:
                check()
            except Unsatisfiable:
                assert mode is schemathesis.GenerationMode.NEGATIVE, operation.path


def test_process_fuzz_with_every_module_never_fails_internally(all_modules_app: FastAPI) -> None:
    """Schemathesis rarely builds a userOp that parses; these do, from a sender that holds the SBT and
    the points, so the checks, the policy engine and the signer all run on what the fuzzer sends."""
    app = all_modules_app
    headers = {"authorization": f"Bearer {API_KEY}"}
    ops = st.builds(
        lambda base, changes: base | changes,
        st.sampled_from([user_op(), user_op(gas=False), v06_op()]),
        st.dictionaries(st.sampled_from(USER_OP_FIELDS), json_values, max_size=2),
    )
    bodies = st.fixed_dictionaries(
        {"userOperation": ops, "entryPoint": st.sampled_from([EP06, EP07, EP08])},
        optional={
            "chainId": st.sampled_from([CHAIN_ID, hex(CHAIN_ID)]),
            "context": st.none() | st.fixed_dictionaries({}, optional={"validForSeconds": json_values}),
        },
    )

    async def post(path: str, body: dict[str, Any]) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://anode.test", headers=headers) as http:
            response = await http.post(path, json=body)
        for client in app.state.anode.clients:
            await client.aclose()  # its connections belong to this event loop
        return response

    @given(st.sampled_from(["/api/v1/paymaster/process", "/api/v1/security/assess"]), bodies)
    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(path: str, body: dict[str, Any]) -> None:
        response = asyncio.run(post(path, body))
        assert response.status_code != 500, (path, body, response.text)
        assert not internal_errors(response), (path, body, response.text)
        if response.status_code >= 500:
            assert response.json()["error"]["code"].endswith("_UNAVAILABLE"), (path, body, response.text)

    check()


async def test_an_exception_escaping_json_rpc_is_a_json_500_with_a_request_id(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """JSON-RPC is answered ahead of FastAPI's error middleware (``AnodeApp``): a bug there still
    gets the JSON answer that middleware gives, is logged, and keeps its request id."""
    from anode.api.jsonrpc import asgi

    async def broken(body: bytes, ctx: Any) -> bytes:
        raise RuntimeError("a bug in dispatch")

    monkeypatch.setattr(asgi, "dispatch", broken)
    reply = await client.post("/api/v1/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "pm_supportedEntryPoints"})
    assert reply.status_code == 500
    assert reply.json() == {"error": {"code": "ANODE_INTERNAL", "message": INTERNAL}}
    assert len(reply.headers["x-request-id"]) == 16
    assert "a bug in dispatch" not in reply.text
    assert any("unexpected error" in record.getMessage() for record in caplog.records)
