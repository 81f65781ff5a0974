"""The HTTP protocol ``anode serve`` runs: a response's head and body leave in one write, in order."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import uvicorn

from anode.api.http import CoalescingTransport, HttpProtocol
from anode.devchain.anvil import free_port


class RecordingTransport:
    """The parts of an asyncio transport the wrapper uses, recording every write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.protocol: Any = None

    def write(self, data: bytes) -> None:
        if self.closed:
            raise AssertionError("written after close")
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5)}.get(name, default)


async def test_writes_in_one_turn_leave_as_one_write_at_its_end() -> None:
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.write(b"")
    transport.write(bytearray(b"{}"))
    assert inner.writes == []
    await asyncio.sleep(0)
    assert inner.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    transport.write(b"next")
    await asyncio.sleep(0)
    assert inner.writes[1:] == [b"next"]


async def test_close_and_upgrade_send_what_is_held_first() -> None:
    loop = asyncio.get_running_loop()
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, loop)  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    transport.set_protocol("websocket")  # type: ignore[arg-type]
    assert inner.writes == [b"HTTP/1.1 101 Switching Protocols\r\n\r\n"] and inner.protocol == "websocket"
    transport.write(b"bye")
    transport.close()
    assert inner.writes[-1] == b"bye" and inner.closed
    await asyncio.sleep(0)  # the scheduled flush finds nothing held and a closed transport: no write
    assert len(inner.writes) == 2
    assert transport.get_extra_info("peername") == ("127.0.0.1", 5)  # the rest is the transport's own


async def test_what_is_held_when_the_peer_has_gone_is_dropped() -> None:
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"late")
    inner.closed = True  # connection lost before the end of the turn
    await asyncio.sleep(0)
    assert inner.writes == []


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await receive()
    if scope["path"] == "/stream":  # a streamed answer: each chunk after an await still goes out
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for chunk in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    body = b'{"jsonrpc":"2.0","id":1,"result":"0x1"}'
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


class CountingProtocol(HttpProtocol):
    """``HttpProtocol`` over a transport that counts what reaches the socket."""

    writes: ClassVar[list[bytes]] = []

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        real_write = transport.write

        class Counted:
            def __getattr__(self, name: str) -> Any:
                return getattr(transport, name)

            def write(self, data: bytes) -> None:
                CountingProtocol.writes.append(bytes(data))
                real_write(data)

        super().connection_made(Counted())  # type: ignore[arg-type]


async def test_uvicorn_sends_each_whole_answer_in_one_write_over_keep_alive() -> None:
    port = free_port()
    CountingProtocol.writes = []
    config = uvicorn.Config(
        _app, host="127.0.0.1", port=port, http=CountingProtocol, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = b"POST /rpc HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}"
        answers = []
        for _ in range(3):  # one connection, kept alive
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(ln for ln in head.split(b"\r\n") if ln.startswith(b"content-length")).split(b":")[1])
            answers.append(head + await reader.readexactly(length))
        assert all(answer.endswith(b'"result":"0x1"}') and answer.startswith(b"HTTP/1.1 200") for answer in answers)
        assert CountingProtocol.writes == answers  # head and body together, one write per answer

        CountingProtocol.writes = []
        writer.write(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        streamed = b""
        while not streamed.endswith(b"0\r\n\r\n"):
            streamed += await reader.read(65536)
        assert b"one," in streamed and b"two," in streamed and b"three" in streamed
        assert len(CountingProtocol.writes) >= 3  # chunks separated by awaits are not held for each other
        writer.close()
    finally:
        server.should_exit = True
        await serving
