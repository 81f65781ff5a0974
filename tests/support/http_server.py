"""A local HTTP server (aiohttp) that hands every ``POST /`` to one handler: the fakes' transport."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiohttp import web
from aiohttp.test_utils import TestServer


@asynccontextmanager
async def serving_posts(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[str]:
    """Serve ``handler`` on a free port of 127.0.0.1; yields the URL (``http://127.0.0.1:PORT/``)."""
    app = web.Application()
    app.router.add_post("/", handler)
    async with TestServer(app, host="127.0.0.1") as server:
        yield f"http://127.0.0.1:{server.port}/"
