"""``signer: {type: mnemonic}`` — BIP-39 phrase + BIP-44 path, checked against known vectors.

The vectors are anvil's (and Hardhat's) default accounts: the phrase "test test … junk" gives
account 0 at ``m/44'/60'/0'/0/0`` and account 1 at ``…/1``.
"""

from __future__ import annotations

from typing import Any

import pytest

from anode.errors import ConfigError
from anode.signers.mnemonic import MnemonicSigner
from anode.signers.registry import build_signer, signer_settings
from tests.support.signer_contract import SignerContract

ANVIL_PHRASE = "test test test test test test test test test test test junk"
ANVIL_ACCOUNTS = {
    "m/44'/60'/0'/0/0": "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
    "m/44'/60'/0'/0/1": "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
    "m/44'/60'/0'/0/9": "0xa0Ee7A142d267C1f36714E4a8F75612F20a79720",
}
#: a phrase of our own for the contract suite (its address is added to the paymaster on chain)
PHRASE = "legal winner thank year wave sausage worth useful legal winner thank yellow"
PATH = "m/44'/60'/0'/0/7"
PASSPHRASE = "a-bip39-passphrase-nobody-guesses"


class TestMnemonicSigner(SignerContract):
    backend = "mnemonic"

    @pytest.fixture
    def signer_config(self) -> dict[str, Any]:
        return {"type": "mnemonic", "mnemonic": PHRASE, "path": PATH, "passphrase": PASSPHRASE}

    @pytest.fixture
    def signer_env(self) -> dict[str, str]:
        return {}

    @pytest.fixture
    def signer_secrets(self) -> list[str]:
        return [PHRASE, " ".join(PHRASE.split()[:3]), PASSPHRASE]


@pytest.mark.parametrize(("path", "address"), ANVIL_ACCOUNTS.items())
def test_known_vectors(path: str, address: str) -> None:
    signer = build_signer(signer_settings({"type": "mnemonic", "mnemonic": ANVIL_PHRASE, "path": path}))
    assert signer.address == address
    assert signer.backend == "mnemonic"


def test_default_path_is_the_first_ethereum_account() -> None:
    signer = build_signer(signer_settings({"type": "mnemonic", "mnemonic": ANVIL_PHRASE}))
    assert signer.address == ANVIL_ACCOUNTS["m/44'/60'/0'/0/0"]


def test_extra_whitespace_in_the_phrase_is_ignored() -> None:
    messy = "  " + ANVIL_PHRASE.replace(" ", "  \n") + "\n"
    assert MnemonicSigner.derive(messy).address == ANVIL_ACCOUNTS["m/44'/60'/0'/0/0"]


def test_a_passphrase_gives_another_key() -> None:
    assert MnemonicSigner.derive(ANVIL_PHRASE, passphrase="x").address != ANVIL_ACCOUNTS["m/44'/60'/0'/0/0"]


@pytest.mark.parametrize(
    "phrase",
    [
        "test test test test test test test test test test test test",  # bad checksum
        "test test junk",  # too short
        "zebra quokka nonword test test test test test test test test junk",  # not BIP-39 words
    ],
)
def test_an_invalid_phrase_is_a_config_error_that_does_not_echo_it(phrase: str) -> None:
    with pytest.raises(ConfigError) as caught:
        MnemonicSigner.derive(phrase)
    assert "BIP-39" in caught.value.message
    for word in set(phrase.split()) - {"test"}:
        assert word not in caught.value.message
    assert "test test" not in caught.value.message
    assert caught.value.__suppress_context__  # `from None`: a traceback never shows the phrase


@pytest.mark.parametrize("path", ["44'/60'/0'/0/0", "m/44'/60'/0'/0/x", "m/-1"])
def test_a_bad_path_is_a_config_error_naming_the_path(path: str) -> None:
    with pytest.raises(ConfigError, match=r"signer\.path"):
        MnemonicSigner.derive(ANVIL_PHRASE, path)
