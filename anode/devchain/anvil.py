"""Run a local anvil node: for the integration tests and for ``anode sandbox``.

    with Anvil() as node:           # free port on 127.0.0.1, chain id 31337
        deploy_sandbox(node.rpc_url, [signer_address])

The node listens on 127.0.0.1 only, runs the native binary (not the Node wrapper, which would
leave an orphan behind when stopped) and is stopped with SIGTERM, then SIGKILL, always reaped.
Its stderr goes to a temporary file that is quoted in the error when anvil fails to start.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import httpx

from anode.devchain.artifacts import DevChainSetupError, anvil_binary
from anode.devchain.rpc import DevRpc, RpcError

DEFAULT_CHAIN_ID = 31337
#: anvil's default mnemonic ("test test ... junk"): accounts 0 and 9, used by tests and the sandbox.
DEFAULT_ACCOUNT_KEYS: tuple[str, ...] = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
    "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    """No listener on ``port`` (connections lingering in TIME_WAIT do not count, as for anvil)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class Anvil:
    """A managed anvil process; use as a context manager or call :meth:`start` / :meth:`stop`."""

    def __init__(
        self,
        port: int | None = None,
        chain_id: int = DEFAULT_CHAIN_ID,
        *,
        binary: Path | None = None,
        block_time: float | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 20.0,
    ) -> None:
        self.port = port
        self.chain_id = chain_id
        self._binary = binary
        self._block_time = block_time
        self._extra_args = tuple(extra_args)
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    @property
    def rpc_url(self) -> str:
        if self.port is None:
            raise RuntimeError("anvil has not been started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start anvil and return once it answers ``eth_chainId``; raises if it does not."""
        if self._process is not None:
            raise RuntimeError("anvil is already running")
        if self.port is None:
            self.port = free_port()
        elif not port_is_free(self.port):
            raise DevChainSetupError(f"port {self.port} on 127.0.0.1 is already in use")
        binary = self._binary or anvil_binary()
        args = [str(binary), "--host", "127.0.0.1", "--port", str(self.port)]
        args += ["--chain-id", str(self.chain_id), "--silent"]
        if self._block_time is not None:
            args += ["--block-time", str(self._block_time)]
        args += self._extra_args
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process; closed in stop()
        try:
            self._process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr
            )
        except OSError as exc:
            self._close_stderr()
            raise DevChainSetupError(f"cannot run {binary}: {exc}") from exc
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._startup_timeout
        with DevRpc(self.rpc_url, timeout=2.0) as rpc:
            while True:
                assert self._process is not None
                code = self._process.poll()
                if code is not None:
                    raise DevChainSetupError(f"anvil exited with code {code} at start-up: {self._stderr_text()}")
                try:
                    chain_id = rpc.chain_id()
                except (httpx.TransportError, RpcError):
                    chain_id = None
                if chain_id is not None:
                    if chain_id != self.chain_id:
                        raise DevChainSetupError(
                            f"port {self.port} answers chain id {chain_id}, expected {self.chain_id}; "
                            "is another node listening there?"
                        )
                    return
                if time.monotonic() > deadline:
                    raise DevChainSetupError(
                        f"anvil did not answer on {self.rpc_url} within {self._startup_timeout}s: {self._stderr_text()}"
                    )
                time.sleep(0.05)

    def _stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace").strip()[-2000:] or "(no output)"

    def _close_stderr(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate anvil (SIGTERM, then SIGKILL after ``timeout``) and reap it. Safe to call twice."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            with contextlib.suppress(OSError):
                process.wait()
        self._close_stderr()

    def wait(self) -> int:
        """Block until anvil exits on its own (for a foreground ``anode sandbox``); returns its exit code."""
        if self._process is None:
            raise RuntimeError("anvil has not been started")
        return self._process.wait()
