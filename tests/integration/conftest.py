"""Fixtures for tests against a real chain: one anvil and one sandbox deployment per session.

Every test under ``tests/integration`` gets the ``chain`` marker (``pytest -m "not chain"`` skips
them) and is skipped, with the reason shown, when ``node_modules`` has not been installed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from eth_account import Account

from anode.devchain.anvil import DEFAULT_ACCOUNT_KEYS, Anvil
from anode.devchain.deploy import Deployment, deploy_sandbox

#: anvil account 9 (0xa0Ee7A142d267C1f36714E4a8F75612F20a79720) signs for every test paymaster.
PAYMASTER_KEY = DEFAULT_ACCOUNT_KEYS[9]


@pytest.fixture(scope="session")
def anvil() -> Iterator[Anvil]:
    with Anvil() as node:
        yield node


@pytest.fixture(scope="session")
def paymaster_key() -> str:
    """Private key (hex) of the paymaster signer the sandbox deployment trusts."""
    return PAYMASTER_KEY


@pytest.fixture(scope="session")
def paymaster_address(paymaster_key: str) -> str:
    return str(Account.from_key(paymaster_key).address)


@pytest.fixture(scope="session")
def deployment(anvil: Anvil, paymaster_address: str) -> Deployment:
    return deploy_sandbox(anvil.rpc_url, [paymaster_address])
