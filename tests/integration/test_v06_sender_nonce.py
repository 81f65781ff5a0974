"""The v0.6 VerifyingPaymaster's ``senderNonce``, through a running ``anode serve`` and the real EntryPoint.

That paymaster hashes ``senderNonce[sender]`` into what it signs and increments it in
``validatePaymasterUserOp``, so every sponsored operation of a sender must be signed against the
nonce *as it stands on chain when the operation executes*. Other on-chain tests use a new account
each time (``senderNonce`` 0), which a server that hard-codes 0 would also pass; here one sender
sends two operations:

- the first (deploy and call) is sponsored and executes: ``senderNonce`` becomes 1;
- paymaster data for the second signed *before* the first executed is refused on chain with AA34
  (the contract's replay protection: documented in ``docs/operations.md``);
- the same second operation, sponsored again now, is signed over ``senderNonce`` 1 and executes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from anode.devchain.anvil import Anvil
from anode.devchain.deploy import Deployment
from tests.support.onchain import USER_ADDRESS, UserOp, call_contract, execute_calldata, get_nonce
from tests.support.server import running_server
from tests.support.wallet import Client, paymaster_of, server_config, with_paymaster

VERSION = "v0.6"


@pytest.fixture(scope="module")
def server(anvil: Anvil, deployment: Deployment, paymaster_key: str) -> Iterator[str]:
    with running_server(server_config(anvil, deployment, paymaster_key, [("verifying", VERSION)])) as url:
        yield url


def sender_nonce(anvil: Anvil, paymaster: str, sender: str) -> int:
    (nonce,) = call_contract(anvil.rpc_url, paymaster, "senderNonce(address)", ["address"], [sender], ["uint256"])
    return int(nonce)


def sponsored(client: Client, op: UserOp) -> UserOp:
    """``op`` with the final paymaster data aNode signs for it now."""
    return with_paymaster(op, VERSION, client.call("pm_getPaymasterData", op))


def test_a_second_operation_of_one_sender_is_signed_over_the_current_sender_nonce(
    server: str, anvil: Anvil, deployment: Deployment
) -> None:
    client = Client(server, anvil, deployment, VERSION)
    paymaster = paymaster_of(deployment, "verifying", VERSION)

    first, _, _ = client.sponsor()
    sender = first.sender
    assert sender_nonce(anvil, paymaster, sender) == 0
    # the wallet's next operation (the account exists by then: no initCode), signed too early
    second = UserOp(sender=sender, nonce=1, call_data=execute_calldata(USER_ADDRESS, 0, b"\x02"))
    signed_too_early = sponsored(client, second)

    outcome = client.submit(first)
    assert outcome.success, outcome.reason
    assert get_nonce(anvil.rpc_url, client.entry_point, sender) == 1
    assert sender_nonce(anvil, paymaster, sender) == 1

    # replay protection: data signed over senderNonce 0 no longer verifies
    stale = client.submit(signed_too_early)
    assert not stale.success
    assert stale.reason is not None and stale.reason.startswith("AA34"), stale.reason

    # asked again now, aNode reads senderNonce 1 and the operation executes
    fresh = sponsored(client, second)
    assert fresh.paymaster_data != signed_too_early.paymaster_data
    outcome = client.submit(fresh)
    assert outcome.success, outcome.reason
    (event,) = outcome.events
    assert event.sender == sender and event.nonce == 1 and event.paymaster == paymaster
    assert sender_nonce(anvil, paymaster, sender) == 2

    # and a third, sponsored after the second executed, is signed over senderNonce 2
    third = sponsored(client, replace(second, nonce=2, call_data=execute_calldata(USER_ADDRESS, 0, b"\x03")))
    outcome = client.submit(third)
    assert outcome.success, outcome.reason
    assert sender_nonce(anvil, paymaster, sender) == 3
