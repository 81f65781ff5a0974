"""Signer events in ``signer_events``: failovers and backends' health, for the dashboard.

:meth:`SignerEventLog.record` is what the signer manager calls (``signers/manager.py``): a lock
and a dictionary update, never a database write. A thread writes what was recorded as soon as
something new is (a first failover, a backend turning unhealthy shows up within one write), then
waits at least ``interval`` seconds before the next write, so a backend that stays down while
every request fails over past it costs one ``INSERT`` per ``interval``, not one per request:
failovers between the same two backends in the same hour are one row with their ``count``.
A write that fails keeps its events for the next one. Every server process writes its own rows
(``process``: host and process id); the dashboard sums them.

Rows older than ``keep_days`` (:data:`KEEP_DAYS` by default) are deleted by the same thread when
it starts and then at most every ``prune_every`` seconds (:data:`PRUNE_EVERY_SECONDS`), never per
event: one indexed ``DELETE`` (``ix_signer_events_at``) per process an hour.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from anode.store.tables import signer_events

log = logging.getLogger("anode.signers")

FAILOVER = "failover"
#: the kinds of event a row holds
KINDS = frozenset({FAILOVER, "unhealthy", "healthy", "circuit_open", "circuit_closed"})
#: rows older than this many days are deleted
KEEP_DAYS = 30.0
#: the writer thread deletes old rows when it starts, then at most this often
PRUNE_EVERY_SECONDS = 3600.0


def process_name() -> str:
    """``host:pid``, what names this process's rows."""
    return f"{socket.gethostname()[:50]}:{os.getpid()}"


@dataclass(slots=True)
class _Pending:
    at: float
    count: int
    detail: str | None


#: (hour, kind, backend, address, to_backend, to_address), the key rows are merged by
_Key = tuple[int, str, str, str, str | None, str | None]


class SignerEventLog:
    """Records signer events in memory; a thread writes them to ``signer_events``."""

    def __init__(
        self,
        engine: sa.Engine,
        interval: float = 5.0,
        *,
        process: str | None = None,
        clock: Callable[[], float] = time.time,
        keep_days: float = KEEP_DAYS,
        prune_every: float = PRUNE_EVERY_SECONDS,
    ) -> None:
        self._engine = engine
        self._interval = interval
        self._keep = timedelta(days=keep_days)
        self._prune_every = prune_every
        self._process = (process or process_name())[:64]
        self._clock = clock
        #: failovers, merged per key; state changes, one each in order
        self._failovers: dict[_Key, _Pending] = {}
        self._changes: list[tuple[_Key, _Pending]] = []
        self._lock = threading.Lock()
        self._writing = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(
        self,
        kind: str,
        backend: str,
        address: str,
        *,
        to_backend: str | None = None,
        to_address: str | None = None,
        detail: str | None = None,
    ) -> None:
        """One event (``kind`` one of :data:`KINDS`); written by the thread, not here."""
        now = self._clock()
        key: _Key = (int(now) // 3600, kind, backend[:64], address, to_backend and to_backend[:64], to_address)
        detail = detail[:200] if detail else None
        with self._lock:
            if kind == FAILOVER:
                pending = self._failovers.get(key)
                if pending is None:
                    self._failovers[key] = _Pending(now, 1, detail)
                else:
                    pending.count += 1
            else:
                self._changes.append((key, _Pending(now, 1, detail)))
        self._wake.set()

    def start(self) -> None:
        if self._thread is None and self._interval > 0:
            self._thread = threading.Thread(target=self._run, name="anode-signer-events", daemon=True)
            self._thread.start()

    def flush(self) -> None:
        """Write what was recorded so far (and forget it once written)."""
        with self._writing:
            with self._lock:
                failovers, self._failovers = self._failovers, {}
                changes, self._changes = self._changes, []
            events = sorted([*failovers.items(), *changes], key=lambda item: item[1].at)
            if not events:
                return
            rows = [
                {
                    "at": datetime.fromtimestamp(pending.at, UTC),
                    "kind": kind,
                    "backend": backend,
                    "address": address,
                    "to_backend": to_backend,
                    "to_address": to_address,
                    "count": pending.count,
                    "detail": pending.detail,
                    "process": self._process,
                }
                for (_, kind, backend, address, to_backend, to_address), pending in events
            ]
            try:
                with self._engine.begin() as connection:
                    connection.execute(sa.insert(signer_events), rows)
            except sa.exc.SQLAlchemyError as exc:
                log.warning("signer events not written yet (%s): kept for the next write", type(exc).__name__)
                with self._lock:
                    for key, pending in failovers.items():
                        later = self._failovers.get(key)
                        if later is None:
                            self._failovers[key] = pending
                        else:
                            later.at, later.count = pending.at, later.count + pending.count
                    self._changes[:0] = changes
                self._wake.set()  # the thread tries again after its interval

    def prune(self) -> None:
        """Delete the rows (of every process) older than ``keep_days``."""
        before = datetime.fromtimestamp(self._clock(), UTC) - self._keep
        try:
            with self._engine.begin() as connection:
                connection.execute(sa.delete(signer_events).where(signer_events.c.at < before))
        except sa.exc.SQLAlchemyError as exc:
            log.warning("old signer events not deleted (%s): tried again later", type(exc).__name__)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.flush()

    def _run(self) -> None:
        prune_at = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() >= prune_at:
                self.prune()
                prune_at = time.monotonic() + self._prune_every
            if not self._wake.wait(max(0.0, prune_at - time.monotonic())):
                continue  # nothing recorded: time to prune
            self._wake.clear()
            if self._stop.is_set():
                break
            self.flush()
            self._stop.wait(self._interval)  # at most one write per interval
