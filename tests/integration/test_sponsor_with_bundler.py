"""``pm_sponsorUserOperation`` against a real bundler: Alto estimates, aNode signs, the EntryPoint pays.

aNode runs as a server process with ``bundler_url`` pointing at Alto (itself on anvil with the
real contracts). The operation goes in with no gas fields at all; what comes back must be enough
for ``handleOps`` to succeed, for every supported paymaster pair.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest

from anode.devchain.alto import ANVIL_EXECUTOR_KEYS, ANVIL_UTILITY_KEY, Alto
from anode.devchain.anvil import Anvil
from anode.devchain.deploy import Deployment
from tests.support.server import rpc, running_server
from tests.support.wallet import PAIRS, Client, rpc_op, server_config, with_paymaster

_GAS_FIELDS = ("callGasLimit", "verificationGasLimit", "preVerificationGas")


@pytest.fixture(scope="module")
def alto(anvil: Anvil, deployment: Deployment) -> Iterator[Alto]:
    entry_points = [deployment.entry_points[v] for v in ("v0.6", "v0.7", "v0.8")]
    with Alto(anvil.rpc_url, entry_points, ANVIL_EXECUTOR_KEYS, ANVIL_UTILITY_KEY) as bundler:
        yield bundler


@pytest.fixture(scope="module")
def servers(
    anvil: Anvil, deployment: Deployment, paymaster_key: str, alto: Alto
) -> Iterator[dict[tuple[str, str], str]]:
    first = [("verifying", "v0.6"), ("verifying", "v0.7"), ("singleton", "v0.8")]
    second = [("singleton", "v0.6"), ("singleton", "v0.7")]
    configs = []
    for pairs in (first, second):
        config = server_config(anvil, deployment, paymaster_key, pairs)
        config["chains"][0]["bundler_url"] = alto.url
        configs.append(config)
    with running_server(configs[0]) as a, running_server(configs[1]) as b:
        yield {**dict.fromkeys(first, a), **dict.fromkeys(second, b)}


def _unestimated(client: Client) -> tuple[Any, dict[str, Any]]:
    op = client.new_op()
    fields = rpc_op(op, client.version)
    for name in _GAS_FIELDS:
        del fields[name]
    return op, fields


@pytest.mark.parametrize("pair", PAIRS, ids=[f"{c}-{v}" for c, v in PAIRS])
@pytest.mark.parametrize("method", ["pm_sponsorUserOperation", "anode_sponsorUserOperation"])
def test_bundler_estimated_sponsorship_executes_on_chain(
    pair: tuple[str, str], method: str, servers: dict[tuple[str, str], str], anvil: Anvil, deployment: Deployment
) -> None:
    client = Client(servers[pair], anvil, deployment, pair[1])
    op, fields = _unestimated(client)
    reply = rpc(client.url, method, [fields, client.entry_point])
    assert "result" in reply, reply
    result = reply["result"]
    gas = {name: int(result[name], 16) for name in _GAS_FIELDS}
    assert gas["verificationGasLimit"] > 100_000  # the account is deployed in validation
    assert gas["preVerificationGas"] > 20_000
    if method == "anode_sponsorUserOperation":
        assert result["userOpHash"].startswith("0x") and int(result["validUntil"], 16) > 0
    estimated = replace(
        op,
        call_gas_limit=gas["callGasLimit"],
        verification_gas_limit=gas["verificationGasLimit"],
        pre_verification_gas=gas["preVerificationGas"],
    )
    outcome = client.submit(with_paymaster(estimated, client.version, result))
    assert outcome.success, outcome.reason


def test_rest_sponsor_estimates_when_gas_is_missing(
    servers: dict[tuple[str, str], str], anvil: Anvil, deployment: Deployment
) -> None:
    client = Client(servers[("verifying", "v0.7")], anvil, deployment, "v0.7")
    op, fields = _unestimated(client)
    body = {"userOperation": fields, "entryPoint": client.entry_point, "chainId": deployment.chain_id}
    reply = httpx.post(f"{client.url}/api/v1/paymaster/sponsor", json=body, timeout=30)
    assert reply.status_code == 200, reply.text
    result = reply.json()
    estimated = replace(
        op,
        call_gas_limit=int(result["callGasLimit"], 16),
        verification_gas_limit=int(result["verificationGasLimit"], 16),
        pre_verification_gas=int(result["preVerificationGas"], 16),
    )
    outcome = client.submit(with_paymaster(estimated, "v0.7", result))
    assert outcome.success, outcome.reason


def test_a_bundler_rejection_is_reported_with_its_reason(
    servers: dict[tuple[str, str], str], anvil: Anvil, deployment: Deployment
) -> None:
    client = Client(servers[("verifying", "v0.7")], anvil, deployment, "v0.7")
    _, fields = _unestimated(client)
    fields["factoryData"] = "0xdeadbeef"  # the factory cannot create the account: AA13
    reply = rpc(client.url, "pm_sponsorUserOperation", [fields, client.entry_point])
    assert reply["error"]["code"] == -32500
    assert "bundler refused" in reply["error"]["message"]
