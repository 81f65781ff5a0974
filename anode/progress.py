"""A progress line on stderr for long command-line work (``anode audit verify``, ``anode ops list``).

Shown when stderr is a terminal, or when asked (``--progress``); never mixed into stdout, so a
piped result stays clean. The line is redrawn in place at most every ``interval`` seconds and
ends with a newline when the work is done.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``advance`` as work is done; ``done`` at the end. Silent when not shown."""

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        forced: bool = False,
        stream: TextIO | None = None,
        interval: float = 0.2,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.shown = forced or self.stream.isatty()
        self.label = label
        self.total = total
        self.count = 0
        self._interval = interval
        self._drawn = 0.0
        self._tty = self.stream.isatty()

    def advance(self, count: int = 1) -> None:
        self.count += count
        if not self.shown:
            return
        now = time.monotonic()
        if now - self._drawn >= self._interval:
            self._drawn = now
            self._draw()

    def done(self) -> None:
        if self.shown:
            self._draw()
            if self._tty:  # the redrawn line is left as it ends
                self.stream.write("\n")
            self.stream.flush()

    def _draw(self) -> None:
        text = f"{self.label}: {self.count:,}"
        if self.total:
            text += f" of {self.total:,} ({min(100, self.count * 100 // self.total)} %)"
        # on a terminal the line is redrawn in place; in a log (--progress) each update is a line
        self.stream.write(("\r" + text) if self._tty else (text + "\n"))
        self.stream.flush()
