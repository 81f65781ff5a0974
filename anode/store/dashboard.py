"""What the operator's dashboard reads (``GET /dashboard``), on SQLite and PostgreSQL.

Every query is bounded: a time window of at most :data:`MAX_WINDOW` and a row limit, and each
one is answered from an index (``tests/integration/test_dashboard_store.py`` reads the plans
with ``EXPLAIN`` on both databases):

    spend          sponsorships by created_at          ix_sponsorships_created
    policy spend   the same, each one's reservations   ix_sponsorships_created, ix_limit_reservations_op
    signer events  signer_events by at, newest first   ix_signer_events_at, the primary key
    outcomes       sponsorship_outcomes by hour         its primary key (hour, method, result)
    deposits       deposit_samples by sampled_at        ix_deposit_samples_time
    operations     sponsorships, newest first           the primary key
    follower       watch_cursors (a row per chain), unknown_operations newest first (primary key)

Wei amounts are summed exactly: ``SUM`` over ``NUMERIC(78, 0)`` on PostgreSQL, and on SQLite,
which keeps them as decimal text, an aggregate of Python integers registered on the connection.

:class:`OutcomeCounter` counts each sponsorship answer (``ok`` or the refusal's code) in memory
and adds the counts to ``sponsorship_outcomes`` every few seconds, off the request path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from anode.errors import StoreUnavailable
from anode.store.deposits import deposit_samples
from anode.store.reconcile import SETTLED, limit_reservations
from anode.store.signer_events import FAILOVER
from anode.store.tables import metadata, signer_events, sponsorships
from anode.store.watch import unknown_operations, watch_cursors

log = logging.getLogger("anode.dashboard")

#: the longest window any dashboard query covers
MAX_WINDOW = timedelta(days=31)
#: most rows a list answers (recent operations, deposit samples)
MAX_ROWS = 5000

Bucket = Literal["hour", "day"]

sponsorship_outcomes = sa.Table(
    "sponsorship_outcomes",
    metadata,
    sa.Column("hour", sa.DateTime(timezone=True), primary_key=True),
    sa.Column("method", sa.String(64), primary_key=True),
    sa.Column("result", sa.String(64), primary_key=True),
    sa.Column("count", sa.BigInteger(), nullable=False),
)

_SQLITE_SUM = "anode_uint_sum"


class _ExactSum:
    """SQLite aggregate: the exact sum of decimal-text integers, as decimal text."""

    def __init__(self) -> None:
        self.total = 0

    def step(self, value: Any) -> None:
        if value is not None:
            self.total += int(value)

    def finalize(self) -> str:
        return str(self.total)


def window(since: datetime, until: datetime | None = None) -> tuple[datetime, datetime]:
    """``(since, until)`` in UTC, ``until`` defaulting to now, at most :data:`MAX_WINDOW` long."""
    until = _aware(until or datetime.now(UTC))
    since = max(_aware(since), until - MAX_WINDOW)
    return since, until


class DashboardStore:
    """The dashboard's reads, on the server's engine."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._sqlite = engine.dialect.name == "sqlite"

    def spend(self, since: datetime, until: datetime | None, bucket: Bucket) -> list[dict[str, Any]]:
        """Per bucket (hour or day), chain and API key: operations signed, wei reserved at signing
        (their maximum cost), and actual wei of those included (from the follower)."""
        since, until = window(since, until)
        c = sponsorships.c
        start = self._bucket(c.created_at, bucket).label("bucket")
        included = c.status == "included"
        query = (
            sa.select(
                start,
                c.chain_id,
                c.api_key_id,
                sa.func.count().label("operations"),
                sa.func.count().filter(included).label("included"),
                self._sum(c.max_gas_cost_wei).label("reserved_wei"),
                self._sum(sa.case((included, c.actual_gas_cost_wei))).label("actual_wei"),
            )
            .where(c.created_at >= since, c.created_at < until)
            .group_by(start, c.chain_id, c.api_key_id)
            .order_by(start)
            .limit(MAX_ROWS)
        )
        rows = self._read(query)
        return [
            {
                "bucket": _bucket_text(row["bucket"], bucket),
                "chainId": int(row["chain_id"]),
                "apiKeyId": row["api_key_id"],
                "operations": int(row["operations"]),
                "included": int(row["included"]),
                "reservedWei": str(_int(row["reserved_wei"])),
                "actualWei": str(_int(row["actual_wei"])),
            }
            for row in rows
        ]

    def policy_spend(self, since: datetime, until: datetime | None, bucket: Bucket) -> list[dict[str, Any]]:
        """Per bucket (of signing time), chain and policy: operations that reserved in the policy's
        amount limits, wei reserved (their maximum cost) and actual wei (the cost reconciliation
        settled them at, ``store/reconcile.py``) of those included.

        A policy with several amount limits reserves the same amount in each: one of them (its first
        counter by name) stands for the policy, so an operation counts once per policy.
        """
        since, until = window(since, until)
        r, s = limit_reservations.c, sponsorships.c
        other = limit_reservations.alias("other")
        policy = self._policy(r.counter)
        first_counter = (
            sa.select(sa.func.min(other.c.counter))
            .where(
                other.c.chain_id == r.chain_id,
                other.c.user_op_hash == r.user_op_hash,
                self._policy(other.c.counter) == policy,
            )
            .scalar_subquery()
        )
        # one row per reservation, at the time of its (first) ledger row in the window
        on = sa.and_(r.chain_id == s.chain_id, r.user_op_hash == s.user_op_hash)
        signed = (
            sa.select(
                r.id,
                r.chain_id,
                policy.label("policy"),
                r.amount,
                r.state,
                r.spent,
                sa.func.min(s.created_at).label("created_at"),
            )
            .select_from(sponsorships.join(limit_reservations, on))
            .where(s.created_at >= since, s.created_at < until, r.counter == first_counter)
            .group_by(r.id, r.chain_id, r.counter, r.amount, r.state, r.spent)
            .subquery()
        )
        t = signed.c
        start = self._bucket(t.created_at, bucket).label("bucket")
        settled = t.state == SETTLED
        query = (
            sa.select(
                start,
                t.chain_id,
                t.policy,
                sa.func.count().label("operations"),
                sa.func.count().filter(settled).label("included"),
                self._sum(t.amount).label("reserved_wei"),
                self._sum(sa.case((settled, t.spent))).label("actual_wei"),
            )
            .group_by(start, t.chain_id, t.policy)
            .order_by(start, t.chain_id, t.policy)
            .limit(MAX_ROWS)
        )
        return [
            {
                "bucket": _bucket_text(row["bucket"], bucket),
                "chainId": int(row["chain_id"]),
                "policyId": row["policy"],
                "operations": int(row["operations"]),
                "included": int(row["included"]),
                "reservedWei": str(_int(row["reserved_wei"])),
                "actualWei": str(_int(row["actual_wei"])),
            }
            for row in self._read(query)
        ]

    def signer_failovers(self, since: datetime, until: datetime | None = None) -> list[dict[str, Any]]:
        """Failovers per hour, from which backend to which, summed over every server process."""
        since, until = window(since, until)
        e = signer_events.c
        hour = self._bucket(e.at, "hour").label("hour")
        query = (
            sa.select(hour, e.backend, e.to_backend, sa.func.sum(e["count"]).label("count"))
            .where(e.at >= since, e.at < until, e.kind == FAILOVER)
            .group_by(hour, e.backend, e.to_backend)
            .order_by(hour, e.backend, e.to_backend)
            .limit(MAX_ROWS)
        )
        return [
            {
                "hour": _bucket_text(row["hour"], "hour"),
                "backend": row["backend"],
                "toBackend": row["to_backend"],
                "count": int(row["count"]),
            }
            for row in self._read(query)
        ]

    def signer_events(self, limit: int = 50) -> list[dict[str, Any]]:
        """The latest signer events of every process, newest first."""
        e = signer_events.c
        query = (
            sa.select(e.at, e.kind, e.backend, e.address, e.to_backend, e.to_address, e["count"], e.detail, e.process)
            .order_by(e.id.desc())
            .limit(max(1, min(limit, MAX_ROWS)))
        )
        return [
            {
                "at": _aware(_moment(row["at"])).isoformat(),
                "kind": row["kind"],
                "backend": row["backend"],
                "address": row["address"],
                "toBackend": row["to_backend"],
                "toAddress": row["to_address"],
                "count": int(row["count"]),
                "detail": row["detail"],
                "process": row["process"],
            }
            for row in self._read(query)
        ]

    def outcomes(self, since: datetime, until: datetime | None = None) -> list[dict[str, Any]]:
        """Sponsorship answers per hour, method and result (``ok`` or the refusal's code)."""
        since, until = window(since, until)
        t = sponsorship_outcomes.c
        hour = since.replace(minute=0, second=0, microsecond=0)
        query = (
            sa.select(t.hour, t.method, t.result, t.count)
            .where(t.hour >= hour, t.hour < until)
            .order_by(t.hour)
            .limit(MAX_ROWS)
        )
        return [
            {
                "hour": _bucket_text(row["hour"], "hour"),
                "method": row["method"],
                "result": row["result"],
                "count": int(row["count"]),
            }
            for row in self._read(query)
        ]

    def deposits(self, since: datetime, until: datetime | None = None) -> list[dict[str, Any]]:
        """Deposit samples in the window (the deposit monitor's, ``watch/deposits.py``), oldest first."""
        since, until = window(since, until)
        d = deposit_samples.c
        query = (
            sa.select(d.sampled_at, d.chain_id, d.paymaster, d.entry_point, d.deposit_wei)
            .where(d.sampled_at >= since, d.sampled_at < until)
            .order_by(d.sampled_at)
            .limit(MAX_ROWS)
        )
        return [
            {
                "at": _aware(_moment(row["sampled_at"])).isoformat(),
                "chainId": int(row["chain_id"]),
                "paymaster": row["paymaster"],
                "entryPoint": row["entry_point"],
                "depositWei": str(_int(row["deposit_wei"])),
            }
            for row in self._read(query)
        ]

    def operations(self, limit: int = 50) -> list[dict[str, Any]]:
        """The latest sponsorships with their outcome, newest first."""
        c = sponsorships.c
        query = (
            sa.select(
                c.id, c.created_at, c.user_op_hash, c.chain_id, c.paymaster, c.sender, c.method, c.api_key_id,
                c.max_gas_cost_wei, c.status, c.tx_hash, c.block_number, c.success, c.actual_gas_cost_wei,
            )
            .order_by(c.id.desc())
            .limit(max(1, min(limit, MAX_ROWS)))
        )  # fmt: skip
        return [
            {
                "createdAt": _aware(row["created_at"]).isoformat(),
                "userOpHash": row["user_op_hash"],
                "chainId": int(row["chain_id"]),
                "paymaster": row["paymaster"],
                "sender": row["sender"],
                "method": row["method"],
                "apiKeyId": row["api_key_id"],
                "maxGasCostWei": str(row["max_gas_cost_wei"]),
                "status": row["status"],
                "txHash": row["tx_hash"],
                "blockNumber": row["block_number"],
                "success": row["success"],
                "actualGasCostWei": None if row["actual_gas_cost_wei"] is None else str(row["actual_gas_cost_wei"]),
            }
            for row in self._read(query)
        ]

    def follower(self, unknown_limit: int = 20) -> dict[str, Any]:
        """Each chain's last block the follower processed, and the latest inclusions for a
        configured paymaster that no ledger row signed."""
        w, u = watch_cursors.c, unknown_operations.c
        cursors = self._read(sa.select(w.chain_id, w.last_block, w.updated_at).order_by(w.chain_id).limit(MAX_ROWS))
        unknown = self._read(
            sa.select(u.seen_at, u.chain_id, u.user_op_hash, u.tx_hash, u.paymaster, u.sender, u.actual_gas_cost_wei)
            .order_by(u.id.desc())
            .limit(max(1, min(unknown_limit, MAX_ROWS)))
        )
        return {
            "chains": [
                {
                    "chainId": int(row["chain_id"]),
                    "lastBlock": int(row["last_block"]),
                    "updatedAt": _aware(row["updated_at"]).isoformat(),
                }
                for row in cursors
            ],
            "unknown": [
                {
                    "seenAt": _aware(row["seen_at"]).isoformat(),
                    "chainId": int(row["chain_id"]),
                    "userOpHash": row["user_op_hash"],
                    "txHash": row["tx_hash"],
                    "paymaster": row["paymaster"],
                    "sender": row["sender"],
                    "actualGasCostWei": str(row["actual_gas_cost_wei"]),
                }
                for row in unknown
            ],
        }

    def _bucket(self, column: Any, bucket: Bucket) -> Any:
        if self._sqlite:  # SQLite keeps UTC wall-clock text: cut it
            return sa.func.substr(column, sa.literal_column("1"), sa.literal_column("13" if bucket == "hour" else "10"))
        unit: Any = sa.literal_column("'hour'" if bucket == "hour" else "'day'")
        return sa.func.date_trunc(unit, sa.func.timezone(sa.literal_column("'UTC'"), column))

    def _policy(self, counter: Any) -> Any:
        """The policy's id: a counter is ``policy:type:window:scope`` (``policy/evaluate.py``)."""
        if self._sqlite:
            return sa.func.substr(counter, sa.literal_column("1"), sa.func.instr(counter, ":") - 1)
        return sa.func.split_part(counter, ":", sa.literal_column("1"))

    def _sum(self, column: Any) -> Any:
        if self._sqlite:
            return sa.func.coalesce(getattr(sa.func, _SQLITE_SUM)(column), "0")
        return sa.func.coalesce(sa.func.sum(column), 0)

    def _read(self, query: sa.Select[Any]) -> list[sa.RowMapping]:
        try:
            with self._engine.connect() as connection:
                if self._sqlite:
                    raw: Any = connection.connection.dbapi_connection
                    raw.create_aggregate(_SQLITE_SUM, 1, _ExactSum)
                return list(connection.execute(query).mappings().all())
        except sa.exc.SQLAlchemyError as exc:
            raise StoreUnavailable(f"the dashboard could not read the database ({type(exc).__name__})") from None


