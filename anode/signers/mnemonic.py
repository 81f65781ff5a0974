"""``signer: {type: mnemonic}``: a key derived from a BIP-39 phrase along a BIP-44 path.

The phrase (and optional BIP-39 passphrase) are secrets: put them in the environment
(``ANODE_SIGNER__MNEMONIC``) rather than the file. The key is derived once at start-up with
eth-account's HD wallet code (``eth_account.hdaccount``, what ``Account.from_mnemonic`` runs,
called directly so that no process-wide "unaudited features" switch is flipped) and then signs
in process exactly like ``local``. The default path is the first account of the usual Ethereum
wallet, ``m/44'/60'/0'/0/0``.
"""

from __future__ import annotations

from eth_account.hdaccount import ETHEREUM_DEFAULT_PATH, key_from_seed, seed_from_mnemonic
from eth_utils.exceptions import ValidationError
from pydantic import SecretStr

from anode.errors import ConfigError
from anode.signers.local import LocalKeySigner
from anode.signers.registry import SignerSettingsBase


class Settings(SignerSettingsBase):
    mnemonic: SecretStr
    path: str = ETHEREUM_DEFAULT_PATH
    passphrase: SecretStr = SecretStr("")


class MnemonicSigner(LocalKeySigner):
    """A key derived from a BIP-39 phrase, held in process memory like ``local``."""

    backend = "mnemonic"

    @classmethod
    def derive(cls, phrase: str, path: str = ETHEREUM_DEFAULT_PATH, passphrase: str = "") -> MnemonicSigner:
        # eth-account's errors quote the phrase back: replace them, and chain nothing
        try:
            seed = seed_from_mnemonic(" ".join(phrase.split()), passphrase)
        except (ValidationError, ValueError):
            raise ConfigError(
                "signer.mnemonic is not a valid BIP-39 phrase (check its words and their count)"
            ) from None
        try:
            key = key_from_seed(seed, path)
        except (ValidationError, ValueError):
            raise ConfigError(f"signer.path {path!r} is not a BIP-32 path like m/44'/60'/0'/0/0") from None
        return cls(key)


def build(settings: Settings) -> MnemonicSigner:
    return MnemonicSigner.derive(
        settings.mnemonic.get_secret_value(), settings.path, settings.passphrase.get_secret_value()
    )
