"""Run ``anode serve`` as a real process on a free port, for tests that talk HTTP to it."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from anode.devchain.anvil import free_port


@contextmanager
def running_server(
    config: dict[str, Any], *, env: dict[str, str] | None = None, workers: int | str = 1
) -> Iterator[str]:
    """Start ``anode serve --config`` with ``config``; yield its base URL; stop it afterwards."""
    with tempfile.TemporaryDirectory(prefix="anode-server-") as tmp:
        path = Path(tmp) / "config.yaml"
        tree = dict(config)
        tree.setdefault("database_url", f"sqlite:///{Path(tmp) / 'anode.db'}")
        path.write_text(yaml.safe_dump(tree))
        port = free_port()
        log_path = Path(tmp) / "server.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "anode.cli",
                    "serve",
                    "--config",
                    str(path),
                    "--port",
                    str(port),
                    "--workers",
                    str(workers),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(url, process, log_path)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 90  # two workers on a loaded machine: imports and migrations take a while
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"anode serve exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/openapi.json", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"anode serve did not start in time:\n{log_path.read_text()[-3000:]}")


def rpc(url: str, method: str, params: list[Any], *, api_key: str | None = None) -> Any:
    """One JSON-RPC call; returns the whole reply (``result`` or ``error``)."""
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    reply = httpx.post(
        f"{url}/api/v1/rpc", json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}, headers=headers
    )
    return reply.json()