class OutcomeCounter:
    """Counts sponsorship answers in memory; :meth:`flush` adds them to ``sponsorship_outcomes``.

    :meth:`add` is what the request path pays: a lock and a dictionary increment. A thread
    flushes every ``interval`` seconds; a flush that fails keeps its counts for the next one.
    Each process of ``anode serve --workers N`` adds its own counts: the rows are their sums.
    """

    def __init__(self, engine: sa.Engine, interval: float = 5.0, clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._interval = interval
        self._clock = clock
        #: (hour as Unix seconds // 3600, method, result) → count
        self._counts: Counter[tuple[int, str, str]] = Counter()
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        insert = sqlite.insert if engine.dialect.name == "sqlite" else postgresql.insert
        statement = insert(sponsorship_outcomes)
        self._upsert = statement.on_conflict_do_update(
            index_elements=["hour", "method", "result"],
            set_={"count": sponsorship_outcomes.c["count"] + statement.excluded["count"]},
        )

    def add(self, method: str, result: str) -> None:
        hour = int(self._clock()) // 3600
        with self._lock:
            self._counts[(hour, method, result)] += 1

    def start(self) -> None:
        if self._thread is None and self._interval > 0:
            self._thread = threading.Thread(target=self._run, name="anode-outcomes", daemon=True)
            self._thread.start()

    def flush(self) -> None:
        """Add the counts so far to the table (and forget them once written)."""
        with self._flushing:
            with self._lock:
                counts, self._counts = self._counts, Counter()
            if not counts:
                return
            rows = [
                {"hour": datetime.fromtimestamp(h * 3600, UTC), "method": m, "result": r, "count": n}
                for (h, m, r), n in sorted(counts.items())
            ]
            try:
                with self._engine.begin() as connection:
                    connection.execute(self._upsert, rows)
            except sa.exc.SQLAlchemyError as exc:
                log.warning("sponsorship outcomes not written yet (%s): kept for the next flush", type(exc).__name__)
                with self._lock:
                    self._counts.update(counts)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _moment(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def _int(value: Any) -> int:
    return 0 if value is None else int(value)


def _bucket_text(value: Any, bucket: Bucket) -> str:
    """The bucket's start as ISO text in UTC (``2026-12-03T14:00:00+00:00``)."""
    if isinstance(value, datetime):
        moment = _aware(value)
    else:  # SQLite's cut text: "2026-12-03 14" or "2026-12-03"
        text = str(value)
        moment = datetime.fromisoformat(text + ":00" if bucket == "hour" and len(text) == 13 else text[:10])
        moment = moment.replace(tzinfo=UTC)
    if bucket == "day":
        moment = moment.replace(hour=0)
    return moment.replace(minute=0, second=0, microsecond=0).isoformat()
