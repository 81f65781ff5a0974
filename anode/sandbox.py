"""``anode sandbox``: a local chain with every contract aNode serves, and aNode sponsoring on it.

Starts anvil, deploys EntryPoints v0.6/v0.7/v0.8, SimpleAccountFactories, VerifyingPaymasters
and SingletonPaymasters (signing key: a development key generated once under ``.anode/``),
funds them, deploys a test token (TUSD, 6 decimals) with Chainlink-style TUSD/USD and ETH/USD
feeds for the v0.8 SingletonPaymaster's ERC-20 mode (treasury: anvil's second account, which
holds TUSD and has approved the paymasters), starts the Alto bundler for
``pm_sponsorUserOperation``, writes the matching config (absolute paths only) to
``.anode/sandbox.yaml`` and serves on SQLite.

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
from anode.devchain.deploy import Erc20Deployment, deploy_erc20_sandbox
from anode.errors import ConfigError
from anode.signers.local import LocalKeySigner, generate_dev_key

SANDBOX_CHAIN_ID = 31337
#: anvil's second account: the ERC-20 mode's treasury (receives the tokens, has approved the paymasters)
SANDBOX_TREASURY = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
#: the sandbox's feeds are set once: a week-old round still prices, so a long session keeps working
_SANDBOX_PRICE_MAX_AGE = 7 * 86_400
_POLL_S = 0.1


def sandbox_config(
    deployment: Deployment,
    rpc_url: str,
    key_hex: str,
    database_url: str,
    bundler_url: str | None = None,
    erc20: Erc20Deployment | None = None,
) -> dict[str, Any]:
    """The config aNode runs with on the sandbox chain (one paymaster per EntryPoint; with
    ``erc20``, the v0.8 SingletonPaymaster offers ERC-20 mode in the test token)."""
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
    if erc20 is not None:
        chain["paymasters"][2]["erc20"] = erc20_section(erc20)
    return {
        "environment": "development",
        "database_url": database_url,
        "signer": {"type": "local", "private_key": key_hex},
        "chains": [chain],
        "auth": {"api_keys": []},
        # the follower records what each operation really cost (the dashboard's actual spend)
        "watch": {"enabled": True, "confirmations": 0, "poll_seconds": 1.0},
    }


def erc20_section(erc20: Erc20Deployment) -> dict[str, Any]:
    """The ``erc20:`` section of the v0.8 SingletonPaymaster: the test token, priced by its feeds."""
    price = {
        "source": "chainlink",
        "token_usd_feed": erc20.token_usd_feed,
        "native_usd_feed": erc20.native_usd_feed,
        "max_age_seconds": _SANDBOX_PRICE_MAX_AGE,
    }
    return {
        "treasury": erc20.treasury,
        "markup_percent": 10,
        "quote_valid_seconds": 60,
        "tokens": [{"address": erc20.token, "price": price}],
    }


def example_request(url: str, entry_point: str, chain_id: int, context: dict[str, Any] | None = None) -> str:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "pm_getPaymasterStubData",
        "params": [
            {"sender": "0x" + "11" * 20, "nonce": "0x0", "callData": "0x", "maxFeePerGas": "0x3b9aca00"},
            entry_point,
            hex(chain_id),
            context or {},
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
        erc20 = deploy_erc20_sandbox(anvil.rpc_url, deployment, SANDBOX_TREASURY)
        entry_points = [deployment.entry_points[version] for version in ("v0.6", "v0.7", "v0.8")]
        with Alto(anvil.rpc_url, entry_points, ANVIL_EXECUTOR_KEYS, ANVIL_UTILITY_KEY) as alto:
            _serve(workdir, host, port, workers, anvil, deployment, erc20, alto, key_hex, signer.address)


def _serve(
    workdir: Path,
    host: str,
    port: int,
    workers: int,
    anvil: Anvil,
    deployment: Deployment,
    erc20: Erc20Deployment,
    alto: Alto,
    key_hex: str,
    signer_address: str,
) -> None:
    from anode.config import validate_settings
    from anode.serving import serve_settings

    database_url = f"sqlite:///{workdir / 'sandbox.db'}"
    tree = sandbox_config(deployment, anvil.rpc_url, key_hex, database_url, alto.url, erc20)
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
    print(f"  ERC-20 mode (SingletonPaymaster v0.8, markup 10 %): token {erc20.symbol} {erc20.token}")
    print(f"    {erc20.decimals} decimals, anyone may mint(address,uint256); price feeds (owner: {deployment.owner})")
    print(
        f"    {erc20.symbol}/USD {erc20.token_usd_feed}, ETH/USD {erc20.native_usd_feed}: setAnswer(int256), 8 decimals"
    )
    print(f"    treasury {erc20.treasury} (holds {erc20.symbol}, has approved the paymasters)")
    print(f"  bundler (Alto, for pm_sponsorUserOperation): {alto.url}")
    print(f"  config: {config_path}   deployment: {workdir / 'deployment.json'}")
    sys.stdout.flush()  # piped (`| tee`, a test), every line must show now, not when the server stops
    url = f"http://{host}:{port}"
    announcement = [
        f"  serving on {url}  (JSON-RPC {url}/api/v1/rpc, docs {url}/docs)",
        f"  dashboard: {url}/dashboard  (no login: the sandbox has no API keys)",
        "  try:",
        "    " + example_request(url, deployment.entry_points["v0.7"], deployment.chain_id),
        f"  ERC-20 mode, gas paid in {erc20.symbol} (the sender approves the paymaster for it):",
        "    " + example_request(url, deployment.entry_points["v0.8"], deployment.chain_id, {"token": erc20.token}),
    ]
    follower = _report_follower(database_url, anvil.rpc_url, deployment.chain_id)
    with _announce_once_serving(_probe_url(host, port), announcement), follower:
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


#: seconds between the follower's progress lines (printed only when something changed)
FOLLOWER_REPORT_S = 10.0


@contextlib.contextmanager
def _report_follower(database_url: str, rpc_url: str, chain_id: int) -> Iterator[None]:
    """Print what the follower has done (its block, how far behind the chain's head, operations
    reconciled), read from the sandbox's database, every ``FOLLOWER_REPORT_S`` when it changed."""
    stop = threading.Event()

    def watch() -> None:
        import sqlalchemy as sa

        from anode.store.tables import sponsorships
        from anode.store.watch import watch_cursors

        engine = sa.create_engine(database_url)
        last: str | None = None
        try:
            with httpx.Client(timeout=2.0) as client:
                while not stop.wait(_POLL_S if last is None else FOLLOWER_REPORT_S):
                    with contextlib.suppress(httpx.HTTPError, sa.exc.SQLAlchemyError, ValueError, KeyError):
                        with engine.connect() as connection:
                            block = connection.execute(
                                sa.select(watch_cursors.c.last_block).where(watch_cursors.c.chain_id == chain_id)
                            ).scalar()
                            counts: dict[str, int] = dict(
                                connection.execute(
                                    sa.select(sponsorships.c.status, sa.func.count())
                                    .where(sponsorships.c.status.in_(("included", "expired")))
                                    .group_by(sponsorships.c.status)
                                ).all()
                            )
                        if block is None:
                            continue  # the follower has not read a block yet
                        reply = client.post(rpc_url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber"})
                        line = follower_line(int(block), int(reply.json()["result"], 16), counts)
                        if line != last:
                            print(line, flush=True)
                            last = line
        finally:
            engine.dispose()

    watcher = threading.Thread(target=watch, name="sandbox-follower", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()


def follower_line(block: int, head: int, counts: dict[str, int]) -> str:
    included, expired = counts.get("included", 0), counts.get("expired", 0)
    return (
        f"  follower: block {block}, {max(0, head - block)} behind the head; "
        f"{included + expired} operation(s) reconciled ({included} included, {expired} expired)"
    )
