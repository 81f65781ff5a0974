"""``anode.outbound.HttpClient`` against a real local HTTP server (aiohttp): answers, timeouts,
refused connections, a dropped connection sent again only when asked (aiohttp itself resends
idempotent methods; these are POSTs), redirects not followed, and a client closed in one event
loop serving again from another."""

from __future__ import annotations

import asyncio
import gc
import socket
import threading
from collections.abc import Iterator

import pytest
from aiohttp import web

from anode.outbound import HttpClient, OutboundTimeout, OutboundUnreachable


class Server:
    """An aiohttp app served from its own thread and loop, so tests can use any loop they like."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.drop_next = False
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = self._runner.addresses[0][1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path_qs} {await request.text()}")
        if self.drop_next:
            self.drop_next = False
            assert request.transport is not None
            request.transport.abort()
            raise web.HTTPInternalServerError()
        if request.path == "/slow":
            await asyncio.sleep(2)
        if request.path == "/moved":
            raise web.HTTPFound("/elsewhere")
        return web.json_response({"path": request.path}, status=201)

    def __enter__(self) -> Server:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def server() -> Iterator[Server]:
    with Server() as running:
        yield running


async def test_a_request_answers_status_and_body(server: Server) -> None:
    http = HttpClient(f"http://127.0.0.1:{server.port}/api", timeout=5)
    try:
        reply = await http.post_json("/x", b'{"a":1}')
        assert (reply.status, reply.text) == (201, '{"path": "/api/x"}')
        assert server.requests == ['POST /api/x {"a":1}']
    finally:
        await http.aclose()


async def test_redirects_are_answers_not_followed(server: Server) -> None:
    http = HttpClient(f"http://127.0.0.1:{server.port}", timeout=5)
    try:
        assert (await http.request("GET", "/moved")).status == 302
        assert len(server.requests) == 1
    finally:
        await http.aclose()


async def test_a_slow_server_is_a_timeout_with_the_time_it_waited(server: Server) -> None:
    http = HttpClient(f"http://127.0.0.1:{server.port}", timeout=5)
    try:
        with pytest.raises(OutboundTimeout, match=r"no answer within 0\.2 s"):
            await http.request("GET", "/slow", timeout=0.2)
    finally:
        await http.aclose()


async def test_a_refused_connection_is_unreachable() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        http = HttpClient(f"http://127.0.0.1:{closed.getsockname()[1]}", timeout=5)
        try:
            with pytest.raises(OutboundUnreachable, match="connection refused"):
                await http.request("GET", "/")
        finally:
            await http.aclose()


@pytest.mark.parametrize("retry", [True, False])
async def test_a_dropped_connection_is_sent_again_only_when_asked(server: Server, retry: bool) -> None:
    http = HttpClient(f"http://127.0.0.1:{server.port}", timeout=5, retry_disconnected=retry)
    try:
        server.drop_next = True
        if retry:
            assert (await http.request("POST", "/once")).status == 201
            assert len(server.requests) == 2
        else:
            with pytest.raises(OutboundUnreachable, match="server disconnected"):
                await http.request("POST", "/once")
            assert len(server.requests) == 1
    finally:
        await http.aclose()


def test_a_closed_client_serves_again_from_another_loop(server: Server) -> None:
    """The CLI builds signers synchronously and closes them from a fresh loop."""
    http = HttpClient(f"http://127.0.0.1:{server.port}", timeout=5)

    async def use_and_close(path: str) -> int:
        try:
            return (await http.request("GET", path)).status
        finally:
            await http.aclose()

    assert asyncio.run(use_and_close("/first")) == 201
    assert asyncio.run(use_and_close("/second")) == 201
    gc.collect()  # an unclosed session or connection would warn here, and warnings are errors
    assert [line.split()[1] for line in server.requests] == ["/first", "/second"]
