"""ERC-20 mode and the rest of the pipeline, on anvil with the real SingletonPaymaster V7:

- a policy with ``mode: erc20`` / ``tokens: [...]`` applies to ERC-20 operations only (its
  per-transaction cap refuses them; verifying-mode operations never meet it), and its amount
  limit counts the native gas the sponsor risks;
- a price the book may not sign on (a stale feed round) refuses the operation with the book's
  code, in every ERC-20 method, and nothing is signed;
- ``erc20:`` on a paymaster that is not a SingletonPaymaster is refused at start-up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from anode.config import validate_settings
from anode.devchain.anvil import Anvil
from anode.devchain.deploy import Deployment
from anode.devchain.rpc import DevRpc
from anode.errors import ConfigError, PriceStale
from anode.pricing.base import TokenQuote
from anode.sponsorship_erc20 import TokenMode
from anode.wiring import Anode, build
from tests.contracts.solidity import compiled
from tests.support.asgi import client_of
from tests.support.erc20 import approve_paymaster, mint
from tests.support.server import rpc, running_server
from tests.support.wallet import Client, rpc_op, server_config

VERSION = "v0.7"
TREASURY = to_checksum_address(keccak(b"anode erc20 policy test treasury")[:20])


@pytest.fixture(scope="module")
def token(anvil: Anvil) -> str:
    with DevRpc(anvil.rpc_url) as node:
        receipt = node.transact(node.accounts()[0], None, compiled()["PointsToken"].creation_code())
    return to_checksum_address(receipt["contractAddress"])


def _config(anvil: Anvil, deployment: Deployment, key: str, token: str) -> dict[str, Any]:
    config = server_config(anvil, deployment, key, [("singleton", VERSION)])
    config["chains"][0]["paymasters"][0]["erc20"] = {
        "treasury": TREASURY,
        "tokens": [{"address": token, "price": {"source": "fixed", "tokens_per_native": "3000"}}],
    }
    return config


@pytest.fixture(scope="module")
def server(anvil: Anvil, deployment: Deployment, paymaster_key: str, token: str) -> Iterator[str]:
    config = _config(anvil, deployment, paymaster_key, token)
    config["pipeline"] = {"modules": [{"name": "policy_engine"}, {"name": "paymaster_signer"}]}
    config["policies"] = [
        {"id": "gas-sponsored", "name": "sponsored gas", "type": "project", "mode": "verifying"},
        {
            "id": "token-ops",
            "name": "token operations",
            "type": "project",
            "mode": "erc20",
            "tokens": [token],
            "priority": 10,
            "rate_limits": [{"type": "per_transaction", "limit": "0.001 ether"}],
        },
        {  # any ERC-20 operation: verifying-mode ones (at 2 gwei) never meet its price cap
            "id": "erc20-gas-price",
            "name": "token operations, cheap gas",
            "type": "project",
            "mode": "erc20",
            "rate_limits": [{"type": "gas_price", "limit": "1 gwei"}],
        },
        {  # another token's operations: none of this module's
            "id": "other-token",
            "name": "another token",
            "type": "project",
            "tokens": ["0x" + "42" * 20],
            "rate_limits": [{"type": "per_transaction", "limit": "1"}],
        },
    ]
    with running_server(config) as url:
        yield url


@pytest.fixture
def client(server: str, anvil: Anvil, deployment: Deployment) -> Client:
    return Client(server, anvil, deployment, VERSION)


def test_a_policy_on_mode_and_token_applies_to_erc20_operations_only(client: Client, token: str) -> None:
    paymaster = client.deployment.singleton_paymasters[VERSION]
    op = replace(client.new_op(), call_data=approve_paymaster(token, paymaster))
    mint(client.anvil, token, op.sender, 1000 * 10**18)
    # verifying mode: the token policy does not apply, the verifying one sponsors
    client.call("pm_getPaymasterData", op, {})
    # ERC-20 mode: the token policy applies; its cap counts the native gas the sponsor risks
    params = [rpc_op(op, VERSION), client.entry_point, "0x7a69", {"token": token}]
    reply = rpc(client.url, "pm_getPaymasterData", params)
    assert reply["error"]["data"]["anodeCode"] == "ANODE_013_PER_TRANSACTION_LIMIT", reply
    assert "token operations" in reply["error"]["message"]
    assert int(reply["error"]["data"]["maxGasCost"]) > 10**15  # wei, not tokens
    cheap = replace(op, max_fee_per_gas=10**8, max_priority_fee_per_gas=10**8)  # under 0.001 ether at most
    client.call("pm_getPaymasterData", cheap, {"token": token})


class StaleBook:
    """A price book whose feed round has gone stale (the book's own refusal)."""

    def __init__(self, token: str) -> None:
        self.token = token

    def tokens(self, chain_id: int, paymaster: bytes) -> list[str]:
        return [self.token]

    async def quote(self, chain_id: int, paymaster: bytes, token: bytes) -> TokenQuote:
        raise PriceStale(
            f"the price of token {self.token} rests on a feed round older than max_age_seconds",
            data={"token": self.token},
        )


@pytest.fixture
async def stale(
    tmp_path: Path, anvil: Anvil, deployment: Deployment, paymaster_key: str, token: str
) -> AsyncIterator[Anode]:
    config = _config(anvil, deployment, paymaster_key, token)
    config["database_url"] = f"sqlite:///{tmp_path / 'anode.db'}"
    v08 = server_config(anvil, deployment, paymaster_key, [("singleton", "v0.8")])["chains"][0]["paymasters"]
    config["chains"][0]["paymasters"] += v08  # no erc20: section
    node = build(validate_settings(config))
    assert node.service.tokens is not None
    node.service.tokens = TokenMode(StaleBook(token), node.service.tokens.paymasters)
    yield node
    await node.aclose()


async def test_a_stale_price_refuses_every_erc20_method_and_signs_nothing(
    stale: Anode, anvil: Anvil, deployment: Deployment, token: str
) -> None:
    op = Client("", anvil, deployment, VERSION).new_op()
    entry_point = deployment.entry_points[VERSION]
    calls = [
        ("pm_getPaymasterStubData", [rpc_op(op, VERSION), entry_point, "0x7a69", {"token": token}]),
        ("pm_getPaymasterData", [rpc_op(op, VERSION), entry_point, "0x7a69", {"token": token}]),
        ("pimlico_getTokenQuotes", [{"tokens": [token]}, entry_point, "0x7a69"]),
    ]
    async with client_of(stale, None) as http:
        for method, params in calls:
            reply = (
                await http.post("/api/v1/rpc", json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
            ).json()
            assert reply["error"]["data"]["anodeCode"] == "ANODE_PRICE_STALE", (method, reply)
            assert reply["error"]["code"] == -32603
        body = {"userOperation": rpc_op(op, VERSION), "entryPoint": entry_point, "chainId": 31337,
                "context": {"type": "erc20", "token": token}}  # fmt: skip
        reply = await http.post("/api/v1/paymaster/erc20", json=body)
        assert reply.status_code == 503
        assert reply.json()["error"]["code"] == "ANODE_PRICE_STALE"
        # verifying mode does not need a price
        plain = {"jsonrpc": "2.0", "id": 1, "method": "pm_getPaymasterData",
                 "params": [rpc_op(op, VERSION), entry_point, "0x7a69", {}]}  # fmt: skip
        assert "result" in (await http.post("/api/v1/rpc", json=plain)).json()
    assert [row["mode"] for row in await stale.ledger.find()] == ["verifying"]


async def test_erc20_mode_of_a_paymaster_without_it_and_malformed_tokens_are_refused(
    stale: Anode, anvil: Anvil, deployment: Deployment, token: str
) -> None:
    op = Client("", anvil, deployment, "v0.8").new_op()
    v08, v07 = deployment.entry_points["v0.8"], deployment.entry_points[VERSION]
    calls = {
        "ANODE_ERC20_NOT_CONFIGURED": ("pm_getPaymasterData", [rpc_op(op, "v0.8"), v08, "0x7a69", {"token": token}]),
        "ANODE_INVALID_PARAMS": ("pimlico_getTokenQuotes", [{"tokens": ["0x12"]}, v07, "0x7a69"]),
    }
    errors = {}
    async with client_of(stale, None) as http:
        for code, (method, params) in calls.items():
            call = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
            error = errors[code] = (await http.post("/api/v1/rpc", json=call)).json()["error"]
            assert (error["data"]["anodeCode"], error["code"]) == (code, -32602), error
    # the paymasters that have ERC-20 mode are named; the malformed token by its place
    assert errors["ANODE_ERC20_NOT_CONFIGURED"]["data"]["paymasters"] == [deployment.singleton_paymasters[VERSION]]
    assert "tokens[0]" in errors["ANODE_INVALID_PARAMS"]["message"]


def test_erc20_on_a_verifying_paymaster_is_refused_at_start_up(
    tmp_path: Path, anvil: Anvil, deployment: Deployment, paymaster_key: str, token: str
) -> None:
    config = server_config(anvil, deployment, paymaster_key, [("verifying", "v0.7")])
    config["database_url"] = f"sqlite:///{tmp_path / 'anode.db'}"
    config["chains"][0]["paymasters"][0]["erc20"] = {
        "treasury": TREASURY,
        "tokens": [{"address": token, "price": {"source": "fixed", "tokens_per_native": "3000"}}],
    }
    with pytest.raises(ConfigError, match="erc20: needs contract: singleton"):
        build(validate_settings(config))
