"""Alto, Pimlico's ERC-4337 bundler, run from ``node_modules`` against a local chain.

aNode estimates gas through a bundler's ``eth_estimateUserOperationGas``; the integration tests
use a real one. :class:`Alto` starts ``node_modules/.bin/alto`` (``@pimlico/alto`` 0.0.20) on
127.0.0.1, waits until it answers ``eth_supportedEntryPoints`` and stops its process group::

    with Alto(anvil.rpc_url, [EP_V07], ANVIL_EXECUTOR_KEYS, ANVIL_UTILITY_KEY) as alto:
        body = {"jsonrpc": "2.0", "id": 1, "method": "eth_estimateUserOperationGas", "params": [op, EP_V07]}
        httpx.post(alto.url, json=body)

What it needs from the chain (more in docs/bundler.md):

- the EntryPoints in ``entry_points`` already deployed (Alto checks their code at start-up);
- the deterministic CREATE2 deployer (anvil has it): at start-up Alto deploys its simulation
  contracts (``PimlicoSimulations``, ``EntryPointSimulations`` 0.7/0.8/0.9) through it from the
  utility account, which therefore needs ETH (its nonce moves; the executors' do not);
- ``eth_call`` with state overrides (anvil has it). Without ``debug_traceCall`` JS tracers the
  ERC-7562 rule checks cannot run, hence ``--safe-mode false``.

Alto 0.0.20 hard-codes ``listen({host: "0.0.0.0"})``; a ``--require`` preload rewrites that one
call to 127.0.0.1, so the bundler is never reachable from outside the machine. The private keys
travel in ``ALTO_*`` environment variables (Alto reads those through yargs), not on the command
line where any local user could read them in ``/proc``. The log (JSON lines) goes to a temporary
file, so no pipe can fill up; a failed start raises :class:`AltoError` quoting its last lines.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import httpx

from anode.devchain.anvil import DEFAULT_ACCOUNT_KEYS, free_port
from anode.devchain.artifacts import DevChainSetupError, find_node_modules

#: anvil's default accounts 5 and 6 sign bundles; account 7 deploys Alto's simulation contracts.
#: Tests and the sandbox use accounts 0-2 and 9, so these never race them for nonces.
ANVIL_EXECUTOR_KEYS: tuple[str, ...] = DEFAULT_ACCOUNT_KEYS[5:7]
ANVIL_UTILITY_KEY: str = DEFAULT_ACCOUNT_KEYS[7]

HOST = "127.0.0.1"
_START_ATTEMPTS = 3  # when we pick the port ourselves and lose the race for it
_STOP_GRACE_S = 5.0
_LOG_TAIL_LINES = 40

# Node preload: bind the one wildcard listen() Alto makes (fastify) to loopback instead.
_BIND_LOOPBACK_JS = """\
"use strict";
const net = require("node:net");
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const opts = args[0];
  if (typeof opts === "object" && opts !== null && (opts.host === "0.0.0.0" || opts.host === "::")) {
    args[0] = { ...opts, host: "127.0.0.1" };
  }
  return listen.apply(this, args);
};
"""


class AltoError(DevChainSetupError):
    """Alto did not start; the message ends with the last lines of its log."""


def alto_cli() -> Path:
    """``node_modules/.bin/alto``, the bundler's entry script."""
    path = find_node_modules() / ".bin" / "alto"
    if not path.exists():
        raise DevChainSetupError(f"{path} not found; run `npm install` in the aNode repository root")
    return path


def node_binary() -> Path:
    node = shutil.which("node")
    if node is None:
        raise DevChainSetupError("`node` is not on PATH; Alto is a Node.js program")
    return Path(node)


