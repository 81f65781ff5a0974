"""``anode sandbox``: a local chain with every contract aNode serves, and aNode sponsoring on it.

Starts anvil, deploys EntryPoints v0.6/v0.7/v0.8, SimpleAccountFactories, VerifyingPaymasters
and SingletonPaymasters (signing key: a development key generated once under ``.anode/``),
funds them, starts the Alto bundler for ``pm_sponsorUserOperation``, writes the matching config
(absolute paths only) to ``.anode/sandbox.yaml`` and serves on SQLite.

Both ports are checked before anything starts, so a taken one is one line naming its option;
the URL and the example request are printed only once aNode answers on it. Ctrl-C stops
everything and exits with 130, however the parent shell set SIGINT (``nohup`` and ``&`` start
processes with it ignored).
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from anode.devchain import Anvil, Deployment, DevChainSetupError, deploy_sandbox
from anode.devchain.alto import ANVIL_EXECUTOR_KEYS, ANVIL_UTILITY_KEY, Alto
from anode.devchain.anvil import port_is_free
from anode.errors import ConfigError
from anode.signers.local import LocalKeySigner, generate_dev_key

SANDBOX_CHAIN_ID = 31337
_POLL_S = 0.1


def sandbox_config(
    deployment: Deployment, rpc_url: str, key_hex: str, database_url: str, bundler_url: str | None = None
) -> dict[str, Any]:
    """The config aNode runs with on the sandbox chain (one paymaster per EntryPoint)."""
    chain: dict[str, Any] = {
        "chain_id": deployment.chain_id,
        "rpc_url": rpc_url,
        "paymasters": [
            {
                "entry_point": deployment.entry_points["v0.6"],
                "address": deployment.verifying_paymasters["v0.6"],
                "contract": "verifying",
            },
            {
                "entry_point": deployment.entry_points["v0.7"],
                "address": deployment.verifying_paymasters["v0.7"],
                "contract": "verifying",
            },
            {
                "entry_point": deployment.entry_points["v0.8"],
                "address": deployment.singleton_paymasters["v0.8"],
                "contract": "singleton",
            },
        ],
    }
    if bundler_url is not None:
        chain["bundler_url"] = bundler_url
    return {
        "environment": "development",
        "database_url": database_url,
        "signer": {"type": "local", "private_key": key_hex},
        "chains": [chain],
        "auth": {"api_keys": []},
    }


def example_request(url: str, entry_point: str, chain_id: int) -> str:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "pm_getPaymasterStubData",
        "params": [
            {"sender": "0x" + "11" * 20, "nonce": "0x0", "callData": "0x", "maxFeePerGas": "0x3b9aca00"},
            entry_point,
            hex(chain_id),
            {},
        ],
    }
    return f"curl -s {url}/api/v1/rpc -H 'content-type: application/json' -d '{json.dumps(body)}'"


def run_sandbox(workdir: Path, host: str, port: int, anvil_port: int, workers: int = 1) -> None:
    """Run the sandbox until Ctrl-C (``KeyboardInterrupt``); a setup failure is a :class:`ConfigError`."""
    # started with SIGINT ignored, Python installs no handler and uvicorn restores "ignored" when
    # it stops: Ctrl-C would end the server and exit 0. The sandbox is interactive: Ctrl-C is 130.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    workdir = workdir.resolve()  # the written config must work from any directory
    _check_ports(host, port, anvil_port)
    try:
        _run(workdir, host, port, anvil_port, workers)
    except DevChainSetupError as exc:
        raise ConfigError(f"sandbox: {exc}") from None


def _check_ports(host: str, port: int, anvil_port: int) -> None:
    if port == anvil_port:
        raise ConfigError(f"--port and --anvil-port are both {port}: give them different ports")
    if not port_is_free(anvil_port):
        raise ConfigError(
            f"port {anvil_port} on 127.0.0.1 is already in use (anvil's port): "
            "stop what listens there or pass --anvil-port PORT"
        )
    if not _can_listen(host, port):
        raise ConfigError(
            f"cannot listen on {host}:{port} (aNode's port): it is in use or not an address of this "
            "machine; stop what listens there or pass --port PORT (or --host)"
        )


def _can_listen(host: str, port: int) -> bool:
    """``host:port`` can be bound as uvicorn binds it (connections in TIME_WAIT do not count)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return False
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
            sock.listen()
        except OSError:
            return False
    return True


