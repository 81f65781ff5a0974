"""Tenancy of the ledger over HTTP, through the real app: two project keys and one admin key.

A project key sees only the operations it sponsored; an admin key sees every tenant's and may
narrow them to one key with ``?apiKeyId=``. No chain runs (v0.7 paymaster data needs no node).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from anode.config import validate_settings
from anode.store.api_keys import key_id
from anode.wiring import Anode, build
from tests.integration.test_api_errors import (
    API_KEY,
    CHAIN_ID,
    EP07,
    OTHER_KEY,
    SENDER_A,
    SENDER_B,
    dead_node,  # noqa: F401 (fixture)
    settings_tree,
    user_op,
)
from tests.support.asgi import client_of

ADMIN_KEY = "test-admin-key-0123456789"


@pytest.fixture
async def anode(tmp_path: Path, dead_node: str) -> AsyncIterator[Anode]:  # noqa: F811
    tree = settings_tree(tmp_path, dead_node)
    tree["auth"]["admin_keys"] = [ADMIN_KEY]
    node = build(validate_settings(tree))
    yield node
    await node.aclose()


async def _sponsor(client: httpx.AsyncClient, sender: str, nonce: int) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "pm_getPaymasterData",
            "params": [user_op(sender, nonce=hex(nonce)), EP07, hex(CHAIN_ID), {}]}  # fmt: skip
    reply = (await client.post("/api/v1/rpc", json=body)).json()
    assert "result" in reply, reply


async def _operations(client: httpx.AsyncClient, **query: Any) -> httpx.Response:
    return await client.get("/api/v1/operations", params=query)


async def test_each_project_key_sees_only_its_own_operations_and_an_admin_sees_all(anode: Anode) -> None:
    async with client_of(anode, API_KEY) as a, client_of(anode, OTHER_KEY) as b, client_of(anode, ADMIN_KEY) as admin:
        await _sponsor(a, SENDER_A, 1)
        await _sponsor(a, SENDER_A, 2)
        await _sponsor(b, SENDER_B, 1)

        mine = (await _operations(a)).json()
        assert mine["count"] == 2
        assert {row["api_key_id"] for row in mine["operations"]} == {key_id(API_KEY)}
        assert {row["sender"] for row in mine["operations"]} == {SENDER_A}
        theirs = (await _operations(b)).json()
        assert [(row["sender"], row["api_key_id"]) for row in theirs["operations"]] == [(SENDER_B, key_id(OTHER_KEY))]
        # filtering by the other tenant's sender finds nothing of theirs
        assert (await _operations(a, sender=SENDER_B)).json()["count"] == 0

        everything = (await _operations(admin)).json()
        assert everything["count"] == 3
        only_b = (await _operations(admin, apiKeyId=key_id(OTHER_KEY))).json()
        assert [row["sender"] for row in only_b["operations"]] == [SENDER_B]

        # a project key may name its own id, never another's
        assert (await _operations(a, apiKeyId=key_id(API_KEY))).json()["count"] == 2
        refused = await _operations(a, apiKeyId=key_id(OTHER_KEY))
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "ANODE_FORBIDDEN"
        assert "only its own operations" in refused.json()["error"]["message"]
    async with client_of(anode, None) as nobody:
        assert (await _operations(nobody)).status_code == 401


# -- every other read endpoint ------------------------------------------------------------------

#: reads of data that is the operator's, not one tenant's: policies (whose status counts every
#: key's spending), API keys, the blacklist. Project keys read none of them; admin keys all.
ADMIN_READS = (
    "/api/v1/policies",
    "/api/v1/policies/shared",
    "/api/v1/policies/shared/status",
    "/api/v1/keys",
    "/api/v1/security/blacklist",
)


@pytest.fixture
async def managed(tmp_path: Path, dead_node: str) -> AsyncIterator[Anode]:  # noqa: F811
    """A server with the policy engine and the security filter (nothing is sponsored through it)."""
    tree = settings_tree(tmp_path, dead_node)
    tree["auth"]["admin_keys"] = [ADMIN_KEY]
    tree["pipeline"] = {
        "modules": [{"name": "security_filter"}, {"name": "policy_engine"}, {"name": "paymaster_signer"}]
    }
    tree["policies"] = [
        {"id": "shared", "name": "everyone's cap", "type": "project",
         "rate_limits": [{"type": "request", "limit": 100, "window": 60}]},
    ]  # fmt: skip
    node = build(validate_settings(tree))
    yield node
    await node.aclose()


@pytest.mark.parametrize("path", ADMIN_READS)
async def test_operator_data_is_read_by_admin_keys_only(managed: Anode, path: str) -> None:
    async with client_of(managed, ADMIN_KEY) as admin:
        assert (await admin.get(path)).status_code == 200, path
    for key in (API_KEY, OTHER_KEY):
        async with client_of(managed, key) as project:
            refused = await project.get(path)
        assert refused.status_code == 403, path
        assert refused.json()["error"]["code"] == "ANODE_FORBIDDEN"


async def test_metrics_name_no_tenant(anode: Anode) -> None:
    """``GET /metrics`` (unauthenticated, for Prometheus) counts per method and result, never per key."""
    async with client_of(anode, API_KEY) as a, client_of(anode, OTHER_KEY) as b, client_of(anode, None) as scraper:
        await _sponsor(a, SENDER_A, 1)
        await _sponsor(b, SENDER_B, 1)
        text = (await scraper.get("/metrics")).text
    assert "anode_sponsorships_total" in text
    for secret_or_id in (API_KEY, OTHER_KEY, key_id(API_KEY), key_id(OTHER_KEY), SENDER_A, SENDER_B):
        assert secret_or_id not in text and secret_or_id.lower() not in text
