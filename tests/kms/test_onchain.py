"""End to end on anvil: a SimpleAccount whose owner key was generated inside SoftHSM2 by the KMS
executes an operation through the real EntryPoint, paid by aNode's paymaster (a real ``anode
serve``), with the owner signature the KMS gave once the passkey and the paymaster agreed.

The account's address is the one ``/aa/create-account`` answered before anything was deployed:
the EntryPoint deploys it there (through the factory data the KMS gave) or the operation fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest

from anode.devchain.anvil import DEFAULT_ACCOUNT_KEYS, Anvil
from anode.devchain.deploy import Deployment
from anode.devchain.rpc import DevRpc
from anode.kms.service import KmsService
from tests.kms.authenticator import SoftAuthenticator
from tests.kms.harness import Wallet
from tests.support.onchain import handle_ops
from tests.support.server import running_server
from tests.support.wallet import Client, server_config, with_paymaster

PAIRS = [("verifying", "v0.6"), ("verifying", "v0.7"), ("singleton", "v0.8")]


@pytest.fixture(scope="module")
def anode_url(anvil: Anvil, deployment: Deployment) -> Iterator[str]:
    with running_server(server_config(anvil, deployment, DEFAULT_ACCOUNT_KEYS[9], PAIRS)) as url:
        yield url


@pytest.mark.parametrize(("contract", "version"), PAIRS)
async def test_an_account_owned_by_an_hsm_key_executes_an_operation(
    kms: tuple[httpx.AsyncClient, KmsService], anvil: Anvil, deployment: Deployment, anode_url: str,
    contract: str, version: str,
) -> None:  # fmt: skip
    wallet = Wallet(kms[0], anvil, deployment, version, f"onchain-{version}")
    account = await wallet.create()
    with DevRpc(anvil.rpc_url) as rpc:
        assert rpc.call("eth_getCode", account["address"], "latest") == "0x"
    passkey = SoftAuthenticator()
    await wallet.register(passkey)

    op = wallet.new_op()
    sponsored = Client(anode_url, anvil, deployment, version).call("pm_getPaymasterData", op)
    op = with_paymaster(op, version, sponsored)
    reply = await wallet.sign(await wallet.prepare(passkey, op))
    assert reply.status_code == 200, reply.text
    signed = replace(op, signature=bytes.fromhex(reply.json()["signature"][2:]))

    result = handle_ops(anvil.rpc_url, wallet.entry_point, version, [signed.to_tuple(version)])
    assert result.success, result.reason
    assert (result.events[0].sender, result.events[0].paymaster) == (account["address"], op.paymaster)
    with DevRpc(anvil.rpc_url) as rpc:
        assert rpc.call("eth_getCode", account["address"], "latest") != "0x"
