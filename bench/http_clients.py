"""What one outbound HTTP request costs the server: httpx against ``anode.outbound.HttpClient`` (aiohttp).

    python bench/http_clients.py                  # 3 interleaved runs, 1 and 16 in flight (~30 s)
    python bench/http_clients.py --count 2000 --runs 5

A separate process (uvicorn) answers every POST with a fixed 150-byte JSON body, like a key
server's signature or a node's ``eth_call``. This process sends ``--count`` POSTs of a small
JSON body through each client, one at a time and then with 16 in flight on one event loop, and
reads each answer. It reports requests/s and, the figure that matters on a server whose core is
busy, the CPU this process spent per request (``time.process_time``). Runs are interleaved
(httpx, aiohttp, httpx, ...) and the table quotes medians. Writes ``bench/results/http-clients.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import orjson  # noqa: E402

from anode.outbound import HttpClient  # noqa: E402
from bench.run import free_port, wait_until_serving  # noqa: E402

ANSWER = orjson.dumps({"signature": "0x" + "11" * 65})
REQUEST = orjson.dumps({"algorithm": "secp256k1-ecdsa-digest", "data": "0x" + "22" * 32, "key_id": "pm"})
JSON = {"content-type": "application/json"}


Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]


async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """The server side: read the body, answer the fixed JSON."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": ANSWER})


async def measure(send: Callable[[], Awaitable[None]], count: int, concurrency: int) -> dict[str, float]:
    for _ in range(100):
        await send()
    remaining = count
    started, cpu = time.perf_counter(), time.process_time()

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await send()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"rps": count / wall, "cpu_us": 1e6 * cpu / count}


async def with_httpx(url: str, count: int, concurrency: int) -> dict[str, float]:
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=5.0) as http:

        async def send() -> None:
            response = await http.post("/sign", content=REQUEST, headers=JSON)
            orjson.loads(response.content)

        return await measure(send, count, concurrency)


async def with_outbound(url: str, count: int, concurrency: int) -> dict[str, float]:
    http = HttpClient(url, timeout=5.0, max_connections=32)
    try:

        async def send() -> None:
            orjson.loads((await http.post_json("/sign", REQUEST)).body)

        return await measure(send, count, concurrency)
    finally:
        await http.aclose()


CLIENTS = {"httpx": with_httpx, "aiohttp (anode.outbound)": with_outbound}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "http-clients.md")
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()  # as `anode serve` runs
    except ImportError:
        pass

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path("/tmp") / f"anode-bench-http-{port}.log"
    command = [sys.executable, "-m", "uvicorn", "bench.http_clients:app", "--port", str(port), "--log-level", "warning"]
    with log.open("wb") as sink:
        server = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        wait_until_serving(server, url + "/", log, "the answering server", 30)
        for run in range(args.runs):
            for concurrency in (1, 16):
                for name, client in CLIENTS.items():
                    figures = asyncio.run(client(url, args.count, concurrency))
                    results.setdefault((name, concurrency), []).append(figures)
                    print(f"run {run + 1} {name:26} {concurrency:2} in flight: {figures['rps']:8.0f} req/s "
                          f"{figures['cpu_us']:6.0f} µs CPU/request", flush=True)  # fmt: skip
    finally:
        server.terminate()
        server.wait(10)

    lines = [
        "# Outbound HTTP: CPU per request by client",
        "",
        f"`python bench/http_clients.py --count {args.count} --runs {args.runs}`, "
        f"{time.strftime('%Y-%m-%d %H:%M')}; medians of {args.runs} interleaved runs.",
        "",
        "| client | in flight | req/s | CPU of this process per request |",
        "|---|---|---|---|",
    ]
    for (name, concurrency), runs in results.items():
        rps = statistics.median(r["rps"] for r in runs)
        cpu = statistics.median(r["cpu_us"] for r in runs)
        lines.append(f"| {name} | {concurrency} | {rps:,.0f} | {cpu:,.0f} µs |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