def _run(workdir: Path, host: str, port: int, anvil_port: int, workers: int) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    key_hex = generate_dev_key(workdir / "dev-key")
    signer = LocalKeySigner.from_hex(key_hex)
    with Anvil(port=anvil_port, chain_id=SANDBOX_CHAIN_ID) as anvil:
        deployment = deploy_sandbox(anvil.rpc_url, [signer.address])
        entry_points = [deployment.entry_points[version] for version in ("v0.6", "v0.7", "v0.8")]
        with Alto(anvil.rpc_url, entry_points, ANVIL_EXECUTOR_KEYS, ANVIL_UTILITY_KEY) as alto:
            _serve(workdir, host, port, workers, anvil, deployment, alto, key_hex, signer.address)


def _serve(
    workdir: Path,
    host: str,
    port: int,
    workers: int,
    anvil: Anvil,
    deployment: Deployment,
    alto: Alto,
    key_hex: str,
    signer_address: str,
) -> None:
    from anode.config import validate_settings
    from anode.serving import serve_settings

    database_url = f"sqlite:///{workdir / 'sandbox.db'}"
    tree = sandbox_config(deployment, anvil.rpc_url, key_hex, database_url, alto.url)
    config_path = workdir / "sandbox.yaml"
    config_path.write_text(yaml.safe_dump(tree, sort_keys=False))
    config_path.chmod(0o600)
    (workdir / "deployment.json").write_text(deployment.to_json())
    print(f"aNode sandbox: chain {deployment.chain_id} at {anvil.rpc_url}")
    print(f"  paymaster signer (development key in {workdir / 'dev-key'}): {signer_address}")
    for version in ("v0.6", "v0.7", "v0.8"):
        print(f"  EntryPoint {version}: {deployment.entry_points[version]}")
        print(f"    SimpleAccountFactory       {deployment.factories[version]}")
        if version in deployment.verifying_paymasters:
            print(f"    VerifyingPaymaster         {deployment.verifying_paymasters[version]}")
        print(f"    SingletonPaymaster         {deployment.singleton_paymasters[version]}")
    print(f"  bundler (Alto, for pm_sponsorUserOperation): {alto.url}")
    print(f"  config: {config_path}   deployment: {workdir / 'deployment.json'}")
    sys.stdout.flush()  # piped (`| tee`, a test), every line must show now, not when the server stops
    url = f"http://{host}:{port}"
    announcement = [
        f"  serving on {url}  (JSON-RPC {url}/api/v1/rpc, docs {url}/docs)",
        "  try:",
        "    " + example_request(url, deployment.entry_points["v0.7"], deployment.chain_id),
    ]
    with _announce_once_serving(_probe_url(host, port), announcement):
        serve_settings(validate_settings(tree), host, port, workers=workers, config_path=config_path)


def _probe_url(host: str, port: int) -> str:
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


@contextlib.contextmanager
def _announce_once_serving(probe: str, lines: list[str]) -> Iterator[None]:
    """Print ``lines`` once aNode answers ``GET probe`` (so the URL printed is aNode's, listening)."""
    stop = threading.Event()

    def watch() -> None:
        with httpx.Client(timeout=1.0) as client:
            while not stop.is_set():
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    if client.get(probe).json().get("name") == "aNode":
                        print("\n".join(lines), flush=True)
                        return
                stop.wait(_POLL_S)

    watcher = threading.Thread(target=watch, name="sandbox-announce", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
