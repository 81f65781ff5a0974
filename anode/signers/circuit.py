"""A circuit breaker per signing backend: stop waiting on a backend that keeps failing."""

from __future__ import annotations

import time
from collections.abc import Callable

from anode.metrics import CircuitState


class CircuitBreaker:
    """closed → (``failures`` in a row) → open → (``reset_after_s``) → half-open: one trial → closed | open."""

    def __init__(self, failures: int, reset_after_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._threshold = failures
        self._reset_after = reset_after_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial = False

    @property
    def reset_after_s(self) -> float:
        return self._reset_after

    @property
    def state(self) -> CircuitState:
        if self._opened_at is None:
            return CircuitState.CLOSED
        if self._clock() - self._opened_at >= self._reset_after:
            return CircuitState.HALF_OPEN
        return CircuitState.OPEN

    def allow(self) -> bool:
        """May a request use the backend now? In half-open, only one at a time (the trial)."""
        state = self.state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.HALF_OPEN and not self._trial:
            self._trial = True
            return True
        return False

    def release(self) -> None:
        """A request let through ended without a verdict (cancelled)."""
        self._trial = False

    def success(self) -> bool:
        """Record a success; ``True`` when that changed anything (failures counted, or not closed)."""
        changed = self._failures != 0 or self._opened_at is not None
        self._failures, self._opened_at, self._trial = 0, None, False
        return changed

    def failure(self) -> None:
        self._failures += 1
        if self._trial or self._failures >= self._threshold:
            self._opened_at = self._clock()
        self._trial = False
