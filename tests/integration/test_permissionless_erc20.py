"""permissionless.js's ERC-20 paymaster flow, unmodified, against ``anode serve``, through Alto.

``tests/js/permissionless_erc20.mjs`` is what a wallet that pays Pimlico's ERC-20 paymaster
writes: ``createPimlicoClient`` on aNode's URL, ``createSmartAccountClient`` with
``paymasterContext: {token}`` and ``prepareUserOperationForErc20Paymaster``. permissionless asks
aNode for ``pimlico_getTokenQuotes``, approves the paymaster for the maximum cost it computes from
the quote, gets stub and final data from aNode and sends the operation through Alto. Two tokens,
priced by Chainlink-style feeds on anvil with a 10 % markup: one of 18 decimals (0.25 USD) and one
of 6 (1 USD, about 3.3e9 base units per ETH: a charge computed at Alto's estimation fee of 1 wei
rounds to zero, which the stub's constant fee of 1 is there for). The operation must execute, and
the treasury gain exactly ``tokenAmountPaid`` at the rate aNode quoted.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from anode.devchain.alto import ANVIL_EXECUTOR_KEYS, ANVIL_UTILITY_KEY, Alto, node_binary
from anode.devchain.anvil import DEFAULT_ACCOUNT_KEYS, Anvil
from anode.devchain.deploy import Deployment
from tests.integration.test_pricing_onchain import Market
from tests.support.erc20 import balance_of, sponsored_events
from tests.support.onchain import USER_KEY
from tests.support.server import running_server
from tests.support.wallet import server_config

SCRIPT = Path(__file__).resolve().parents[1] / "js" / "permissionless_erc20.mjs"
TREASURY = to_checksum_address(keccak(b"anode permissionless erc20 treasury")[:20])
#: token → (decimals, exchange rate signed: 3000 USD per ETH over the token's USD price, plus 10 %, salt)
TOKENS = {"big": (18, 13_200 * 10**18, 90_001), "usdc": (6, 3_300 * 10**6, 90_002)}


@pytest.fixture(scope="module")
def market(anvil: Anvil) -> Market:
    return Market.deploy(anvil.rpc_url)


@pytest.fixture(scope="module")
def alto(anvil: Anvil, deployment: Deployment) -> Iterator[Alto]:
    entry_points = [deployment.entry_points[v] for v in ("v0.6", "v0.7", "v0.8")]
    with Alto(anvil.rpc_url, entry_points, ANVIL_EXECUTOR_KEYS, ANVIL_UTILITY_KEY) as bundler:
        yield bundler


@pytest.fixture(scope="module")
def server(anvil: Anvil, deployment: Deployment, paymaster_key: str, market: Market) -> Iterator[str]:
    config = server_config(anvil, deployment, paymaster_key, [("singleton", "v0.7")])
    (paymaster,) = config["chains"][0]["paymasters"]
    paymaster["erc20"] = market.settings(markup="10").model_dump(mode="json") | {"treasury": TREASURY}
    with running_server(config) as url:
        yield url


def run_permissionless(args: dict[str, Any]) -> dict[str, Any]:
    completed = subprocess.run(
        [str(node_binary()), str(SCRIPT), json.dumps(args)], capture_output=True, text=True, timeout=90, check=False
    )
    lines = completed.stdout.strip().splitlines()
    assert lines, f"permissionless script printed nothing (exit {completed.returncode}):\n{completed.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(lines[-1])
    assert completed.returncode == 0 and result["success"], json.dumps(result, indent=2)[-4000:]
    return result


@pytest.mark.parametrize("name", list(TOKENS))
def test_permissionless_pays_in_a_token_at_the_rate_anode_quoted(
    server: str, alto: Alto, anvil: Anvil, deployment: Deployment, market: Market, name: str
) -> None:
    paymaster = deployment.singleton_paymasters["v0.7"]
    decimals, signed_rate, salt = TOKENS[name]
    token_address = market.big if name == "big" else market.usdc
    minted = 1000 * 10**decimals
    result = run_permissionless(
        {
            "rpcUrl": anvil.rpc_url,
            "bundlerUrl": alto.url,
            "paymasterUrl": f"{server}/api/v1/rpc",
            "entryPoint": deployment.entry_points["v0.7"],
            "factory": deployment.factories["v0.7"],
            "ownerKey": USER_KEY,
            "salt": salt,
            "token": token_address,
            "funderKey": DEFAULT_ACCOUNT_KEYS[0],
            "minted": hex(minted),
        }
    )

    # permissionless asked aNode for a quote, then stub and final data in ERC-20 mode
    methods = [request["method"] for request in result["paymasterRequests"]]
    assert methods[0] == "pimlico_getTokenQuotes" and methods[-1] == "pm_getPaymasterData", methods
    assert "pm_getPaymasterStubData" in methods
    for request in result["paymasterRequests"]:
        if request["method"].startswith("pm_"):
            assert request["params"][3] == {"token": token_address}
    quote = result["quote"]
    assert to_checksum_address(quote["paymaster"]) == paymaster
    assert int(quote["exchangeRate"], 16) == signed_rate

    # it approved the paymaster for the maximum it computed from that quote, in the signed operation
    approved = result["approved"]
    assert (approved["token"].lower(), approved["functionName"]) == (token_address.lower(), "approve")
    spender, amount = approved["args"][0], int(approved["args"][1], 16)
    assert to_checksum_address(spender) == paymaster and amount > 0

    # executed: the treasury got exactly what postOp charged, at the quoted rate, within the approval
    assert to_checksum_address(result["paymaster"]) == paymaster
    ((mode, token, paid, rate),) = sponsored_events(anvil, result["transactionHash"], paymaster)
    assert (mode, token, rate) == (1, token_address, signed_rate)
    assert 0 < paid <= amount
    assert balance_of(anvil, token_address, TREASURY) == paid
    assert balance_of(anvil, token_address, result["sender"]) == minted - paid
