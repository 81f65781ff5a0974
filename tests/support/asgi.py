"""An HTTP client on aNode's application in process (``httpx.ASGITransport``): no socket, no server."""

from __future__ import annotations

from typing import Any

import httpx

from anode.api.app import create_app
from anode.wiring import Anode


def client_of_app(app: Any, key: str | None) -> httpx.AsyncClient:
    """A client of ``app`` sending ``key`` as its bearer API key (none when ``None``)."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://anode.test", headers=headers)


def client_of(anode: Anode, key: str | None) -> httpx.AsyncClient:
    """A client of the application ``anode serve`` would run for ``anode`` (its lifecycle left to the test)."""
    return client_of_app(create_app(anode, manage_lifecycle=False), key)
