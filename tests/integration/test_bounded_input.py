"""What one request may cost the server: a body cap (413 before the body is read), a batch cap,
and ``GET /health`` (no key needed) reading the node at most once per ``health_cache_seconds``.

Through the real application in process; the node is :class:`tests.support.fake_node.FakeNode`
over real HTTP, counting every read it is asked.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.types import Message

from anode.api.limits import BodyLimit
from anode.config import validate_settings
from anode.wiring import Anode, build
from tests.integration.test_api_errors import API_KEY, EP07, settings_tree, user_op
from tests.support.asgi import client_of
from tests.support.fake_node import FakeNode

LIMIT = 4_096


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Anode, FakeNode]]:
    fake = FakeNode()
    async with fake.serving() as url:
        tree = settings_tree(tmp_path, url)
        tree["server"] = {"max_body_bytes": LIMIT, "max_batch_length": 3, "health_cache_seconds": 60}
        anode = build(validate_settings(tree))
        yield anode, fake
        await anode.aclose()


def _call(n: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": n, "method": "pm_getPaymasterStubData", "params": [user_op(), EP07, "0x7a69", {}]}


async def test_a_body_over_the_cap_is_413_with_a_json_error_on_rpc_and_rest(served: tuple[Anode, FakeNode]) -> None:
    anode, _ = served
    padding = "0x" + "00" * LIMIT
    async with client_of(anode, API_KEY) as client:
        rpc = await client.post("/api/v1/rpc", json=_call() | {"padding": padding})
        assert rpc.status_code == 413
        assert rpc.headers["connection"] == "close"
        body = rpc.json()
        assert body["error"]["code"] == -32600 and body["error"]["data"]["anodeCode"] == "ANODE_BODY_TOO_LARGE"
        assert f"{LIMIT} bytes (server.max_body_bytes)" in body["error"]["message"]

        rest = await client.post("/api/v1/paymaster/sponsor", json={"userOperation": user_op(), "padding": padding})
        assert rest.status_code == 413
        assert rest.json()["error"]["code"] == "ANODE_BODY_TOO_LARGE"

        small = await client.post("/api/v1/rpc", json=_call())
        assert small.status_code == 200 and "result" in small.json()


async def test_a_batch_over_the_cap_runs_none_of_its_calls(served: tuple[Anode, FakeNode]) -> None:
    anode, _ = served
    async with client_of(anode, API_KEY) as client:
        refused = (await client.post("/api/v1/rpc", json=[_call(n) for n in range(4)])).json()
        assert refused["error"]["code"] == -32600
        assert "at most 3 calls (server.max_batch_length), this one has 4" in refused["error"]["message"]
        served_batch = (await client.post("/api/v1/rpc", json=[_call(n) for n in range(3)])).json()
        assert [reply["id"] for reply in served_batch] == [0, 1, 2]
    assert await anode.ledger.find() == []  # stubs only, and the refused batch ran nothing


async def test_a_chunked_body_is_cut_off_once_it_passes_the_cap() -> None:
    """No Content-Length: the layer counts what it reads and stops reading at the cap."""
    reads = 0
    chunks = [b"x" * 1_000] * 100  # 100 kB offered, 4 kB allowed

    async def receive() -> Message:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": chunks[reads - 1], "more_body": reads < len(chunks)}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def app(scope: Any, receive: Any, send: Any) -> None:  # reads everything it is given
        while (await receive())["type"] == "http.request":
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"read it all"})

    scope = {"type": "http", "method": "POST", "path": "/api/v1/rpc", "headers": []}
    await BodyLimit(app, max_bytes=LIMIT, rpc_paths={"/api/v1/rpc"})(scope, receive, send)
    assert reads == 5  # the fifth chunk passed 4,096 bytes: nothing more was read
    assert sent[0]["status"] == 413 and len(sent) == 2  # the app's own answer went nowhere
    assert orjson.loads(sent[1]["body"])["error"]["data"]["anodeCode"] == "ANODE_BODY_TOO_LARGE"


async def test_health_reads_the_node_once_per_interval_however_many_hits(served: tuple[Anode, FakeNode]) -> None:
    anode, fake = served
    async with client_of(anode, None) as client:  # no key: anyone may ask
        answers = await asyncio.gather(*(client.get("/health") for _ in range(20)))
        assert {a.status_code for a in answers} == {200}
        assert {a.json()["chains"][0]["nodeChainId"] for a in answers} == {fake.chain_id}
        for _ in range(10):
            await client.get("/health")
    assert fake.count("eth_chainId") == 1
    assert fake.count("eth_call") == len(list(anode.routes))


async def test_health_with_no_cache_reads_on_every_hit(tmp_path: Path) -> None:
    fake = FakeNode()
    async with fake.serving() as url:
        tree = settings_tree(tmp_path, url)
        tree["server"] = {"health_cache_seconds": 0}
        anode = build(validate_settings(tree))
        async with client_of(anode, None) as client:
            for _ in range(3):
                assert (await client.get("/health")).status_code == 200
        await anode.aclose()
    assert fake.count("eth_chainId") == 3
