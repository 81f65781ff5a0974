"""Where a running aNode spends its time under load: py-spy samples, grouped by cost.

    python bench/profile_server.py                      # own sandbox, pm_getPaymasterData, 16 clients, 10 s
    python bench/profile_server.py --method pm_getPaymasterStubData --svg /tmp/stub.svg
    python bench/profile_server.py --pid PID --url http://127.0.0.1:8080   # a running server
    python bench/profile_server.py --raw /tmp/profile.txt                  # summarise an earlier recording

wrk drives the server (``jsonrpc.lua``) while ``py-spy record --gil`` samples only the thread that
holds the GIL, so the shares below are shares of the server's Python CPU across all its threads
(the event loop and the ledger writer), not of wall time. C code that releases the GIL (cffi
calls into libsecp256k1 and pycryptodome's keccak, SQLite's commit) is mostly invisible in this
view: ``inprocess.py`` times those directly. py-spy pauses the server for each sample (its
non-blocking mode garbles stacks), so throughput while profiling is lower. ``--native`` adds C
frames. Each sample is charged to the first category that matches its stack, innermost frame first.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import ENTRY_POINT_V07, LUA_SCRIPT, SANDBOX_CHAIN_ID, sandbox

#: (category, substrings of a frame); the first category matching a frame wins, innermost frame first
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ledger: SQLite commit (fsync)", ("do_commit", "sqlite3_step", "pager_", "unixSync", "fdatasync")),
    ("ledger: SQLAlchemy insert (writer thread)", ("SqlLedger._insert", "anode-ledger")),
    ("ledger: record() (asdict, queue, future)", ("SqlLedger.record", "GroupCommit.")),
    ("signing: secp256k1 (coincurve)", ("coincurve/", "secp256k1")),
    ("address checksums (EIP-55)", ("to_checksum_address", "checksum (anode/userop/codec")),
    ("keccak", ("Crypto/Hash/keccak", "eth_hash/", "keccak (anode/", "sha3")),
    ("JSON encode/decode (orjson; C frames only with --native)", ("orjson",)),
    ("pydantic: userOp validate/copy", ("pydantic/", "pydantic_core", "parse_user_op", "codec.py")),
    ("aNode: other sponsorship logic", ("anode/",)),
    ("FastAPI/Starlette routing and middleware", ("fastapi/", "starlette/")),
    ("uvicorn HTTP protocol (httptools)", ("uvicorn/protocols", "httptools")),
    ("event loop and socket I/O (uvloop)", ("uvloop", "asyncio/", "uvicorn/", "Runner.run", "libc", "epoll")),
)


def categorise(stack: list[str]) -> str:
    for frame in reversed(stack):
        for category, needles in CATEGORIES:
            if any(needle in frame for needle in needles):
                return category
    return "other"


INTERESTING = ("anode/", "eth_utils", "coincurve", "Crypto/", "pydantic", "sqlalchemy", "asdict")


def summarise(raw: Path, top: int = 25) -> str:
    by_category: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text:
            continue
        count = int(count_text)
        frames = stack_text.split(";")
        thread = frames[0].split(":", 1)[-1].strip() if frames[0].startswith("thread") else "?"
        threads[thread] += count
        total += count
        by_category[categorise(frames)] += count
        for name in {frame.split(" (")[0] + " " + _file(frame) for frame in frames[1:]}:
            inclusive[name] += count
    if not total:
        return "no samples"
    out = [f"{total} samples (GIL holder), by thread: " + ", ".join(f"{t} {n / total:.0%}" for t, n in threads.items())]
    out += ["", "| where the time goes | share |", "|---|---:|"]
    out += [f"| {category} | {count / total:.1%} |" for category, count in by_category.most_common()]
    out += ["", "inclusive, aNode and library functions:"]
    shown = 0
    for name, count in inclusive.most_common():
        if any(skip in name for skip in ("threading.py", "runners.py", "cli.py", "sandbox.py", "uvicorn/main.py")):
            continue
        if any(
            key in name for key in ("anode/", "eth_utils", "coincurve", "Crypto/", "pydantic", "sqlalchemy", "asdict")
        ):
            out.append(f"  {count / total:6.1%}  {name}")
            shown += 1
        if shown >= top:
            break
    return "\n".join(out)


def _file(frame: str) -> str:
    if " (" not in frame:
        return ""
    return frame.split(" (", 1)[1].rsplit(":", 1)[0].rstrip(")")


def _spy(pid: int, fmt: str, out: Path, args: argparse.Namespace) -> list[str]:
    command = ["py-spy", "record", "--pid", str(pid), "--duration", str(args.seconds), "--rate", str(args.rate)]
    command += ["--gil", "--threads", "--format", fmt, "-o", str(out)]
    return [*command, "--native"] if args.native else command


def record(pid: int, url: str, args: argparse.Namespace) -> Path:
    raw = Path(args.raw or f"/tmp/anode-profile-{pid}.txt")
    wrk = [
        "wrk",
        "-t1",
        f"-c{args.clients}",
        f"-d{args.seconds * (2 if args.svg else 1) + 3}s",
        "-s",
        str(LUA_SCRIPT),
        url,
        "--",
    ]
    wrk += [args.method, ENTRY_POINT_V07, SANDBOX_CHAIN_ID, str(int(time.time()) & 0x7FFFFFFF)]
    if getattr(args, "senders", None):
        wrk.append(str(args.senders))
    load = subprocess.Popen(wrk, stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    subprocess.run(_spy(pid, "raw", raw, args), check=True, capture_output=True)
    if args.svg:  # a second recording: py-spy cannot turn raw stacks into a flame graph
        subprocess.run(_spy(pid, "flamegraph", Path(args.svg), args), check=True, capture_output=True)
    out, _ = load.communicate()
    print(next((line for line in out.splitlines() if line.startswith("BENCH_JSON")), out))
    return raw


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="pm_getPaymasterData")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="include C frames (slower sampling)")
    parser.add_argument("--pid", type=int, help="profile this running server (needs --url)")
    parser.add_argument("--url", help="its JSON-RPC URL")
    parser.add_argument("--raw", help="collapsed-stack file to write; with no server options, to summarise")
    parser.add_argument("--svg", help="also write a flame graph here (a second recording)")
    args = parser.parse_args()
    if args.raw and Path(args.raw).exists() and args.pid is None:
        print(summarise(Path(args.raw)))
        return 0
    for tool in ("wrk", "py-spy"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install -y wrk; pip install py-spy)")
    if args.pid:
        if not args.url:
            raise SystemExit("--pid needs --url")
        raw = record(args.pid, args.url, args)
    else:
        with sandbox(keep=False) as server:
            assert server.pid is not None
            raw = record(server.pid, server.rpc_url, args)
    print(summarise(raw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
