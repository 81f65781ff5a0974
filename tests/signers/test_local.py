"""The in-process backends, ``local`` and ``keystore``, run the same contract as the others.

Their own edge cases (bad hex, wrong passwords, KDFs) are in ``tests/unit/test_signers.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from tests.support.signer_contract import SignerContract

LOCAL_KEY = "0x" + "5eed" * 16
KEYSTORE_KEY = "0x" + "c0ffee01" * 8
PASSWORD = "keystore-password-under-test"


class TestLocalSigner(SignerContract):
    backend = "local"

    @pytest.fixture
    def signer_config(self) -> dict[str, Any]:
        return {"type": "local", "private_key": LOCAL_KEY}

    @pytest.fixture
    def signer_env(self) -> dict[str, str]:
        return {}

    @pytest.fixture
    def signer_secrets(self) -> list[str]:
        return [LOCAL_KEY[2:], LOCAL_KEY[2:].upper()]


@pytest.fixture(scope="module")
def keystore(tmp_path_factory: pytest.TempPathFactory) -> Path:
    document = Account.encrypt(KEYSTORE_KEY, PASSWORD, kdf="pbkdf2", iterations=2)  # type: ignore[arg-type]
    path = tmp_path_factory.mktemp("keystore") / "key.json"
    path.write_text(json.dumps(document))
    return path


class TestKeystoreSigner(SignerContract):
    backend = "keystore"

    @pytest.fixture
    def signer_config(self, keystore: Path) -> dict[str, Any]:
        return {"type": "keystore", "keystore_path": str(keystore), "password_env": "TEST_KEYSTORE_PASSWORD"}

    @pytest.fixture
    def signer_env(self) -> dict[str, str]:
        return {"TEST_KEYSTORE_PASSWORD": PASSWORD}

    @pytest.fixture
    def signer_secrets(self) -> list[str]:
        return [KEYSTORE_KEY[2:], PASSWORD]
