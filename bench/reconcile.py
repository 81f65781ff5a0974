"""How long reconciliation takes: N included rows with one amount-limit reservation each.

    .venv/bin/python bench/reconcile.py [DATABASE_URL] [N]     (default: a new SQLite file, 1000)

Prints the time of ``store.reconcile.reconcile`` (what the follower adds to its transaction for
a range holding N inclusions) and of ``Reconciler.apply`` (the SQL limiter applying the N
adjustments). The database must be throwaway: the script writes rows into it.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
import tempfile
import time
from datetime import UTC, datetime

from anode.policy.limits import Bucket, SqlLimiter
from anode.store import reconcile as outbox
from anode.store.database import create_engine, upgrade
from anode.store.reconcile import limit_reservations
from anode.store.tables import sponsorships
from anode.watch.reconcile import Reconciler

WALLETS = 50


def _row(user_op_hash: str) -> dict[str, object]:
    return {
        "created_at": datetime.now(UTC), "user_op_hash": user_op_hash, "chain_id": 1,
        "entry_point": "0x" + "0" * 40, "paymaster": "0x" + "1" * 40, "sender": "0x" + "2" * 40, "nonce": 0,
        "max_gas_cost_wei": 10**15, "valid_until": 0, "valid_after": 0, "signer": "0x" + "3" * 40,
        "method": "pm_getPaymasterData", "status": "included", "actual_gas_cost_wei": 4 * 10**14,
    }  # fmt: skip


async def main(url: str, count: int) -> None:
    engine = create_engine(url)
    upgrade(engine)
    limiter = SqlLimiter(engine)
    hashes = ["0x" + secrets.token_hex(32) for _ in range(count)]
    with engine.begin() as connection:
        connection.execute(sponsorships.insert(), [_row(h) for h in hashes])
        connection.execute(
            limit_reservations.insert(),
            [
                {"chain_id": 1, "user_op_hash": h, "counter": f"p:amount:0:{i % WALLETS}", "window_start": 0,
                 "amount": 10**15}
                for i, h in enumerate(hashes)
            ],
        )  # fmt: skip
    for wallet in range(WALLETS):
        await limiter.reserve([Bucket(f"p:amount:0:{wallet}", 0, 10**30, count * 10**15)])
    start = time.perf_counter()
    with engine.begin() as connection:
        outbox.reconcile(connection, 1, hashes)
    turned = time.perf_counter()
    applied = await Reconciler(engine, limiter).apply()
    done = time.perf_counter()
    print(
        f"{engine.dialect.name}: reconcile {count} rows {1000 * (turned - start):.0f} ms (in the follower's "
        f"transaction); apply {applied} adjustments {1000 * (done - turned):.0f} ms"
    )
    await limiter.aclose()
    engine.dispose()


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else f"sqlite:///{tempfile.mkdtemp()}/reconcile.db"
    asyncio.run(main(target, int(sys.argv[2]) if len(sys.argv) > 2 else 1000))
