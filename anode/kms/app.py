"""The KMS's HTTP API (Starlette). Refusals are aNode's REST error shape (``anode/api/errors.py``):
``{"error": {"code": "ANODE_KMS_…", "message": …}}`` with the error's HTTP status.

    POST   /aa/create-account                {accountId, entryPoint, chainId}
    POST   /webauthn/register/options        {accountId}
    POST   /webauthn/register                {accountId, credential}
    POST   /webauthn/authenticate/options    {accountId, userOpHash}
    POST   /kms/sign-user-operation          {userOperation, entryPoint, chainId, accountId, userSignature,
                                              nonce, timestamp} + X-Paymaster-Signature, X-Paymaster-Address
    POST   /admin/authorized-signers         {address, name, permissions, expiresAt}    (admin token)
    GET    /admin/authorized-signers                                                   (admin token)
    DELETE /admin/authorized-signers/{address}                                         (admin token)
    POST   /admin/rotate-signer              {oldAddress, newAddress, proof}            (admin token)
    GET    /kms/health                       custody backend and store
    GET    /metrics                          Prometheus: requests, refusals by code, latency
    GET    /passkey                          a page: register a passkey, approve an operation with it

The service is synchronous (SQL and the HSM block): each request runs it on a worker thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from anode.api.errors import http_error, json_response
from anode.errors import AnodeError, InvalidRequest, Unauthorized
from anode.kms.service import KmsService

MAX_BODY = 65_536
T = TypeVar("T")
STATIC = Path(__file__).parent / "static"


class KmsMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "kms_requests_total", "KMS requests by route and outcome", ["route", "outcome"], registry=self.registry
        )
        self.refusals = Counter("kms_refusals_total", "KMS refusals by code", ["code"], registry=self.registry)
        self.latency = Histogram(
            "kms_request_seconds",
            "KMS request latency",
            ["route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )


def _admin_digest(service: KmsService) -> bytes:
    settings = service.settings
    if settings.admin_token is not None:
        return hashlib.sha256(settings.admin_token.get_secret_value().encode()).digest()
    assert settings.admin_token_sha256 is not None
    return bytes.fromhex(settings.admin_token_sha256)


async def _body(request: Request) -> dict[str, Any]:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise InvalidRequest(f"the body is over {MAX_BODY} bytes")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    return body


def create_app(service: KmsService, *, threads: int = 4) -> Starlette:
    metrics = KmsMetrics()
    admin = _admin_digest(service)
    # a few threads, not one per request: the work is mostly Python (the GIL), so more threads
    # only queue on it and stretch every request's latency
    pool = ThreadPoolExecutor(threads, thread_name_prefix="anode-kms")

    async def run_in_threadpool(function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, function, *args)

    def check_admin(request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        presented = hashlib.sha256(token.strip().encode()).digest() if scheme.lower() == "bearer" else b""
        if not hmac.compare_digest(presented, admin):
            raise Unauthorized("the admin token is required (Authorization: Bearer …)", code="ANODE_KMS_ADMIN_TOKEN")

    def route(name: str, handler: Callable[[Request], Any], *, admin_only: bool = False) -> Callable[..., Any]:
        async def endpoint(request: Request) -> Response:
            started = time.perf_counter()
            try:
                if admin_only:
                    check_admin(request)
                answer = await handler(request)
            except AnodeError as exc:
                metrics.requests.labels(name, "refused").inc()
                metrics.refusals.labels(exc.code).inc()
                return http_error(exc)
            finally:
                metrics.latency.labels(name).observe(time.perf_counter() - started)
            metrics.requests.labels(name, "ok").inc()
            return json_response(answer)

        return endpoint

    def posted(method: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[Request], Any]:
        async def handler(request: Request) -> Any:
            body = await _body(request)
            return await run_in_threadpool(method, body)

        return handler

    async def sign(request: Request) -> Any:
        body = await _body(request)
        headers = request.headers
        return await run_in_threadpool(
            service.sign_user_operation, body, headers.get("x-paymaster-signature"), headers.get("x-paymaster-address")
        )

    async def list_signers(request: Request) -> Any:
        signers = await run_in_threadpool(service.store.signers)
        return {"signers": [signer.as_json() for signer in signers]}

    async def remove_signer(request: Request) -> Any:
        return await run_in_threadpool(service.signers.remove_signer, request.path_params["address"])

    async def health(request: Request) -> Response:
        report = await run_in_threadpool(service.health)
        return json_response(report, 200 if report["status"] == "ok" else 503)

    page = {name: (STATIC / name).read_bytes() for name in ("passkey.html", "passkey.js")}
    page_headers = {"content-security-policy": "default-src 'self'; style-src 'self' 'unsafe-inline'"}

    async def passkey_page(request: Request) -> Response:
        return Response(page["passkey.html"], media_type="text/html; charset=utf-8", headers=page_headers)

    async def passkey_script(request: Request) -> Response:
        return Response(page["passkey.js"], media_type="text/javascript; charset=utf-8", headers=page_headers)

    async def prometheus(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            pool.shutdown(wait=True)
            service.custody.close()
            service.store.close()

    routes = [
        Route("/aa/create-account", route("create_account", posted(service.create_account)), methods=["POST"]),
        Route(
            "/webauthn/register/options",
            route("register_options", posted(service.registration_options)),
            methods=["POST"],
        ),
        Route("/webauthn/register", route("register", posted(service.register)), methods=["POST"]),
        Route(
            "/webauthn/authenticate/options",
            route("authenticate_options", posted(service.authentication_options)),
            methods=["POST"],
        ),
        Route("/kms/sign-user-operation", route("sign_user_operation", sign), methods=["POST"]),
        Route(
            "/admin/authorized-signers",
            route("add_signer", posted(service.signers.add_signer), admin_only=True),
            methods=["POST"],
        ),
        Route("/admin/authorized-signers", route("list_signers", list_signers, admin_only=True), methods=["GET"]),
        Route(
            "/admin/authorized-signers/{address}",
            route("remove_signer", remove_signer, admin_only=True),
            methods=["DELETE"],
        ),
        Route(
            "/admin/rotate-signer",
            route("rotate_signer", posted(service.signers.rotate), admin_only=True),
            methods=["POST"],
        ),
        Route("/kms/health", health, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        Route("/passkey", passkey_page, methods=["GET"]),
        Route("/passkey.js", passkey_script, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.kms = service
    return app
