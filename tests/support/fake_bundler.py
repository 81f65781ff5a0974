"""A bundler over real HTTP (aiohttp) for tests that need ``eth_estimateUserOperationGas`` but not
a real bundler: every estimate is the same fixed gas limits (never fees), and estimates are counted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from tests.support.http_server import serving_posts

GAS = {"callGasLimit": "0x20000", "verificationGasLimit": "0x30000", "preVerificationGas": "0x6000"}


class FakeBundler:
    def __init__(self) -> None:
        self.estimates = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        assert body["method"] == "eth_estimateUserOperationGas", body
        self.estimates += 1
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": GAS})

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        """Serve on a free port of 127.0.0.1; yields the ``bundler_url``."""
        async with serving_posts(self.handle) as url:
            yield url
