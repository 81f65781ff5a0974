"""``anode sandbox``: a local chain with every contract aNode serves, and aNode sponsoring on it.

Starts anvil, deploys EntryPoints v0.6/v0.7/v0.8, SimpleAccountFactories, VerifyingPaymasters
and SingletonPaymasters (signing key: a development key generated once under ``.anode/``),
funds them, writes the matching config to ``.anode/sandbox.yaml`` and serves on SQLite.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from anode.devchain import Anvil, Deployment, deploy_sandbox
from anode.signers.local import LocalKeySigner, generate_dev_key

SANDBOX_CHAIN_ID = 31337


def sandbox_config(deployment: Deployment, rpc_url: str, key_hex: str, database_url: str) -> dict[str, Any]:
    """The config aNode runs with on the sandbox chain (one paymaster per EntryPoint)."""
    return {
        "environment": "development",
        "database_url": database_url,
        "signer": {"type": "local", "private_key": key_hex},
        "chains": [
            {
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
        ],
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
    from anode.cli import serve_settings
    from anode.config import validate_settings

    workdir.mkdir(parents=True, exist_ok=True)
    key_hex = generate_dev_key(workdir / "dev-key")
    signer = LocalKeySigner.from_hex(key_hex)
    with Anvil(port=anvil_port, chain_id=SANDBOX_CHAIN_ID) as anvil:
        deployment = deploy_sandbox(anvil.rpc_url, [signer.address])
        tree = sandbox_config(deployment, anvil.rpc_url, key_hex, f"sqlite:///{workdir / 'sandbox.db'}")
        config_path = workdir / "sandbox.yaml"
        config_path.write_text(yaml.safe_dump(tree, sort_keys=False))
        config_path.chmod(0o600)
        (workdir / "deployment.json").write_text(deployment.to_json())
        url = f"http://{host}:{port}"
        print(f"aNode sandbox: chain {deployment.chain_id} at {anvil.rpc_url}")
        print(f"  paymaster signer (development key in {workdir / 'dev-key'}): {signer.address}")
        for version in ("v0.6", "v0.7", "v0.8"):
            print(f"  EntryPoint {version}: {deployment.entry_points[version]}")
            print(f"    SimpleAccountFactory       {deployment.factories[version]}")
            if version in deployment.verifying_paymasters:
                print(f"    VerifyingPaymaster         {deployment.verifying_paymasters[version]}")
            print(f"    SingletonPaymaster         {deployment.singleton_paymasters[version]}")
        print(f"  config: {config_path}   deployment: {workdir / 'deployment.json'}")
        print(f"  serving on {url}  (JSON-RPC {url}/api/v1/rpc, docs {url}/docs)")
        print("  try:")
        print("    " + example_request(url, deployment.entry_points["v0.7"], deployment.chain_id))
        sys.stdout.flush()  # piped (`| tee`, a test), the URL must show now, not when the server stops
        serve_settings(validate_settings(tree), host, port, workers=workers, config_path=config_path)
