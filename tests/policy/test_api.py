"""The policies as an operator and a wallet meet them over HTTP: the admin REST API, refusals through
JSON-RPC and REST, ``pm_validateSponsorshipPolicies``, and failing closed when the limit store is down.

The app runs in process (``httpx.ASGITransport``) on a temporary SQLite database with the
pipeline ``[policy_engine, paymaster_signer]``; no chain runs (v0.7 paymaster data needs no node).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from eth_abi.abi import encode
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from anode.api.app import create_app
from anode.config import validate_settings
from anode.wiring import Anode, build
from tests.integration.test_api_errors import (
    API_KEY,
    CHAIN_ID,
    EP07,
    INTERNAL,
    fuzzed_ops,
    json_values,
    settings_tree,
    user_op,
)
from tests.policy.conftest import policy
from tests.support.asgi import client_of, client_of_app

ADMIN_KEY = "test-admin-key-0123456789"
SECRET = "whsec-abcdefghijklmnop"
PIPELINE = {"modules": [{"name": "policy_engine"}, {"name": "paymaster_signer"}]}


def app_of(anode: Anode) -> FastAPI:
    return create_app(anode, manage_lifecycle=False)


@pytest.fixture
def make_anode(tmp_path: Path, unused_port: int) -> Callable[..., Anode]:
    def make(**extra: Any) -> Anode:
        tree = settings_tree(tmp_path, f"http://127.0.0.1:{unused_port}/")
        tree["auth"]["admin_keys"] = [ADMIN_KEY]
        tree["pipeline"] = PIPELINE
        tree.update(extra)
        return build(validate_settings(tree))

    return make


@pytest.fixture
async def anode(make_anode: Callable[..., Anode]) -> AsyncIterator[Anode]:
    node = make_anode(policies=[policy(id="seeded", name="from the file")])
    yield node
    await node.aclose()
    for module in node.service.pipeline.policies:
        await module.aclose()  # type: ignore[attr-defined]


@pytest.fixture
async def admin(anode: Anode) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(anode, ADMIN_KEY) as client:
        yield client


@pytest.fixture
async def project(anode: Anode) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(anode, API_KEY) as client:
        yield client


async def rpc(client: httpx.AsyncClient, method: str, params: list[Any]) -> dict[str, Any]:
    response = await client.post("/api/v1/rpc", json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    assert response.status_code == 200, response.text
    reply: dict[str, Any] = response.json()
    return reply


# -- managing policies ------------------------------------------------------------------------


async def test_an_admin_creates_reads_replaces_and_deletes_policies(admin: httpx.AsyncClient) -> None:
    listed = (await admin.get("/api/v1/policies")).json()
    assert [p["id"] for p in listed["policies"]] == ["seeded"]

    body = {
        "name": "daily cap",
        "type": "project",
        "rate_limits": [{"type": "amount", "limit": "1 ether", "window": 86400}],
    }
    created = await admin.post("/api/v1/policies", json=body)
    assert created.status_code == 201, created.text
    made = created.json()
    assert made["id"].startswith("pol_") and made["rate_limits"][0]["limit"] == "1000000000000000000"

    one = await admin.get(f"/api/v1/policies/{made['id']}")
    assert one.json() == made
    replaced = await admin.put(f"/api/v1/policies/{made['id']}", json={**body, "enabled": False})
    assert replaced.status_code == 200 and replaced.json()["enabled"] is False

    assert (await admin.delete(f"/api/v1/policies/{made['id']}")).status_code == 204
    gone = await admin.get(f"/api/v1/policies/{made['id']}")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "ANODE_POLICY_NOT_FOUND"


async def test_only_admin_keys_manage_policies(anode: Anode, project: httpx.AsyncClient) -> None:
    assert (await project.get("/api/v1/policies")).status_code == 403
    assert (await project.post("/api/v1/policies", json=policy())).status_code == 403
    async with client_of(anode, None) as anonymous:
        assert (await anonymous.get("/api/v1/policies")).status_code == 401
        assert (await anonymous.get("/api/v1/policies/seeded/status")).status_code == 401


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"name": "x", "type": "contract"}, "body", "needs target"),
        (
            {"name": "x", "type": "project", "rate_limits": [{"type": "amount", "limit": 1.5e18, "window": 60}]},
            "rate_limits.0.amount.limit",
            "amounts must be exact",
        ),
        ({"name": "x", "type": "nonsense"}, "type", "project"),
    ],
)
async def test_an_invalid_policy_is_refused_naming_the_field(
    admin: httpx.AsyncClient, body: dict[str, Any], field: str, words: str
) -> None:
    response = await admin.post("/api/v1/policies", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "ANODE_INVALID_PARAMS" and words in error["message"]
    assert error["details"]["field"].endswith(field) or field == "body"


async def test_ids_are_unique_and_fixed(admin: httpx.AsyncClient) -> None:
    duplicate = await admin.post("/api/v1/policies", json=policy(id="seeded"))
    assert duplicate.status_code == 409 and duplicate.json()["error"]["code"] == "ANODE_POLICY_EXISTS"
    moved = await admin.put("/api/v1/policies/seeded", json=policy(id="elsewhere"))
    assert moved.status_code == 400 and "must match" in moved.json()["error"]["message"]
    missing = await admin.put("/api/v1/policies/ghost", json=policy(id="ghost"))
    assert missing.status_code == 404


async def test_webhook_secrets_are_never_answered_and_survive_a_masked_update(
    anode: Anode, admin: httpx.AsyncClient
) -> None:
    hook = {"url": "https://hooks.example/approve", "secret": SECRET, "fail_mode": "open"}
    created = await admin.post("/api/v1/policies", json=policy(id="hooked", type="custom", webhook=hook))
    assert created.status_code == 201
    as_read = (await admin.get("/api/v1/policies/hooked")).json()
    assert as_read["webhook"]["secret"] == "********"
    as_read["name"] = "renamed"
    updated = await admin.put("/api/v1/policies/hooked", json=as_read)  # GET → edit → PUT
    assert updated.status_code == 200 and updated.json()["name"] == "renamed"
    without = {**as_read, "webhook": {k: v for k, v in as_read["webhook"].items() if k != "secret"}}
    assert (await admin.put("/api/v1/policies/hooked", json=without)).status_code == 200
    for text in (created.text, updated.text, (await admin.get("/api/v1/policies")).text):
        assert SECRET not in text
    from anode.pipeline.modules.policy_engine import engine_of

    engine = engine_of(anode.service.pipeline.policies)
    assert engine is not None and await engine.repository.stored_secret("hooked") == SECRET
    masked_create = await admin.post(
        "/api/v1/policies", json=policy(type="custom", webhook={**hook, "secret": "********"})
    )
    assert masked_create.status_code == 400 and "webhook.secret is required" in masked_create.text


# -- limits through the sponsoring endpoints --------------------------------------------------


async def test_a_limit_refuses_through_json_rpc_and_rest_alike(
    admin: httpx.AsyncClient, project: httpx.AsyncClient
) -> None:
    await admin.delete("/api/v1/policies/seeded")
    two = policy(id="two", name="two ops", rate_limits=[{"type": "request", "limit": 2}])
    assert (await admin.post("/api/v1/policies", json=two)).status_code == 201
    params = [user_op(), EP07, hex(CHAIN_ID), {}]
    for _ in range(3):  # stubs reserve nothing
        assert "result" in await rpc(project, "pm_getPaymasterStubData", params)
    for _ in range(2):
        assert "result" in await rpc(project, "pm_getPaymasterData", params)
    error = (await rpc(project, "pm_getPaymasterData", params))["error"]
    assert error["code"] == -32501
    assert error["data"]["anodeCode"] == "ANODE_010_POLICY_LIMIT_EXCEEDED"
    assert (
        error["message"]
        == "policy 'two ops': request limit of 2 operations in total reached (2 sponsored); it does not reset"
    )
    stub_error = (await rpc(project, "pm_getPaymasterStubData", params))["error"]
    assert stub_error["data"]["anodeCode"] == "ANODE_010_POLICY_LIMIT_EXCEEDED"
    rest = await project.post(
        "/api/v1/paymaster/sponsor", json={"userOperation": user_op(), "entryPoint": EP07, "chainId": CHAIN_ID}
    )
    assert rest.status_code == 403 and rest.json()["error"]["code"] == "ANODE_010_POLICY_LIMIT_EXCEEDED"
    status = (await admin.get("/api/v1/policies/two/status")).json()
    assert (status["limits"][0]["used"], status["limits"][0]["remaining"]) == (2, 0)
    rows = (await project.get("/api/v1/operations")).json()
    assert rows["count"] == 2  # what was recorded is exactly what was reserved


async def test_status_needs_a_wallet_for_per_wallet_policies(admin: httpx.AsyncClient) -> None:
    each = policy(id="each", type="wallet", target="*", rate_limits=[{"type": "request", "limit": 3, "window": 60}])
    assert (await admin.post("/api/v1/policies", json=each)).status_code == 201
    missing = await admin.get("/api/v1/policies/each/status")
    assert missing.status_code == 400 and "?wallet=" in missing.json()["error"]["message"]
    bad = await admin.get("/api/v1/policies/each/status", params={"wallet": "0x1234"})
    assert bad.status_code == 400 and bad.json()["error"]["details"]["field"] == "wallet"
    fine = await admin.get("/api/v1/policies/each/status", params={"wallet": user_op()["sender"]})
    assert fine.status_code == 200 and fine.json()["limits"][0]["resetsAt"].endswith("Z")


async def test_validate_sponsorship_policies_is_a_dry_run(admin: httpx.AsyncClient, project: httpx.AsyncClient) -> None:
    one = policy(id="one", name="One", description="a single op", rate_limits=[{"type": "request", "limit": 1}])
    assert (await admin.post("/api/v1/policies", json=one)).status_code == 201
    params = [user_op(), EP07, ["one", "seeded", "ghost"]]
    for _ in range(2):
        reply = await rpc(project, "pm_validateSponsorshipPolicies", params)
        assert reply["result"] == [
            {
                "sponsorshipPolicyId": "one",
                "data": {"name": "One", "author": None, "icon": None, "description": "a single op"},
            },
            {
                "sponsorshipPolicyId": "seeded",
                "data": {"name": "from the file", "author": None, "icon": None, "description": None},
            },
        ]
    everything = await rpc(project, "pm_validateSponsorshipPolicies", [user_op(), EP07])
    assert [p["sponsorshipPolicyId"] for p in everything["result"]] == ["one", "seeded"]
    bad = await rpc(project, "pm_validateSponsorshipPolicies", [user_op(), EP07, [1]])
    assert bad["error"]["code"] == -32602


async def test_with_no_policy_the_dry_run_says_the_server_sponsors_by_default(
    make_anode: Callable[..., Anode],
) -> None:
    for when, sponsored in (("sponsor", True), ("refuse", False)):
        node = make_anode(
            pipeline={
                "modules": [
                    {"name": "policy_engine", "config": {"when_no_policies": when}},
                    {"name": "paymaster_signer"},
                ]
            }
        )
        try:
            async with client_of(node, API_KEY) as client:
                real = await rpc(client, "pm_getPaymasterData", [user_op(), EP07, hex(CHAIN_ID), {}])
                assert ("result" in real) is sponsored, real
                for ids in ([], ["ghost"]):
                    dry = (await rpc(client, "pm_validateSponsorshipPolicies", [user_op(), EP07, ids]))["result"]
                    if sponsored:
                        assert dry == [
                            {
                                "sponsorshipPolicyId": "anode:default",
                                "data": {
                                    "name": "sponsored by default",
                                    "author": None,
                                    "icon": None,
                                    "description": (
                                        "no sponsorship policy is defined on this server, and it then sponsors "
                                        "every operation (policy_engine when_no_policies: sponsor)"
                                    ),
                                    "sponsoredByDefault": True,
                                },
                            }
                        ]
                    else:
                        assert dry == []
        finally:
            await node.aclose()
            for module in node.service.pipeline.policies:
                await module.aclose()  # type: ignore[attr-defined]


# -- the calls policies see: the same whichever modules run, in the dry run too ---------------

NFT = "0x2222222222222222222222222222222222222222"
OTHER = "0x3333333333333333333333333333333333333333"
MINT = bytes.fromhex("40c10f19") + bytes(64)
TRANSFER = bytes.fromhex("a9059cbb") + bytes(64)
#: the security filter vouches for both contracts, so it reads nothing from the (absent) chain
SECURITY = {"name": "security_filter", "config": {"verified_contracts": [NFT, OTHER]}}
WITH_FILTER = {"modules": [SECURITY, {"name": "policy_engine"}, {"name": "paymaster_signer"}]}
WITHOUT_FILTER = PIPELINE


def erc7579_mint() -> str:
    """ERC-7579 ``execute(bytes32,bytes)``, single-call mode: NFT.mint(...)."""
    execution = bytes.fromhex(NFT[2:]) + bytes(32) + MINT
    return "0x" + (bytes.fromhex("e9ae5c53") + encode(["bytes32", "bytes"], [bytes(32), execution])).hex()


def simple_account_execute(target: str, data: bytes) -> str:
    """SimpleAccount ``execute(address,uint256,bytes)``: selector 0xb61d27f6."""
    return "0x" + (bytes.fromhex("b61d27f6") + encode(["address", "uint256", "bytes"], [target, 0, data])).hex()


async def sponsored_by(client: httpx.AsyncClient, op: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """The dry run's answer, and the real call's reply."""
    dry = await rpc(client, "pm_validateSponsorshipPolicies", [op, EP07, []])
    real = await rpc(client, "pm_getPaymasterData", [op, EP07, hex(CHAIN_ID), {}])
    return [entry["sponsorshipPolicyId"] for entry in dry["result"]], real


@pytest.mark.parametrize("pipeline", [WITH_FILTER, WITHOUT_FILTER], ids=["security_filter", "no_security_filter"])
async def test_an_erc7579_op_gets_the_same_answer_from_the_dry_run_and_the_real_call(
    make_anode: Callable[..., Anode], pipeline: dict[str, Any]
) -> None:
    node = make_anode(pipeline=pipeline, policies=[policy(id="nft", type="contract", target=NFT)])
    try:
        async with client_of(node, API_KEY) as client:
            dry, real = await sponsored_by(client, user_op(callData=erc7579_mint()))
            assert dry == ["nft"] and "result" in real, real
            # a call to another contract: no policy applies, in either
            dry, real = await sponsored_by(client, user_op(callData=simple_account_execute(OTHER, TRANSFER)))
            assert dry == [] and real["error"]["data"]["anodeCode"] == "ANODE_015_NO_POLICY"
    finally:
        await node.aclose()
        for module in node.service.pipeline.policies:
            await module.aclose()  # type: ignore[attr-defined]


@pytest.mark.parametrize("pipeline", [WITH_FILTER, WITHOUT_FILTER], ids=["security_filter", "no_security_filter"])
async def test_an_allow_list_refuses_a_deploy_only_op_whichever_modules_run(
    make_anode: Callable[..., Anode], pipeline: dict[str, Any]
) -> None:
    allow = policy(id="allow", conditions=[{"field": "target", "operator": "in", "value": [NFT]}])
    node = make_anode(pipeline=pipeline, policies=[allow])
    try:
        async with client_of(node, API_KEY) as client:
            dry, real = await sponsored_by(client, user_op(callData="0x"))
            assert dry == []
            assert real["error"]["data"]["anodeCode"] == "ANODE_011_POLICY_CONDITION_FAILED"
            assert "makes no call" in real["error"]["message"]
            dry, real = await sponsored_by(client, user_op(callData=simple_account_execute(NFT, MINT)))
            assert dry == ["allow"] and "result" in real, real
    finally:
        await node.aclose()
        for module in node.service.pipeline.policies:
            await module.aclose()  # type: ignore[attr-defined]


async def test_the_issues_example_sponsors_a_simple_account_execute(make_anode: Callable[..., Anode]) -> None:
    """``{field: function, operator: in, value: ["0xb61d27f6"]}`` with a real SimpleAccount execute callData."""
    issue = policy(id="issue", conditions=[{"field": "function", "operator": "in", "value": ["0xb61d27f6"]}])
    node = make_anode(policies=[issue])
    try:
        async with client_of(node, API_KEY) as client:
            dry, real = await sponsored_by(client, user_op(callData=simple_account_execute(NFT, MINT)))
            assert dry == ["issue"] and "result" in real, real
            dry, real = await sponsored_by(client, user_op(callData=erc7579_mint()))  # not SimpleAccount execute
            assert dry == [] and real["error"]["data"]["anodeCode"] == "ANODE_011_POLICY_CONDITION_FAILED"
    finally:
        await node.aclose()
        for module in node.service.pipeline.policies:
            await module.aclose()  # type: ignore[attr-defined]


# -- failing closed, and no engine ------------------------------------------------------------


async def test_limit_store_down_refuses_and_signs_nothing(make_anode: Callable[..., Anode], unused_port: int) -> None:
    node = make_anode(
        redis_url=f"redis://127.0.0.1:{unused_port}/0",
        pipeline={
            "modules": [{"name": "policy_engine", "config": {"store_timeout": 0.3}}, {"name": "paymaster_signer"}]
        },
        policies=[policy(id="capped", rate_limits=[{"type": "request", "limit": 100, "window": 60}])],
    )
    try:
        async with client_of(node, API_KEY) as client:
            error = (await rpc(client, "pm_getPaymasterData", [user_op(), EP07, hex(CHAIN_ID), {}]))["error"]
            assert error["code"] == -32603
            assert error["data"]["anodeCode"] == "ANODE_LIMIT_STORE_UNAVAILABLE"
            assert "nothing is sponsored" in error["message"]
            assert (await client.get("/api/v1/operations")).json()["count"] == 0
    finally:
        await node.aclose()
        for module in node.service.pipeline.policies:
            await module.aclose()  # type: ignore[attr-defined]


async def test_without_the_engine_the_policies_api_refuses_and_stores_nothing(
    make_anode: Callable[..., Anode], tmp_path: Path
) -> None:
    """A policy written while no engine runs would be stored and never enforced: 409, nothing kept."""
    node = make_anode(pipeline={"modules": [{"name": "paymaster_signer"}]})
    try:
        async with client_of(node, ADMIN_KEY) as client:
            calls = [
                client.post("/api/v1/policies", json=policy(id="ignored")),
                client.put("/api/v1/policies/ignored", json=policy(id="ignored")),
                client.delete("/api/v1/policies/ignored"),
                client.get("/api/v1/policies"),
                client.get("/api/v1/policies/ignored"),
                client.get("/api/v1/policies/ignored/status"),
            ]
            for response in [await call for call in calls]:
                assert response.status_code == 409, response.text
                error = response.json()["error"]
                assert error["code"] == "ANODE_POLICY_ENGINE_OFF"
                assert "pipeline.modules: policy_engine" in error["message"]
            engine = sa.create_engine(f"sqlite:///{tmp_path / 'anode.db'}")
            with engine.connect() as connection:
                assert connection.execute(sa.text("SELECT count(*) FROM policies")).scalar_one() == 0
            engine.dispose()
            # and its dry run agrees with its real calls: nothing in policies stops it sponsoring
            dry = await rpc(client, "pm_validateSponsorshipPolicies", [user_op(), EP07, []])
            assert [(e["sponsorshipPolicyId"], e["data"]["sponsoredByDefault"]) for e in dry["result"]] == [
                ("anode:default", True)
            ]
            assert "result" in await rpc(client, "pm_getPaymasterData", [user_op(), EP07, hex(CHAIN_ID), {}])
    finally:
        await node.aclose()


# -- fuzzing: no input makes a server error ---------------------------------------------------


#: callData of every layout the decoder reads, and some it does not
CALL_DATAS = [
    "0x",
    "0xb61d27f6",
    simple_account_execute(NFT, MINT),
    simple_account_execute(OTHER, TRANSFER),
    erc7579_mint(),
    "0xe9ae5c53" + "00" * 40,
]
#: policies that make evaluation look at every field (the fuzz must reach it, not stop at the params)
FUZZ_POLICIES = [
    policy(id="seeded", rate_limits=[{"type": "request", "limit": 5, "window": 60}]),
    policy(
        id="nft",
        type="contract",
        target=NFT,
        conditions=[{"field": "function", "operator": "in", "value": ["0x40c10f19"]}],
    ),
    policy(
        id="fields",
        conditions=[
            {"field": "function", "operator": "not_in", "value": ["0xa9059cbb"]},
            {"field": "target", "operator": "neq", "value": OTHER},
            {"field": "value", "operator": "lte", "value": "1 ether"},
        ],
    ),
    policy(id="each", type="wallet", target="*", rate_limits=[{"type": "amount", "limit": "1 ether", "window": 60}]),
]


@pytest.fixture
def sync_app(make_anode: Callable[..., Anode]) -> Iterator[FastAPI]:
    """The app for synchronous drivers (Hypothesis, schemathesis), which run their own event loops."""
    node = make_anode(policies=FUZZ_POLICIES)
    yield app_of(node)
    asyncio.run(node.aclose())
    for module in node.service.pipeline.policies:
        asyncio.run(module.aclose())  # type: ignore[attr-defined]


def test_validate_sponsorship_policies_fuzz_never_fails_internally(sync_app: FastAPI) -> None:
    """Well-formed calls with odd operations (so the engine runs), malformed params, and anything at all."""
    call_data = st.sampled_from(CALL_DATAS) | st.binary(max_size=200).map(lambda b: "0x" + b.hex())
    ops = st.builds(
        lambda base, data: base | {"callData": data}, fuzzed_ops.filter(lambda o: isinstance(o, dict)), call_data
    )
    ids = st.lists(st.sampled_from([p["id"] for p in FUZZ_POLICIES] + ["ghost"]), max_size=3)
    chain = st.sampled_from([hex(CHAIN_ID), CHAIN_ID, None])
    params = (
        st.tuples(ops, st.just(EP07), ids, chain)
        | st.tuples(fuzzed_ops, st.just(EP07) | json_values, ids | json_values, chain | json_values)
    ).map(list) | json_values
    calls = st.fixed_dictionaries(
        {
            "jsonrpc": st.just("2.0"),
            "id": st.integers(0, 1000),
            "method": st.just("pm_validateSponsorshipPolicies"),
            "params": params,
        }
    )

    async def post(payload: dict[str, Any]) -> httpx.Response:
        async with client_of_app(sync_app, API_KEY) as http:
            return await http.post("/api/v1/rpc", json=payload)

    answered: list[bool] = []

    @given(calls)
    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(payload: dict[str, Any]) -> None:
        reply = asyncio.run(post(payload)).json()
        answered.append("result" in reply)
        if "error" in reply:
            assert reply["error"]["message"] != INTERNAL, (payload, reply)
            assert reply["error"]["code"] in (-32602, -32603), reply

    check()
    assert sum(answered) >= 20, "the fuzz must reach the engine, not only the params check"


def test_schemathesis_finds_no_server_error_in_the_policies_api(sync_app: FastAPI) -> None:
    schemathesis = pytest.importorskip("schemathesis")
    schema = schemathesis.openapi.from_asgi("/openapi.json", sync_app)
    operations = [r.ok() for r in schema.get_all_operations() if r.ok().path.startswith("/api/v1/policies")]
    assert len(operations) == 6
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def check(case: Any) -> None:
                response = case.call(headers={"authorization": f"Bearer {ADMIN_KEY}"})
                assert response.status_code < 500, (case.method, case.path, case.body, response.text)

            try:
                check()
            except Unsatisfiable:
                assert mode is schemathesis.GenerationMode.NEGATIVE, operation.path
