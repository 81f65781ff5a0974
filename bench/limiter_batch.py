"""CPU of one SQLite limiter transaction (``SqlLimiter._reserve_sqlite``), by batch size.

    python bench/limiter_batch.py
    PYTHONPATH=/tmp/copy python bench/limiter_batch.py   # a modified copy of anode/, for an A/B

Each reservation is the three counters ``bench/pipeline.py``'s two policies charge (a project
amount, a project request count, one wallet's request count). A batch is one ``BEGIN
IMMEDIATE`` … ``COMMIT`` on a fresh SQLite file with the server's pragmas (WAL,
``synchronous=FULL``: the COMMIT's fsync is in the figure). CPU is this process's
(``time.process_time``), median of ``--repeats`` rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=300, help="transactions per round")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from anode.policy.limits.base import Bucket
    from anode.policy.limits.sql import SqlLimiter
    from anode.store.database import create_engine, upgrade

    with tempfile.TemporaryDirectory(prefix="anode-limiter-") as tmp:
        engine = create_engine(f"sqlite:///{Path(tmp) / 'limits.db'}")
        upgrade(engine)
        limiter = SqlLimiter(engine)
        wallet = 0

        def batch(size: int) -> list[list[Bucket]]:
            nonlocal wallet
            wallet += size
            return [
                [
                    Bucket("project:amount", 0, 10**30, 10**15),
                    Bucket("project:requests", 0, 10**9, 1),
                    Bucket(f"wallet:{wallet + i}", 0, 10**9, 1),
                ]
                for i in range(size)
            ]

        print("| reservations per transaction | CPU µs per transaction | per reservation |")
        print("|---:|---:|---:|")
        for size in (1, 4, 16):
            rounds = []
            for _ in range(args.repeats):
                work = [batch(size) for _ in range(args.batches)]
                started = time.process_time()
                for one in work:
                    limiter._reserve_sqlite(one)
                rounds.append((time.process_time() - started) / args.batches * 1e6)
            cpu = statistics.median(rounds)
            print(f"| {size} | {cpu:.0f} | {cpu / size:.0f} |")
        limiter._pool.shutdown()
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
