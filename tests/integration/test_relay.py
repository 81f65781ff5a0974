"""The relay: a wallet uses aNode as its only endpoint, bundler and paymaster alike.

``tests/js/viem_relay.mjs`` points viem's ``createBundlerClient`` and ``createPaymasterClient``
at the same aNode URL (with its API key); aNode answers the paymaster methods and passes the
bundler methods to Alto, which bundles the operation into a real ``handleOps`` on anvil. The
operation aNode sponsored is linked to its ledger row (``sent_at``). The bundler's errors reach
the client as Alto gave them: the same error object through aNode as from Alto directly.
"""

from __future__ import annotations

import itertools
import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from anode.devchain.alto import ANVIL_EXECUTOR_KEYS, ANVIL_UTILITY_KEY, Alto, node_binary
from anode.devchain.anvil import Anvil
from anode.devchain.deploy import Deployment
from anode.store.database import create_engine
from anode.store.tables import sponsorships
from tests.support.onchain import USER_KEY
from tests.support.server import running_server
from tests.support.wallet import Client, paymaster_of, rpc_op, server_config

SCRIPT = Path(__file__).resolve().parents[1] / "js" / "viem_relay.mjs"
CONTRACT, VERSION = "singleton", "v0.7"
API_KEY = "relay-" + secrets.token_hex(16)
_salts = itertools.count(60_000)  # apart from the salts other test modules use


@pytest.fixture(scope="module")
def alto(anvil: Anvil, deployment: Deployment) -> Iterator[Alto]:
    with Alto(anvil.rpc_url, [deployment.entry_points[VERSION]], ANVIL_EXECUTOR_KEYS, ANVIL_UTILITY_KEY) as bundler:
        yield bundler


@pytest.fixture(scope="module")
def server(
    anvil: Anvil, deployment: Deployment, paymaster_key: str, alto: Alto, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, sa.Engine]]:
    """aNode with Alto as its chain's bundler, and an engine on its ledger."""
    url = f"sqlite:///{tmp_path_factory.mktemp('relay') / 'anode.db'}"
    config = server_config(anvil, deployment, paymaster_key, [(CONTRACT, VERSION)])
    config["chains"][0]["bundler_url"] = alto.url
    config.update({"database_url": url, "auth": {"api_keys": [API_KEY]}})
    with running_server(config) as base:
        ledger = create_engine(url)
        yield base, ledger
        ledger.dispose()


def _auth() -> dict[str, str]:
    return {"authorization": f"Bearer {API_KEY}"}


def call(url: str, method: str, params: list[Any]) -> dict[str, Any]:
    reply = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params}, timeout=30)
    answer: dict[str, Any] = reply.json()
    return answer


def run_viem(args: dict[str, Any]) -> dict[str, Any]:
    completed = subprocess.run(
        [str(node_binary()), str(SCRIPT), json.dumps(args)], capture_output=True, text=True, timeout=90, check=False
    )
    lines = completed.stdout.strip().splitlines()
    assert lines, f"viem script printed nothing (exit {completed.returncode}):\n{completed.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    assert completed.returncode == 0 and result["success"], json.dumps(result, indent=2)[-4000:]
    return result


def test_viem_bundler_and_paymaster_clients_both_on_anode_send_through_alto(
    server: tuple[str, sa.Engine], anvil: Anvil, deployment: Deployment
) -> None:
    base, ledger = server
    entry_point = deployment.entry_points[VERSION]
    result = run_viem(
        {
            "rpcUrl": anvil.rpc_url,
            "anodeUrl": f"{base}/api/v1/rpc?apikey={API_KEY}",
            "entryPoint": entry_point,
            "entryPointVersion": VERSION.removeprefix("v"),
            "factory": deployment.factories[VERSION],
            "ownerKey": USER_KEY,
            "salt": next(_salts),
        }
    )
    bundler_calls = {r["method"] for r in result["requests"] if r["transport"] == "bundler"}
    assert {
        "eth_chainId", "eth_supportedEntryPoints", "eth_estimateUserOperationGas", "eth_sendUserOperation",
        "eth_getUserOperationReceipt", "eth_getUserOperationByHash",
    } <= bundler_calls  # fmt: skip
    paymaster_calls = [r["method"] for r in result["requests"] if r["transport"] == "paymaster"]
    assert paymaster_calls == ["pm_getPaymasterStubData", "pm_getPaymasterData"]
    assert result["chainId"] == deployment.chain_id
    assert [ep.lower() for ep in result["supportedEntryPoints"]] == [entry_point.lower()]
    assert result["receiptUserOpHash"] == result["userOpHash"]
    assert result["byHashSender"].lower() == result["sender"].lower()
    assert result["paymaster"].lower() == paymaster_of(deployment, CONTRACT, VERSION).lower()
    # the operation aNode sponsored is linked to its ledger row
    with ledger.connect() as connection:
        (row,) = connection.execute(
            sa.select(sponsorships).where(sponsorships.c.user_op_hash == result["userOpHash"].lower())
        ).mappings()
    assert row["sent_at"] is not None
    reply = httpx.get(f"{base}/api/v1/operations", params={"sender": result["sender"]}, headers=_auth(), timeout=10)
    (shown,) = reply.json()["operations"]
    assert shown["sent_at"] is not None  # the ledger API shows it too


def test_a_bundler_error_reaches_the_client_as_the_bundler_sent_it(
    server: tuple[str, sa.Engine], alto: Alto, anvil: Anvil, deployment: Deployment
) -> None:
    base, _ = server
    entry_point = deployment.entry_points[VERSION]
    wallet = Client(base, anvil, deployment, VERSION)
    unpaid = rpc_op(wallet.new_op(), VERSION)  # no paymaster, no funds, no signature: Alto refuses it
    unpaid["signature"] = "0x" + "00" * 65
    for method, params in (
        ("eth_sendUserOperation", [unpaid, entry_point]),
        ("eth_estimateUserOperationGas", [unpaid, entry_point]),
        ("eth_sendUserOperation", [{"sender": "0x1234"}, entry_point]),
    ):
        direct = call(alto.url, method, params)
        relayed = call(f"{base}/api/v1/rpc?apikey={API_KEY}", method, params)
        assert "error" in direct, direct
        assert relayed["error"] == direct["error"]


def test_the_relay_asks_for_the_same_api_key_and_a_served_chain(server: tuple[str, sa.Engine]) -> None:
    base, _ = server
    anonymous = call(f"{base}/api/v1/rpc", "eth_chainId", [])
    assert anonymous["error"]["data"]["anodeCode"] == "ANODE_UNAUTHORIZED"
    named = call(f"{base}/api/v1/rpc?apikey={API_KEY}&chainId=31337", "eth_chainId", [])
    assert int(named["result"], 16) == 31337
    hexed = call(f"{base}/api/v1/rpc?apikey={API_KEY}&chainId=0x7a69", "eth_chainId", [])
    assert hexed["result"] == named["result"]
    elsewhere = call(f"{base}/api/v1/rpc?apikey={API_KEY}&chainId=10", "eth_chainId", [])
    assert elsewhere["error"]["data"]["anodeCode"] == "ANODE_UNSUPPORTED_CHAIN"
    assert "not served" in elsewhere["error"]["message"]
