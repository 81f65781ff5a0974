"""The security filter fails closed on a node's errors: only a definite "no such history here"
turns the contract-age check off (and ``/health`` says so); rate limits, overload, timeouts and
unknown errors are retried, then refuse the sponsorship, and are never cached as facts.

The node is :class:`tests.support.fake_node.FakeNode`, served over real HTTP and read by aNode's
real client: anvil cannot be made to answer 429 or "missing trie node" on demand. Its answers are
the ones real nodes and providers send (see :data:`tests.support.fake_node.ANSWERS`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from anode.api.app import create_app
from anode.chain.cache import MemoryTTLCache
from anode.chain.client import ChainClient
from anode.config import validate_settings
from anode.errors import ChainUnavailable
from anode.pipeline.security import deployment
from anode.pipeline.security.deployment import ContractInspector, HistorySupport
from anode.wiring import build
from tests.security.test_flow import erc7677, op, rpc, tree
from tests.support.fake_node import CONTRACT, DEFINITE, TRANSIENT, FakeNode

#: far enough back that a "header not found" is the node's history, not a lagging replica
WINDOW = 1_000


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deployment, "RETRY_DELAYS", (0.0, 0.0))


@pytest.fixture
async def node() -> AsyncIterator[tuple[FakeNode, ChainClient]]:
    fake = FakeNode(head=10_000, deployed_at=9_950)
    async with fake.serving() as url:
        client = ChainClient(url, timeout=0.5)
        yield fake, client
        await client.aclose()


def inspector(client: ChainClient, cache: MemoryTTLCache, history: HistorySupport) -> ContractInspector:
    return ContractInspector(client, 31337, cache, recent_blocks=WINDOW, code_ttl=60, history=history)


@pytest.mark.parametrize("kind", sorted(DEFINITE))
async def test_a_definite_no_history_answer_turns_the_age_check_off(
    kind: str, node: tuple[FakeNode, ChainClient]
) -> None:
    fake, client = node
    history = HistorySupport()
    fake.fail_history(DEFINITE[kind])
    facts = await inspector(client, MemoryTTLCache(), history).inspect(CONTRACT)
    assert facts.has_code and facts.age_blocks is None and not facts.older_than_window
    assert history.status(31337).startswith("unavailable: node has no archive state")
    # no read per request while the check is off on this chain
    asked = fake.count("eth_getCode", historical=True)
    await inspector(client, MemoryTTLCache(), history).inspect(CONTRACT)
    assert fake.count("eth_getCode", historical=True) == asked


@pytest.mark.parametrize("kind", sorted(TRANSIENT))
async def test_a_transient_error_refuses_and_is_never_cached(kind: str, node: tuple[FakeNode, ChainClient]) -> None:
    fake, client = node
    cache, history = MemoryTTLCache(), HistorySupport()
    fake.fail_history(TRANSIENT[kind])
    with pytest.raises(ChainUnavailable, match="security filter could not read eth_getCode"):
        await inspector(client, cache, history).inspect(CONTRACT)
    assert fake.count("eth_getCode", historical=True) == 1 + len(deployment.RETRY_DELAYS)  # retried
    assert history.status(31337) == "not checked yet"  # not taken for "no archive node"
    fake.heal()
    facts = await inspector(client, cache, history).inspect(CONTRACT)  # same cache: nothing was kept
    assert facts.age_blocks == fake.head - fake.deployed_at
    assert history.status(31337) == "available"


async def test_a_transient_error_that_passes_is_retried_to_an_answer(node: tuple[FakeNode, ChainClient]) -> None:
    fake, client = node
    fake.fail_history(TRANSIENT["limit_exceeded_32005"], times=2)
    facts = await inspector(client, MemoryTTLCache(), HistorySupport()).inspect(CONTRACT)
    assert facts.age_blocks == fake.head - fake.deployed_at


async def test_header_not_found_near_the_head_is_a_lagging_replica_not_missing_history(
    node: tuple[FakeNode, ChainClient],
) -> None:
    fake, client = node
    fake.fail_history(DEFINITE["header_not_found"])
    near = ContractInspector(client, 31337, MemoryTTLCache(), recent_blocks=100, code_ttl=60)
    with pytest.raises(ChainUnavailable):
        await near.inspect(CONTRACT)
    assert near.history.status(31337) == "not checked yet"


def _tree(tmp_path: Path, rpc_url: str) -> dict[str, Any]:
    """The security flow's server, with a window deep enough for definite answers, reading on every hit."""
    settings = tree(tmp_path, rpc_url)
    settings["pipeline"]["modules"][0]["config"]["recent_deployment_blocks"] = WINDOW
    settings["server"] = {"health_cache_seconds": 0}
    return settings


async def test_over_http_a_rate_limited_node_refuses_and_a_pruned_one_shows_on_health(tmp_path: Path) -> None:
    fake = FakeNode(head=10_000, deployed_at=9_950)
    async with fake.serving() as url:
        anode = build(validate_settings(_tree(tmp_path, url)))
        app = create_app(anode, manage_lifecycle=False)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://anode") as client:
            health = (await client.get("/health")).json()
            assert health["chains"][0]["security"] == {"contractAge": "not checked yet"}

            fake.fail_history(TRANSIENT["http_429_json"])
            refused = await rpc(client, "pm_getPaymasterData", erc7677(op(CONTRACT)))
            assert refused["error"]["data"]["anodeCode"] == "ANODE_CHAIN_UNAVAILABLE", refused
            assert "retry later" in refused["error"]["message"]

            fake.fail_history(DEFINITE["geth_missing_trie_node"])
            signed = await rpc(client, "pm_getPaymasterData", erc7677(op(CONTRACT)))
            assert "result" in signed, signed  # scored without an age factor
            health = (await client.get("/health")).json()
            assert health["chains"][0]["security"]["contractAge"].startswith("unavailable: node has no archive")
            assert "missing trie node" in health["chains"][0]["security"]["contractAge"]
        await anode.aclose()
