"""The contract blacklist admins manage at run time (``/api/v1/security/blacklist``) and the security
filter that reads it: admin-only management, address checks, a blacklisted target refused with
``ANODE_020_SECURITY_BLOCKED`` and let through again once deleted, entries per chain, how a second
server sees them, and failing closed when the table cannot be read.

The API tests run the real application in process (``httpx.ASGITransport``) on SQLite and on
PostgreSQL (skipped, saying so, without a server). Their target contract is on the settings' verified
list, so no chain is read (its node is a dead port) and the blacklist alone decides: an API entry
beats the verified list. The same flow against a contract deployed on anvil is the last test. Time
never decides a result: the API tests use a 300 s refresh interval (a write through the server takes
effect by dropping its copy, not by waiting) and the store tests a hand-moved clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from eth_abi import encode
from eth_utils.address import to_checksum_address

from anode.chain.cache import MemoryTTLCache
from anode.config import validate_settings
from anode.devchain.anvil import Anvil
from anode.errors import StoreUnavailable
from anode.pipeline.base import Verdict
from anode.pipeline.modules.security import BLOCKED, Config, SecurityFilter
from anode.pipeline.security.decode import APPROVE
from anode.store.blacklist import BlacklistSnapshot, SqlBlacklist
from anode.store.confirmations import SqlConfirmationStore
from anode.wiring import Anode, build
from tests.integration.test_api_errors import API_KEY, EP07, dead_node, settings_tree, user_op  # noqa: F401
from tests.security.test_flow import contracts, erc7677, op, rpc, tree  # noqa: F401
from tests.security.test_module import BAD, CHAIN_ID, OLD, SPENDER, Harness, execute
from tests.support.asgi import client_of

ADMIN_KEY = "blacklist-admin-key-0123456789"
#: a contract the settings vouch for: sponsored without reading the chain, unless blacklisted
TARGET = to_checksum_address("0x" + "c0" * 20)
OTHER_CHAIN = 10
URL = "/api/v1/security/blacklist"


# -- the API ----------------------------------------------------------------------------------


@pytest.fixture
async def anode(tmp_path: Path, database_url: str, dead_node: str) -> AsyncIterator[Anode]:  # noqa: F811
    settings = settings_tree(tmp_path, dead_node)
    settings["database_url"] = database_url
    settings["auth"]["admin_keys"] = [ADMIN_KEY]
    settings["pipeline"] = {
        "modules": [
            {
                "name": "security_filter",
                "config": {
                    "blacklist_contracts": [BAD],
                    "verified_contracts": [TARGET],
                    "blacklist_refresh_seconds": 300,
                },
            },
            {"name": "paymaster_signer"},
        ]
    }
    node = build(validate_settings(settings))
    yield node
    await node.aclose()


@pytest.fixture
async def admin(anode: Anode) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(anode, ADMIN_KEY) as client:
        yield client


@pytest.fixture
async def project(anode: Anode) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(anode, API_KEY) as client:
        yield client


def calling(target: str) -> dict[str, Any]:
    return user_op(callData=execute(target))


async def sponsor(client: httpx.AsyncClient, target: str) -> dict[str, Any]:
    body = {"jsonrpc": "2.0", "id": 1, "method": "pm_getPaymasterData", "params": [calling(target), EP07, "0x7a69", {}]}
    response = await client.post("/api/v1/rpc", json=body)
    assert response.status_code == 200, response.text
    reply: dict[str, Any] = response.json()
    return reply


async def test_an_admin_adds_lists_and_deletes_entries(admin: httpx.AsyncClient) -> None:
    empty = (await admin.get(URL)).json()
    assert empty == {"entries": [], "count": 0, "fromSettings": [BAD], "refreshSeconds": 300}

    added = await admin.post(URL, json={"address": TARGET.lower(), "reason": "drainer  "})
    assert added.status_code == 201, added.text
    entry = added.json()
    assert entry["address"] == TARGET and entry["chainId"] is None and entry["reason"] == "drainer"
    assert entry["created"] is True and entry["id"] == f"*:{TARGET.lower()}"
    assert entry["createdBy"] and entry["createdBy"] != ADMIN_KEY  # the key's id, never the key
    on_chain = await admin.post(URL, json={"address": TARGET, "chainId": "0x7a69", "reason": "only here"})
    assert on_chain.status_code == 201 and on_chain.json()["chainId"] == CHAIN_ID

    # adding again is idempotent: 200, the entry as first made
    again = await admin.post(URL, json={"address": TARGET.upper().replace("0X", "0x"), "reason": "other words"})
    assert again.status_code == 200 and again.json() == {**entry, "created": False}

    listed = (await admin.get(URL)).json()
    assert listed["count"] == 2
    assert {(e["address"], e["chainId"]) for e in listed["entries"]} == {(TARGET, None), (TARGET, CHAIN_ID)}

    removed = await admin.delete(f"{URL}/{TARGET}", params={"chainId": str(CHAIN_ID)})
    assert removed.status_code == 200 and removed.json() == {
        "removed": f"{CHAIN_ID}:{TARGET.lower()}",
        "blacklistedInSettings": False,
    }
    assert [(e["address"], e["chainId"]) for e in (await admin.get(URL)).json()["entries"]] == [(TARGET, None)]
    assert (await admin.delete(f"{URL}/{TARGET}")).status_code == 200
    gone = await admin.delete(f"{URL}/{TARGET}")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "ANODE_BLACKLIST_ENTRY_NOT_FOUND"
    assert "has no blacklist entry for every chain" in gone.json()["error"]["message"]


async def test_the_settings_entries_are_shown_but_not_deleted_here(admin: httpx.AsyncClient) -> None:
    response = await admin.delete(f"{URL}/{BAD}")
    assert response.status_code == 404
    error = response.json()["error"]
    assert "blacklisted in the settings file" in error["message"] and error["details"]["inSettings"] is True


async def test_only_admin_keys_manage_the_blacklist(anode: Anode, project: httpx.AsyncClient) -> None:
    for response in (
        await project.get(URL),
        await project.post(URL, json={"address": TARGET}),
        await project.delete(f"{URL}/{TARGET}"),
    ):
        assert response.status_code == 403, response.text
        error = response.json()["error"]
        assert error["code"] == "ANODE_FORBIDDEN" and "admin key" in error["message"]
    async with client_of(anode, None) as anonymous:
        assert (await anonymous.get(URL)).status_code == 401
    async with client_of(anode, ADMIN_KEY) as admin:
        assert (await admin.get(URL)).json()["count"] == 0  # the project key's attempt left nothing


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"address": "0x1234"}, "address", "0x followed by 40 hex digits"),
        ({"address": "c0" * 20}, "address", "0x followed by 40 hex digits"),
        ({"address": "0x" + "zz" * 20}, "address", "0x followed by 40 hex digits"),
        ({"address": "0x" + TARGET[2].swapcase() + TARGET[3:]}, "address", "fails its EIP-55 checksum"),
        ({"address": TARGET, "chainId": "ten"}, "chainId", "expected an integer or a 0x-hex chain id"),
        ({"address": TARGET, "chainId": True}, "chainId", "expected an integer or a 0x-hex chain id"),
        ({"address": TARGET, "chainId": OTHER_CHAIN}, "chainId", "is not served here (served: 31337)"),
        ({"address": TARGET, "reason": "x" * 501}, "reason", "at most 500 characters"),
        ({"address": TARGET, "reason": "a\x00b"}, "reason", "must not contain control characters"),
        ({"address": TARGET, "chain": 1}, "chain", "Extra inputs are not permitted"),
        ({}, "address", "Field required"),
    ],
)
async def test_a_bad_entry_is_refused_naming_the_field(
    admin: httpx.AsyncClient, body: dict[str, Any], field: str, words: str
) -> None:
    response = await admin.post(URL, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] in ("ANODE_INVALID_PARAMS", "ANODE_UNSUPPORTED_CHAIN")
    assert words in error["message"] and error["details"]["field"] == field
    assert (await admin.get(URL)).json()["count"] == 0


async def test_a_bad_address_to_delete_is_refused(admin: httpx.AsyncClient) -> None:
    response = await admin.delete(f"{URL}/0xnothex")
    assert response.status_code == 400
    assert response.json()["error"]["details"]["field"] == "address"
    assert "0x followed by 40 hex digits" in response.json()["error"]["message"]


async def test_a_target_blacklisted_through_the_api_is_blocked_until_deleted(
    admin: httpx.AsyncClient, project: httpx.AsyncClient
) -> None:
    assert "result" in await sponsor(project, TARGET)  # verified: signed

    assert (await admin.post(URL, json={"address": TARGET, "reason": "drainer"})).status_code == 201
    refused = await sponsor(project, TARGET)
    error = refused["error"]
    assert error["code"] == -32501 and error["data"]["anodeCode"] == BLOCKED
    assert TARGET in error["message"] and "blacklisted" in error["message"]
    assert error["data"]["securityAssessment"]["riskScore"] == 100
    # REST refuses it the same way
    body = {"userOperation": calling(TARGET), "entryPoint": EP07, "chainId": CHAIN_ID}
    rest = await project.post("/api/v1/paymaster/sponsor", json=body)
    assert rest.status_code == 403 and rest.json()["error"]["code"] == BLOCKED
    # and /security/assess, which decides nothing, scores it as the pipeline does
    assessed = await project.post("/api/v1/security/assess", json=body)
    assert assessed.status_code == 200 and assessed.json()["decision"] == "block"
    assert assessed.json()["riskScore"] == 100

    assert (await admin.delete(f"{URL}/{TARGET}")).status_code == 200
    assert "result" in await sponsor(project, TARGET)
    assert (await project.post("/api/v1/security/assess", json=body)).json()["decision"] == "allow"


async def test_an_entry_for_another_chain_does_not_block_this_one(
    anode: Anode, admin: httpx.AsyncClient, project: httpx.AsyncClient
) -> None:
    store = next(m for m in anode.service.pipeline.checks if isinstance(m, SecurityFilter)).blacklist
    assert store is not None
    await store.add(TARGET, OTHER_CHAIN, "elsewhere", None)  # e.g. written while chain 10 was served
    assert "result" in await sponsor(project, TARGET)
    assert (await admin.post(URL, json={"address": TARGET, "chainId": CHAIN_ID})).status_code == 201
    assert (await sponsor(project, TARGET))["error"]["data"]["anodeCode"] == BLOCKED
    # an entry for a chain no longer served can still be deleted
    assert (await admin.delete(f"{URL}/{TARGET}", params={"chainId": hex(OTHER_CHAIN)})).status_code == 200


async def test_without_the_security_filter_the_endpoint_says_how_to_enable_it(
    tmp_path: Path,
    dead_node: str,  # noqa: F811
) -> None:
    settings = settings_tree(tmp_path, dead_node)
    settings["auth"]["admin_keys"] = [ADMIN_KEY]
    node = build(validate_settings(settings))
    try:
        async with client_of(node, ADMIN_KEY) as admin:
            response = await admin.get(URL)
        assert response.status_code == 404
        error = response.json()["error"]
        assert error["code"] == "ANODE_MODULE_NOT_CONFIGURED" and "security_filter" in error["message"]
    finally:
        await node.aclose()


# -- the store and the filter -----------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_another_server_sees_an_entry_within_its_refresh_interval(engine: sa.Engine) -> None:
    clock = Clock()
    writer = SqlBlacklist(engine, refresh_seconds=10, clock=clock)
    reader = SqlBlacklist(engine, refresh_seconds=10, clock=clock)
    assert (await reader.snapshot()).for_chain(CHAIN_ID) == frozenset()

    await writer.add(TARGET, None, "drainer", "admin-1")
    assert (await writer.snapshot()).for_chain(CHAIN_ID) == {TARGET.lower()}  # at once where it was written
    clock.now += 4  # younger than half the interval: the reader answers from its copy
    assert (await reader.snapshot()).for_chain(CHAIN_ID) == frozenset()
    clock.now += 6  # the interval is over: the reader reads again before answering
    assert (await reader.snapshot()).for_chain(CHAIN_ID) == {TARGET.lower()}
    assert (await reader.snapshot()).for_chain(OTHER_CHAIN) == {TARGET.lower()}  # an every-chain entry

    await writer.remove(TARGET, None)
    assert (await reader.refresh()).for_chain(CHAIN_ID) == frozenset()  # or ask it to read now


class HeldReload(SqlBlacklist):
    """A blacklist whose reads, once ``hold`` is set, read the table and then wait for it."""

    def __init__(self, engine: sa.Engine, clock: Clock) -> None:
        super().__init__(engine, refresh_seconds=10, clock=clock)
        self.hold: asyncio.Event | None = None
        self.read = asyncio.Event()

    async def _load_snapshot(self) -> BlacklistSnapshot:
        snapshot = await super()._load_snapshot()
        if self.hold is not None:
            self.read.set()  # the table is read: what it held is in `snapshot`
            await self.hold.wait()
        return snapshot


async def test_an_entry_counts_from_the_next_request_despite_a_reload_under_way(engine: sa.Engine) -> None:
    """A background reload that read the table before a write must not put the old table back."""
    clock = Clock()
    store = HeldReload(engine, clock)
    assert (await store.snapshot()).for_chain(CHAIN_ID) == frozenset()
    clock.now += 6  # past half the interval: the next request reloads in the background
    store.hold = hold = asyncio.Event()
    assert (await store.snapshot()).for_chain(CHAIN_ID) == frozenset()  # answered from the copy
    await store.read.wait()  # the reload has read the table, without the entry

    await store.add(TARGET, None, "drainer", "admin-1")  # written (and committed) meanwhile
    store.hold = None
    hold.set()  # the slow reload ends now, with the table as it was before the write
    assert (await store.snapshot()).for_chain(CHAIN_ID) == {TARGET.lower()}
    assert (await store.snapshot()).for_chain(CHAIN_ID) == {TARGET.lower()}  # and stays


async def test_entries_are_kept_per_chain_and_added_once(engine: sa.Engine) -> None:
    store = SqlBlacklist(engine, refresh_seconds=0)
    first, created = await store.add(TARGET, CHAIN_ID, "one", "admin-1")
    assert created and first.address == TARGET.lower()
    kept, created = await store.add(TARGET.lower(), CHAIN_ID, "two", "admin-2")
    assert not created and kept == first
    await store.add(SPENDER, None, None, None)
    snapshot = await store.snapshot()
    assert snapshot.for_chain(CHAIN_ID) == {TARGET.lower(), SPENDER.lower()}
    assert snapshot.for_chain(OTHER_CHAIN) == {SPENDER.lower()}
    assert snapshot.for_chain(CHAIN_ID) is snapshot.for_chain(CHAIN_ID)  # one set per snapshot and chain
    assert [entry.id for entry in await store.entries()] == [first.id, f"*:{SPENDER.lower()}"]
    assert await store.remove(TARGET, CHAIN_ID) and not await store.remove(TARGET, CHAIN_ID)


async def test_the_filter_blocks_calls_and_approvals_to_stored_entries(engine: sa.Engine) -> None:
    harness = Harness(engine)
    store = SqlBlacklist(engine, refresh_seconds=0)
    module = SecurityFilter(
        Config.model_validate({"blacklist_contracts": [BAD], "recent_deployment_blocks": 100}),
        MemoryTTLCache(),
        SqlConfirmationStore(engine),
        store,
    )
    old = harness.context(execute(OLD), final=False)
    assert (await module.run(old)).verdict is Verdict.CONTINUE
    await store.add(OLD, CHAIN_ID, None, None)
    blocked = await module.run(harness.context(execute(OLD), final=False))
    assert blocked.verdict is Verdict.BLOCK and blocked.code == BLOCKED and OLD in blocked.message
    # the settings' entry still counts alongside the stored ones
    assert (await module.run(harness.context(execute(BAD), final=False))).code == BLOCKED
    # an approval on a token that is not blacklisted, handing it to a stored spender, is blocked too
    assert await store.remove(OLD, CHAIN_ID)
    approval = harness.context(execute(OLD, APPROVE + encode(["address", "uint256"], [SPENDER, 5])), final=False)
    assert (await module.run(approval)).verdict is Verdict.CONTINUE
    await store.add(SPENDER, None, None, None)
    refused = await module.run(
        harness.context(execute(OLD, APPROVE + encode(["address", "uint256"], [SPENDER, 5])), final=False)
    )
    assert refused.code == BLOCKED and SPENDER in refused.message


async def test_a_blacklist_that_cannot_be_read_refuses(engine: sa.Engine) -> None:
    store = SqlBlacklist(engine, refresh_seconds=0)
    with engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE contract_blacklist"))
    with pytest.raises(StoreUnavailable, match="contract blacklist could not be used"):
        await store.snapshot()


# -- on anvil ---------------------------------------------------------------------------------


@pytest.fixture
async def chain_anode(tmp_path: Path, anvil: Anvil) -> AsyncIterator[Anode]:
    settings = tree(tmp_path, anvil.rpc_url)
    settings["auth"]["admin_keys"] = [ADMIN_KEY]
    node = build(validate_settings(settings))
    yield node
    await node.aclose()


async def test_a_deployed_contract_blacklisted_through_the_api(chain_anode: Anode, contracts: dict[str, str]) -> None:  # noqa: F811
    target = contracts["old"]
    async with client_of(chain_anode, ADMIN_KEY) as admin, client_of(chain_anode, None) as client:
        assert "result" in await rpc(client, "pm_getPaymasterData", erc7677(op(target)))
        assert (await admin.post(URL, json={"address": target, "chainId": CHAIN_ID})).status_code == 201
        blocked = await rpc(client, "pm_getPaymasterData", erc7677(op(target) | {"nonce": "0x8"}))
        assert blocked["error"]["data"]["anodeCode"] == BLOCKED and target in blocked["error"]["message"]
        assert (await admin.delete(f"{URL}/{target}", params={"chainId": CHAIN_ID})).status_code == 200
        assert "result" in await rpc(client, "pm_getPaymasterData", erc7677(op(target) | {"nonce": "0x8"}))
