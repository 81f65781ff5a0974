"""``GET /metrics`` (Prometheus text format) and the middleware that times requests and names them.

``RequestObserver`` is plain ASGI (no ``BaseHTTPMiddleware``: it neither buffers bodies nor
breaks context variables). For every HTTP request it

- takes the caller's ``X-Request-Id`` when it is a sane token (1–64 of ``A-Z a-z 0-9 . _ : -``),
  or makes one, puts it in ``request.state.request_id`` (the audit log records it with each
  signature) and sends it back in the ``X-Request-Id`` response header;
- observes the latency in ``anode_http_request_duration_seconds`` under the route's template
  (``/api/v1/keys/{key_id}``, not the raw path, so label values stay few).
"""

from __future__ import annotations

import re
import secrets
import time

from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from anode.metrics import CONTENT_TYPE, Metrics

router = APIRouter(tags=["health"])

_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    registry: Metrics = request.app.state.anode.metrics
    return Response(registry.render(), media_type=CONTENT_TYPE)


def new_request_id() -> str:
    return secrets.token_hex(8)


class RequestObserver:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((value for name, value in scope["headers"] if name == b"x-request-id"), None)
        request_id = given.decode() if given is not None and _REQUEST_ID.match(given) else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.request_latency.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - started
            )
