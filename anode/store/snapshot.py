"""A copy of a table the hot path reads on every request, kept young in the background.

Policies and the admins' contract blacklist change rarely and are read by every sponsorship.
:class:`RefreshedCopy` hands out the current copy while it is younger than ``refresh_seconds``;
past half that age, a request starts one reload in the background and goes on with the copy it
has. A request waits for the database only when no copy is young enough: the first one, after an
idle spell, or after :meth:`RefreshedCopy.invalidate` (a write through this process).
``refresh_seconds`` 0 reads on every call.

A write through this process counts from the next request: :meth:`RefreshedCopy.invalidate`
drops the copy and bumps a generation counter, and a read that began at an older generation (a
background reload that was reading while the write committed) does not become the copy: what it
read may predate the write. A caller that was waiting for such a read gets its result (it began
after that caller arrived, so it is no older than the caller) and the next request reads again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger("anode.store")

T = TypeVar("T")


class RefreshedCopy(Generic[T]):
    def __init__(
        self,
        load: Callable[[], Awaitable[T]],
        *,
        refresh_seconds: float,
        what: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self.refresh_seconds = refresh_seconds
        self._what = what
        self._clock = clock
        self._copy: T | None = None
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()
        self._reloading: asyncio.Future[None] | None = None
        #: bumped by every write (:meth:`invalidate`): a read begun before it must not be kept
        self._generation = 0

    async def get(self) -> T:
        """The copy, at most ``refresh_seconds`` old."""
        current = self._copy
        age = self._clock() - self._loaded_at
        if current is not None and age < self.refresh_seconds:
            if age >= self.refresh_seconds / 2 and self._reloading is None:
                self._reloading = asyncio.ensure_future(self._reload_ahead())
            return current
        async with self._lock:
            current = self._copy
            if current is None or self._clock() - self._loaded_at >= self.refresh_seconds:
                current = await self._reload()
            return current

    async def reload(self) -> T:
        """Read now, whatever the age of the copy."""
        async with self._lock:
            return await self._reload()

    def invalidate(self) -> None:
        """The next :meth:`get` reads (after a write through this process), and a read already
        running is not kept."""
        self._generation += 1
        self._copy = None

    async def _reload(self) -> T:
        """Read; keep what was read as the copy unless a write came in meanwhile."""
        started, generation = self._clock(), self._generation
        value = await self._load()
        if generation == self._generation:
            self._copy, self._loaded_at = value, started
        return value

    async def _reload_ahead(self) -> None:
        try:
            async with self._lock:
                if self._clock() - self._loaded_at >= self.refresh_seconds / 2:
                    await self._reload()
        except Exception:  # the next request that finds no young copy reads (and fails) in the open
            log.debug("reloading %s ahead of time failed", self._what, exc_info=True)
        finally:
            self._reloading = None