class Alto:
    """A running Alto bundler; a context manager (``start()`` / ``stop()`` also work, stop twice too).

    ``entry_points``: EntryPoint addresses, already deployed (Alto 0.0.20 serves v0.6, v0.7,
    v0.8 and v0.9; it tells v0.8/v0.9 apart by their canonical address prefix ``0x433708`` /
    ``0x433709``). ``executor_keys`` sign bundles; ``utility_key`` deploys the simulation contracts.
    ``port=None`` picks a free one. ``extra_args`` go verbatim to Alto, e.g.
    ``["--bundle-mode", "manual", "--enable-debug-endpoints"]``.
    """

    def __init__(
        self,
        rpc_url: str,
        entry_points: Sequence[str],
        executor_keys: Sequence[str],
        utility_key: str,
        port: int | None = None,
        *,
        startup_timeout: float = 60.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        if not entry_points:
            raise ValueError("Alto needs at least one EntryPoint address")
        if not executor_keys:
            raise ValueError("Alto needs at least one executor private key")
        self.rpc_url = rpc_url
        self.entry_points = tuple(entry_points)
        self._executor_keys = tuple(executor_keys)
        self._utility_key = utility_key
        self._requested_port = port
        self._startup_timeout = startup_timeout
        self._extra_args = tuple(extra_args)
        self._port: int | None = None
        self._workdir: Path | None = None
        self._log: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._argv: list[str] = []

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("Alto is not running")
        return self._port

    @property
    def url(self) -> str:
        """The JSON-RPC endpoint (POST; ``/rpc``, ``/v1/rpc`` and ``/v2/rpc`` work too)."""
        return f"http://{HOST}:{self.port}"

    @property
    def argv(self) -> list[str]:
        """The command line of the running Alto (its private keys are in its environment)."""
        return list(self._argv)

    @property
    def log_path(self) -> Path:
        """Alto's stdout and stderr, JSON lines; deleted by :meth:`stop`."""
        if self._workdir is None:
            raise RuntimeError("Alto is not running")
        return self._workdir / "alto.log"

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the log ("" once stopped)."""
        if self._workdir is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> Alto:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> Alto:
        """Start Alto and return once it serves every EntryPoint; raises :class:`AltoError` if not."""
        if self._process is not None:
            raise RuntimeError("Alto is already running")
        attempts = 1 if self._requested_port is not None else _START_ATTEMPTS
        for attempt in range(1, attempts + 1):
            port = self._requested_port if self._requested_port is not None else free_port()
            try:
                self._spawn(port)
                self._wait_until_ready()
            except AltoError as exc:
                tail = self.log_tail()
                self.stop()
                if attempt < attempts and "EADDRINUSE" in tail:
                    continue  # another process took the free port first: pick another one
                raise AltoError(f"{exc}\n--- last lines of the Alto log ---\n{tail}") from None
            except BaseException:
                self.stop()
                raise
            return self
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """SIGTERM Alto's process group (it shuts down gracefully), SIGKILL if it lingers, reap it."""
        process, self._process = self._process, None
        if process is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
                try:
                    process.wait(timeout=_STOP_GRACE_S)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        self._port = None
        self._argv = []

    def _spawn(self, port: int) -> None:
        self._workdir = workdir = Path(tempfile.mkdtemp(prefix="anode-alto-"))
        preload = workdir / "bind-loopback.cjs"
        preload.write_text(_BIND_LOOPBACK_JS)
        self._argv = [
            str(node_binary()), "--require", str(preload), str(alto_cli()),
            "--rpc-url", self.rpc_url,
            "--entrypoints", ",".join(self.entry_points),
            "--port", str(port),
            "--safe-mode", "false",
            "--deploy-simulations-contract", "true",
            "--utility-wallet-monitor", "false",
            "--json",
            "--log-level", "info",
            "--public-client-log-level", "warn",
            "--wallet-client-log-level", "warn",
            *self._extra_args,
        ]  # fmt: skip
        env = {name: value for name, value in os.environ.items() if not name.startswith("ALTO_")}
        env["ALTO_EXECUTOR_PRIVATE_KEYS"] = ",".join(self._executor_keys)
        env["ALTO_UTILITY_PRIVATE_KEY"] = self._utility_key
        self._port = port
        self._log = (workdir / "alto.log").open("wb")
        self._process = subprocess.Popen(
            self._argv,
            cwd=workdir,  # Alto loads `.env` from its working directory: give it an empty one
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() reaches everything it started
        )

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self._startup_timeout
        request = {"jsonrpc": "2.0", "id": 1, "method": "eth_supportedEntryPoints", "params": []}
        wanted = {address.lower() for address in self.entry_points}
        with httpx.Client(timeout=2.0) as client:
            while True:
                code = self._process.poll()
                if code is not None:
                    raise AltoError(f"Alto exited with code {code} during start-up")
                body: Any = None
                with contextlib.suppress(httpx.TransportError, ValueError):
                    body = client.post(self.url, json=request).json()
                if isinstance(body, dict):
                    served = {str(address).lower() for address in body.get("result") or ()}
                    if wanted <= served:
                        return
                    raise AltoError(f"Alto answered eth_supportedEntryPoints with {body}")
                if time.monotonic() > deadline:
                    raise AltoError(f"Alto did not answer on {self.url} within {self._startup_timeout:.0f} s")
                time.sleep(0.1)
