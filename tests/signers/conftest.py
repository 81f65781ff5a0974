"""Fixtures for the signer backends' contract suites (``tests/support/signer_contract.py``).

Each backend's on-chain test needs anvil and the sandbox deployment: they get the ``chain``
marker and are skipped, with the reason shown, when ``node_modules`` is not installed. The other
contract tests need only the backend itself (moto's KMS server, a SoftHSM2 token, nothing).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from eth_account import Account

from anode.devchain.anvil import DEFAULT_ACCOUNT_KEYS, Anvil
from anode.devchain.deploy import Deployment, deploy_sandbox
from tests.signers.softhsm import SoftHsm, softhsm_token
from tests.signers.softhsm import available as softhsm_available


@pytest.fixture(scope="session")
def anvil() -> Iterator[Anvil]:
    with Anvil() as node:
        yield node


@pytest.fixture(scope="session")
def deployment(anvil: Anvil) -> Deployment:
    """The sandbox contracts; anvil account 9 is their first signer, each backend is added to V7's."""
    return deploy_sandbox(anvil.rpc_url, [Account.from_key(DEFAULT_ACCOUNT_KEYS[9]).address])


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """One initialised SoftHSM2 token for the whole session (see ``tests/signers/softhsm.py``)."""
    reason = softhsm_available()
    if reason is not None:
        pytest.skip(reason)
    with softhsm_token(tmp_path_factory.mktemp("softhsm")) as hsm:
        yield hsm
