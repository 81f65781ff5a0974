"""Outbound HTTP on the request path: the key server, the node, the bundler and policy webhooks.

aiohttp, not httpx, because of what a request costs the server's one busy core. Against one local
server (``python bench/http_clients.py``), httpx 0.28 (httpcore on anyio) spent ~600 µs of CPU
per request alone and ~1,000 µs each with 16 in flight; aiohttp ~150 and ~80 µs. httpx stays for
the synchronous calls made once at start-up and in the CLI.

A :class:`HttpClient` holds one ``aiohttp.ClientSession``, made on first use inside the running
event loop (a session belongs to one loop); closed, or used from another loop, it makes a new
one there. It never follows redirects, never reads proxies from the environment and never logs
a URL (a provider URL or a webhook URL may carry a key). Failures come out as :class:`OutboundTimeout`
or :class:`OutboundUnreachable`, whose ``reason`` is safe to show; callers turn them into their
own errors.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp


class OutboundError(Exception):
    """The request got no HTTP answer; ``reason`` says why in words safe to show a user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OutboundTimeout(OutboundError):
    """No complete answer within the timeout."""


class OutboundUnreachable(OutboundError):
    """The connection failed or broke before an answer."""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def describe(exc: BaseException) -> str:
    """A short, secret-free name for a transport failure."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "TLS certificate not trusted"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "TLS handshake failed"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "host name not resolved"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connection refused"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "answer cut short"
    return type(exc).__name__


class HttpClient:
    """Requests to ``base_url + path`` (or to a full URL when ``base_url`` is empty)."""

    def __init__(
        self,
        base_url: str = "",
        *,
        timeout: float,
        max_connections: int = 32,
        headers: Mapping[str, str] | None = None,
        tls: ssl.SSLContext | bool = True,
        retry_disconnected: bool = False,
    ) -> None:
        self._base_url = base_url
        self._timeout = timeout
        self._default_timeout = aiohttp.ClientTimeout(total=timeout)
        self._max_connections = max_connections
        self._headers = dict(headers or {})
        self._tls = tls
        #: send once more when the server closed or reset the connection without answering: a
        #: kept-alive connection it had already dropped. Only for requests that are safe to repeat.
        self._retry_disconnected = retry_disconnected
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Reply:
        session = await self._session_for_this_loop()
        url = self._base_url + path
        limit = self._default_timeout if timeout is None else aiohttp.ClientTimeout(total=timeout)
        attempts = 2 if self._retry_disconnected else 1
        for attempt in range(1, attempts + 1):
            try:
                async with session.request(
                    method, url, data=body, headers=headers, timeout=limit, allow_redirects=False
                ) as response:
                    return Reply(response.status, await response.read())
            except TimeoutError:
                raise OutboundTimeout(f"no answer within {timeout or self._timeout:g} s") from None
            except aiohttp.ClientError as exc:
                if attempt == attempts or not _dropped(exc):
                    raise OutboundUnreachable(describe(exc)) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def post_json(self, path: str, body: bytes, *, timeout: float | None = None) -> Reply:
        return await self.request("POST", path, body=body, headers=_JSON, timeout=timeout)

    async def aclose(self) -> None:
        session, self._session, self._loop = self._session, None, None
        if session is not None:
            await _close(session)

    async def _session_for_this_loop(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._session
        if session is not None and self._loop is loop and not session.closed:
            return session
        # the new session is in place before anything is awaited: a concurrent first request
        # on this loop finds it instead of making a second one
        connector = aiohttp.TCPConnector(
            limit=self._max_connections, ssl=self._tls, keepalive_timeout=KEEPALIVE_SECONDS
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            timeout=self._default_timeout,
            trust_env=False,
            raise_for_status=False,
        )
        self._loop = loop
        if session is not None:
            await _close(session)  # made in a loop that is gone: its connections went with it
        return self._session


_JSON = {"content-type": "application/json"}
#: idle connections are closed after this long: under the 5 s of uvicorn (the key server) and
#: most proxies, so a request rarely meets a connection the server is closing at that moment
KEEPALIVE_SECONDS = 4.0


def _dropped(exc: aiohttp.ClientError) -> bool:
    """The connection broke before any answer: the server closed or reset it (not: refused it)."""
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return True
    return isinstance(exc, aiohttp.ClientOSError) and not isinstance(exc, aiohttp.ClientConnectorError)


async def _close(session: aiohttp.ClientSession) -> None:
    try:
        await session.close()
    except (RuntimeError, ValueError):  # its loop is closed or another one's: nothing left to close
        session.detach()
