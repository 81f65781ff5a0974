"""The HTTP application: JSON-RPC at ``/api/v1/rpc`` and ``/``, REST under ``/api/v1``, docs at ``/docs``."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from anode.api import errors, limits
from anode.api.dashboard import add_dashboard
from anode.api.dashboard_auth import Sessions
from anode.api.docs import add_docs
from anode.api.jsonrpc.asgi import RPC_PATHS, JsonRpcEndpoint
from anode.api.jsonrpc.context import CallContext
from anode.api.jsonrpc.dispatch import dispatch
from anode.api.rest import (
    blacklist,
    health,
    keys,
    metrics,
    operations,
    paymaster,
    policies,
    process,
    security,
    validation,
)
from anode.errors import AnodeError, Unauthorized
from anode.wiring import Anode

_RPC_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "object", "description": "A JSON-RPC 2.0 call or a batch (array) of calls."},
                "example": {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "pm_getPaymasterStubData",
                    "params": [
                        {"sender": "0x…", "nonce": "0x0", "callData": "0x"},
                        "0x0000000071727De22E5E9d8BAf0edAc6f37da032",
                        "0x7a69",
                        {},
                    ],
                },
            }
        },
    }
}


class AnodeApp(FastAPI):
    """FastAPI, with ``POST /api/v1/rpc`` and ``POST /`` answered before any of FastAPI's own layers.

    JSON-RPC is the hot path: FastAPI's per-request work around it (its telemetry check, which
    reads the environment on every request, the body limit, the error and exception middleware)
    was 8.5 % of the server's samples in a profile (docs/performance.md). ``rpc_fast_path`` is
    ``RequestObserver(JsonErrors(JsonRpcEndpoint))``: request ids and latency metrics as for every
    route, and the JSON 500 answer of the error middleware for an exception that escapes.
    """

    rpc_fast_path: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = self.rpc_fast_path
        if fast is None or scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in RPC_PATHS:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        await fast(scope, receive, send)


class JsonErrors:
    """An exception escaping ``app`` before it answered: logged, and answered as the error
    middleware answers it (500, ``ANODE_INTERNAL``, nothing of the exception's text)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started:
                raise
            response = await errors.unexpected_error_handler(Request(scope), exc)
            await response(scope, receive, send)


def settle_collector(threshold: int) -> None:
    """Once aNode has started: keep what lives as long as the process out of the cyclic collector,
    and let it run less often.

    Everything alive now (modules, FastAPI, pydantic schemas, SQLAlchemy metadata) lives as long as
    the process: frozen, the collector's full collections no longer walk all of it (about 65 ms on
    a 2-core VM, stalling every request in flight). A request's objects are nearly all freed by their
    reference counts; at Python's default threshold (700 allocations) the collector still ran every
    few dozen requests, about 11 µs of CPU per request (``server.gc_threshold``, docs/performance.md).
    """
    gc.collect()
    gc.freeze()
    if threshold:
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(threshold, max(older, 20), max(oldest, 20))


def create_app(anode: Anode, *, manage_lifecycle: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            if manage_lifecycle:
                # a refusal closes what start() opened (finally below); `anode serve` has started it
                # already, so its refusals never get here (anode/cli.py)
                await anode.start()
                settle_collector(anode.settings.server.gc_threshold)
            yield
        finally:
            if manage_lifecycle:
                await anode.aclose()

    app = AnodeApp(
        title="aNode",
        version="0.1.0",
        summary="An open ERC-4337 paymaster: ERC-7677, pm_sponsorUserOperation and REST.",
        lifespan=lifespan,
        docs_url=None,  # served from the package by add_docs, not from a CDN
        redoc_url=None,
    )
    app.state.anode = anode
    sponsor = anode.settings.sponsorship

    async def rpc(request: Request) -> Response:
        try:
            api_key_id = await anode.api_keys.authenticate(request)
        except Unauthorized as exc:
            status, body = errors.rpc_refusal(exc)
            return Response(body, status, media_type="application/json")
        ctx = CallContext(
            anode.service,
            api_key_id,
            sponsor.sponsor_name,
            sponsor.sponsor_icon,
            request.state.request_id,
            passkey=anode.passkey,
        )
        answer = await dispatch(await request.body(), ctx)
        if answer is None:
            return Response(status_code=204)
        return Response(answer, media_type="application/json")

    for path in ("/api/v1/rpc", "/"):
        app.add_api_route(
            path, rpc, methods=["POST"], tags=["json-rpc"], summary="JSON-RPC 2.0 endpoint", openapi_extra=_RPC_DOC
        )
    app.include_router(paymaster.router)
    app.include_router(process.router)
    app.include_router(keys.router)
    app.include_router(validation.router)
    app.include_router(security.router)
    app.include_router(blacklist.router)
    app.include_router(policies.router)
    app.include_router(operations.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    # POST /api/v1/rpc and POST / are answered ahead of FastAPI (AnodeApp); the routes above
    # serve /docs, and lend their path to the metrics' route label
    rpc_routes = {r.path: r for r in app.routes if isinstance(r, APIRoute) and r.path in RPC_PATHS}
    endpoint = JsonRpcEndpoint(super(AnodeApp, app).__call__, anode=anode, routes=rpc_routes)
    app.rpc_fast_path = metrics.RequestObserver(JsonErrors(endpoint), metrics=anode.metrics)
    add_dashboard(app, Sessions(anode.api_keys))  # GET /dashboard, its assets and data
    add_docs(app)  # GET /docs (Swagger UI, its assets in the package) and GET /: after rpc_routes
    app.add_middleware(limits.BodyLimit, max_bytes=anode.settings.server.max_body_bytes)  # REST bodies
    app.add_middleware(metrics.RequestObserver, metrics=anode.metrics)
    app.add_exception_handler(AnodeError, errors.anode_error_handler)
    app.add_exception_handler(RequestValidationError, errors.validation_error_handler)
    app.add_exception_handler(Exception, errors.unexpected_error_handler)
    return app
