"""Statements sent straight to the DB-API driver, for the one write on the hot path.

The ledger's writer thread records every signature (``store/ledger.py``) and chains it into the
audit log (``store/audit.py``). Through SQLAlchemy Core that costs ~50 µs of Python per
statement and per row (compiling, type processors, dict rows, events), most of it holding the
GIL the event loop needs. Here the same ``INSERT``s are prepared once as SQL text in the
driver's parameter style, the rows go in as tuples through ``executemany``, and the writer keeps
one connection of its own. Same tables, same transaction, same values: everything else reads
the rows back through SQLAlchemy (``tests/integration/test_store_postgres.py`` checks both ways).

Only two types need converting by hand, exactly as the SQLAlchemy types would store them:
``DateTime`` on SQLite (text, UTC wall clock) and ``Uint256`` on SQLite (decimal text).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa


class Driver:
    """The dialect's parameter marker and the bind conversions SQLAlchemy would have applied."""

    def __init__(self, dialect: sa.Dialect) -> None:
        if dialect.paramstyle not in ("qmark", "format", "pyformat"):
            raise ValueError(f"no fast path for the {dialect.name} driver's paramstyle {dialect.paramstyle!r}")
        self.sqlite = dialect.name == "sqlite"
        self.mark = "?" if dialect.paramstyle == "qmark" else "%s"
        dbapi: Any = dialect.loaded_dbapi
        #: errors that belong to one row's values, not to the connection
        self.row_errors: tuple[type[BaseException], ...] = (dbapi.DataError, dbapi.IntegrityError)

    def insert(self, table: sa.Table, columns: tuple[str, ...]) -> str:
        names = ", ".join(columns)
        marks = ", ".join(self.mark for _ in columns)
        return f"INSERT INTO {table.name} ({names}) VALUES ({marks})"

    def time(self, moment: datetime) -> Any:
        """``DateTime(timezone=True)``: aware datetimes for PostgreSQL, SQLAlchemy's text on SQLite."""
        if not self.sqlite:
            return moment
        if moment.tzinfo is not None:
            moment = moment.astimezone(UTC)
        return (
            f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d} "
            f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}.{moment.microsecond:06d}"
        )

    def uint(self, value: int) -> Any:
        """``Uint256``: exact decimal text on SQLite, an integer for ``NUMERIC(78, 0)`` elsewhere."""
        return str(value) if self.sqlite else value
