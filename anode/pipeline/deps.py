"""What modules may use, handed to each module's ``create(config, deps)``.

Modules never build clients themselves: the composition root (``wiring.py``) builds one
``Dependencies`` per server and every module shares it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from anode.config import Settings


class TTLCache(Protocol):
    """A shared cache for chain reads: in-process by default, Redis when ``redis_url`` is set."""

    async def get_or_load(self, key: str, ttl: float, load: Callable[[], Awaitable[Any]]) -> Any:
        """The cached value for ``key`` if younger than ``ttl`` seconds, else ``await load()`` (cached)."""
        ...


@dataclass
class Dependencies:
    settings: Settings
    engine: sa.Engine
    cache: TTLCache
    redis: Redis | None = None
    clock: Callable[[], float] = field(default=time.time)
