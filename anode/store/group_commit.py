"""Group commit: concurrent callers share transactions, written on one thread.

While one batch is being written, the next accumulates, so a busy server pays one transaction
(one ``COMMIT``, one fsync) per batch instead of one per call. Before cutting a batch smaller
than ``LINGER_ROWS`` it waits ``LINGER_SECONDS`` for more, but only while calls arrive together
(the previous batch had several): a lone caller never waits. The sponsorship ledger
(``store/ledger.py``) and the SQLite limiter (``policy/limits/sql.py``) write through it.

``write(items)`` runs on the executor and returns one result per item, in order. When it raises
one of ``row_errors`` (a value the database refuses), the batch is written again one item at a
time, so one bad row does not fail the calls batched with it; any other error fails the batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

MAX_BATCH = 512
#: fewer, fuller transactions cost less per row (docs/performance.md)
LINGER_SECONDS = 0.001
LINGER_ROWS = 16


class GroupCommit(Generic[Item, Result]):
    def __init__(
        self,
        executor: Executor,
        write: Callable[[list[Item]], Sequence[Result]],
        *,
        row_errors: tuple[type[BaseException], ...] = (),
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._executor = executor
        self._write = write
        self._row_errors = row_errors
        self._max_batch = max_batch
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._flushing = False
        self._last_batch = 1
        self._flusher: asyncio.Task[None] | None = None

    def submit(self, item: Item) -> asyncio.Future[Result]:
        """The future of ``item``'s result: set once its batch is committed (or failed)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Result] = loop.create_future()
        self._pending.append((item, done))
        if not self._flushing:
            self._flushing = True
            self._flusher = loop.create_task(self._flush())
        return done

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                if len(self._pending) < LINGER_ROWS and self._last_batch > 1:
                    await asyncio.sleep(LINGER_SECONDS)
                batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
                self._last_batch = len(batch)
                try:
                    results = await loop.run_in_executor(self._executor, self._write, [item for item, _ in batch])
                except self._row_errors:
                    for one in batch:  # one by one: only the row the database refuses fails
                        try:
                            _settle([one], await loop.run_in_executor(self._executor, self._write, [one[0]]))
                        except Exception as exc:
                            _fail([one], exc)
                except Exception as exc:  # a dead database fails the whole batch at once
                    _fail(batch, exc)
                else:
                    _settle(batch, results)
        finally:
            self._flushing = False


def _settle(batch: list[tuple[Item, asyncio.Future[Result]]], results: Sequence[Result]) -> None:
    for (_, done), result in zip(batch, results, strict=True):
        if not done.done():  # a caller that gave up (timeout, cancel) has its future done already
            done.set_result(result)


def _fail(batch: list[tuple[Item, asyncio.Future[Result]]], exc: Exception) -> None:
    for _, done in batch:
        if not done.done():
            done.set_exception(exc)
