"""A cap on request bodies, as an ASGI layer: JSON-RPC (``api/jsonrpc/asgi.py``) and REST (``api/app.py``).

A body larger than ``max_bytes`` (``server.max_body_bytes``) is answered 413 with a JSON error
naming the limit, at once and without reading the rest:

- with a ``Content-Length`` over the limit, before any of it is read (the app never runs);
- sent in chunks (no length), as soon as the bytes counted while reading pass the limit: the 413
  goes out then, the app is told the client went away, and whatever it sends after is dropped.

The answer carries ``connection: close``, so the server stops reading that connection. On the
JSON-RPC paths the body is a JSON-RPC error object (``id`` null, -32600); elsewhere aNode's REST
error shape. The error is :class:`BodyTooLarge` (``ANODE_BODY_TOO_LARGE``).
"""

from __future__ import annotations

from collections.abc import Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from anode.api.errors import http_refusal, rpc_refusal
from anode.errors import AnodeError


class BodyTooLarge(AnodeError):
    code = "ANODE_BODY_TOO_LARGE"
    rpc_code = -32600
    http_status = 413


def too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(
        f"the request body is larger than this server's limit of {limit} bytes (server.max_body_bytes): "
        "send less, e.g. a smaller batch",
        data={"maxBodyBytes": limit},
    )


class BodyLimit:
    """``app`` behind a cap of ``max_bytes`` on each HTTP request's body; ``rpc_paths`` answer in JSON-RPC form."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, rpc_paths: Collection[str] = ()) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.rpc_paths = rpc_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._refuse(scope, send)
            return
        if declared is not None:  # the server delivers no more than it declared
            await self.app(scope, receive, send)
            return
        received = 0
        refused = started = False

        async def counting_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    if not started:  # (an app answering while it reads has its answer cut short)
                        await self._refuse(scope, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:  # after the 413, the app's own answer has nowhere to go
                return
            started = True
            await send(message)

        await self.app(scope, counting_receive, guarded_send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        exc = too_large(self.max_bytes)
        status, body = rpc_refusal(exc) if scope["path"] in self.rpc_paths else http_refusal(exc)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(body)),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed length before the app runs
    return None
