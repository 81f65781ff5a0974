"""CPU of one Redis limiter reservation (``RedisLimiter.reserve``), N at a time, in this process.

    python bench/limiter_redis.py                        # 1 and 16 at a time
    PYTHONPATH=/tmp/copy python bench/limiter_redis.py   # a modified copy of anode/, for an A/B

Each reservation is the three counters ``bench/pipeline.py``'s two policies charge (a project
amount, a project request count, one of 64 wallets' request count), against the Redis at
``--redis-url`` under a fresh key prefix. CPU is this process's (``time.process_time``: redis-py's
packing, parsing and the event loop; not Redis's own), median of ``--repeats`` rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid


async def measure(args: argparse.Namespace) -> dict[int, list[tuple[float, float]]]:
    from redis.asyncio import Redis

    from anode.policy.limits.base import Bucket
    from anode.policy.limits.redis import RedisLimiter

    client = Redis.from_url(args.redis_url)
    limiter = RedisLimiter(client, prefix=f"bench:{uuid.uuid4().hex}:")
    now = int(time.time())
    day, hour = now // 86400 * 86400, now // 3600 * 3600

    def buckets(n: int) -> tuple[Bucket, ...]:
        return (
            Bucket("project:amount", day, 10**30, 10**15, day + 86400),
            Bucket("project:requests", day, 10**9, 1, day + 86400),
            Bucket(f"wallet:{n % 64}:requests", hour, 10**9, 1, hour + 3600),
        )

    async def worker(count: int, first: int) -> None:
        for n in range(first, first + count):
            if await limiter.reserve(buckets(n)) is not None:
                raise SystemExit("a reservation was refused: the limits are set far above the load")

    samples: dict[int, list[tuple[float, float]]] = {c: [] for c in args.concurrency}
    try:
        for _ in range(args.repeats):
            for concurrency in args.concurrency:  # interleaved
                per = args.calls // concurrency
                cpu, wall = time.process_time(), time.perf_counter()
                await asyncio.gather(*(worker(per, i * per) for i in range(concurrency)))
                calls = per * concurrency
                samples[concurrency].append(
                    ((time.process_time() - cpu) / calls * 1e6, calls / (time.perf_counter() - wall))
                )
    finally:
        await client.aclose()
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    samples = asyncio.run(measure(args))
    print("| at a time | CPU µs/reservation (median) | min | reservations/s (median) |")
    print("|---:|---:|---:|---:|")
    for concurrency, values in samples.items():
        cpu = [v[0] for v in values]
        rate = [v[1] for v in values]
        print(f"| {concurrency} | {statistics.median(cpu):.0f} | {min(cpu):.0f} | {statistics.median(rate):,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
