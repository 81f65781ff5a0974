"""Waiting for background work in tests without betting on how fast a shared machine is."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def eventually(condition: Callable[[], bool], within: float = 10.0, what: str = "the background work") -> None:
    """Poll ``condition`` until it holds; fail if ``within`` seconds pass first."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {within} s"
        await asyncio.sleep(0.005)
