"""A node over real HTTP (aiohttp) that answers the reads aNode makes and fails them on request.

It has a head block, one contract deployed at a known block (1 byte of code from then on), a chain
id and a deposit for every ``eth_call``; every request is counted in ``calls``. ``fail_history``
makes historical ``eth_getCode`` reads (a block number, not ``latest``) fail: the next ``times``
of them (``None``: all) get ``answer``, one of :data:`ANSWERS` (what real nodes and providers
send), and ``fail_all`` does the same for every request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.support.http_server import serving_posts

CONTRACT = "0x" + "c0de" * 10


@dataclass(frozen=True)
class Answer:
    """An HTTP status and a body: JSON (a JSON-RPC error object's ``code`` and ``message``) or raw."""

    status: int = 200
    code: int | None = None
    message: str = ""
    raw: bytes | None = None
    #: seconds to wait before answering (past the client's timeout: a timeout)
    delay: float = 0.0


#: the node's way of saying "I keep no state that far back" (geth, reth, EIP-4444, no such method)
DEFINITE = {
    "geth_missing_trie_node": Answer(code=-32000, message="missing trie node 28825a57 (path ) <nil>"),
    "geth_path_scheme": Answer(code=-32000, message="historical state unavailable in path scheme"),
    "reth_pruned": Answer(code=-32603, message="State at block #3 is pruned"),
    "pruned_history_4444": Answer(code=4444, message="pruned history unavailable"),
    "header_not_found": Answer(code=-32000, message="header not found"),
    "method_not_found": Answer(code=-32601, message="the method eth_getCode does not exist/is not available"),
}
#: failures that pass: rate limits, overload, a node that does not answer in time
TRANSIENT = {
    "http_429_text": Answer(status=429, raw=b"Too Many Requests"),
    "http_429_json": Answer(status=429, code=429, message="Too Many Requests"),
    "limit_exceeded_32005": Answer(code=-32005, message="request rate limit exceeded"),
    "http_503": Answer(status=503, raw=b"<html>503 Service Unavailable</html>"),
    "http_502_json": Answer(status=502, code=-32603, message="upstream connect error"),
    "timeout": Answer(delay=2.0),
    "unknown_error": Answer(code=-32000, message="execution aborted (timeout = 5s)"),
}
ANSWERS = DEFINITE | TRANSIENT


class FakeNode:
    def __init__(self, *, chain_id: int = 31337, head: int = 10_000, deployed_at: int = 9_950) -> None:
        self.chain_id = chain_id
        self.head = head
        self.deployed_at = deployed_at
        self.deposit = 10**18
        self.calls: list[tuple[str, list[Any]]] = []
        self._history: tuple[Answer, int | None] | None = None
        self._all: tuple[Answer, int | None] | None = None

    def fail_history(self, answer: Answer, times: int | None = None) -> None:
        self._history = (answer, times)

    def fail_all(self, answer: Answer, times: int | None = None) -> None:
        self._all = (answer, times)

    def heal(self) -> None:
        self._history = self._all = None

    def count(self, method: str, *, historical: bool | None = None) -> int:
        return sum(
            1
            for name, params in self.calls
            if name == method and (historical is None or (params[1] != "latest") is historical)
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        method, params = body["method"], body.get("params", [])
        self.calls.append((method, params))
        historical = method == "eth_getCode" and params[1] != "latest"
        failure = self._take("_all") or (self._take("_history") if historical else None)
        if failure is not None:
            return await self._fail(failure, body["id"])
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": self._result(method, params)})

    def _take(self, which: str) -> Answer | None:
        armed: tuple[Answer, int | None] | None = getattr(self, which)
        if armed is None:
            return None
        answer, times = armed
        if times is not None:
            setattr(self, which, (answer, times - 1) if times > 1 else None)
        return answer

    async def _fail(self, answer: Answer, call_id: Any) -> web.StreamResponse:
        if answer.delay:
            await asyncio.sleep(answer.delay)
        if answer.raw is not None:
            return web.Response(status=answer.status, body=answer.raw, content_type="text/plain")
        error = {"code": answer.code, "message": answer.message}
        return web.json_response({"jsonrpc": "2.0", "id": call_id, "error": error}, status=answer.status)

    def _result(self, method: str, params: list[Any]) -> Any:
        if method == "eth_chainId":
            return hex(self.chain_id)
        if method == "eth_blockNumber":
            return hex(self.head)
        if method == "eth_getCode":
            block = self.head if params[1] == "latest" else int(params[1], 16)
            return "0x00" if params[0].lower() == CONTRACT and block >= self.deployed_at else "0x"
        if method == "eth_call":
            return "0x" + self.deposit.to_bytes(32, "big").hex()
        raise AssertionError(f"the fake node does not answer {method}")

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        """Serve on a free port of 127.0.0.1; yields the node's URL."""
        async with serving_posts(self.handle) as url:
            yield url
