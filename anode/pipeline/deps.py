"""What modules may use, handed to each module's ``create(config, deps)``.

Modules never build clients themselves: the composition root (``wiring.py``) builds one
``Dependencies`` per server and every module shares it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import sqlalchemy as sa

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from anode.chain.cache import TTLCache
    from anode.config import Settings


@dataclass
class Dependencies:
    settings: Settings
    engine: sa.Engine
    cache: TTLCache
    redis: Redis | None = None
    clock: Callable[[], float] = field(default=time.time)
