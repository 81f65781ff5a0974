"""uvicorn's httptools protocol, with a response's head and body sent in one ``send()``.

uvicorn writes the status line and headers when the app sends ``http.response.start``, and the
body when it sends ``http.response.body``: two ``transport.write`` calls, so two ``send``
system calls and two TCP segments per answer, and the client reads twice. aNode's answers are
small and whole (JSON), so the head and the body belong in one segment.

``CoalescingTransport`` wraps the connection's transport: a write is held and sent, joined with
whatever follows it in the same turn of the event loop, at the end of that turn (``call_soon``)
or when the next write, ``close`` or an upgrade needs it. Order is kept, nothing is sent later
than the loop's next turn, and a streamed answer still goes out piece by piece, since each piece
follows an ``await``. Everything else is the transport's own.

Measured in ``docs/performance.md`` (bench/ab.py A/B).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class CoalescingTransport:
    """``transport`` whose writes within one turn of the loop leave in one ``write``."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        held = self._held
        if not held:
            self._loop.call_soon(self.flush)
        held.append(bytes(data))

    def flush(self) -> None:
        held = self._held
        if held:
            data = held[0] if len(held) == 1 else b"".join(held)
            held.clear()
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        # an upgrade (websockets): the new protocol writes to the transport itself, after what was held
        self.flush()
        self._transport.set_protocol(protocol)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a :class:`CoalescingTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
