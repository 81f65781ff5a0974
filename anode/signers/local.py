"""In-process keys: a hex private key (development) and an encrypted JSON keystore (V3).

Both sign with coincurve (libsecp256k1), which produces canonical low-s signatures. The key is
held as a coincurve object only; neither ``repr`` nor any error shows it.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import orjson
from coincurve import PrivateKey
from eth_account import Account
from pydantic import SecretStr

from anode.errors import ConfigError
from anode.signers.base import SignedDigest
from anode.signers.ecdsa import address_of_point
from anode.signers.registry import SignerSettingsBase


def address_of(key: PrivateKey) -> str:
    return address_of_point(key.public_key.format(compressed=False))


class LocalKeySigner:
    """A raw secp256k1 key in process memory."""

    backend = "local"

    def __init__(self, private_key: bytes) -> None:
        if len(private_key) != 32:
            raise ConfigError("signer.private_key must be 32 bytes of hex (64 hex digits)")
        try:
            self._key = PrivateKey(private_key)
        except ValueError:
            raise ConfigError("signer.private_key is not a valid secp256k1 key") from None
        self._address = address_of(self._key)

    @classmethod
    def from_hex(cls, value: str) -> LocalKeySigner:
        text = value[2:] if value.startswith(("0x", "0X")) else value
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise ConfigError("signer.private_key must be hex (64 digits, optional 0x)") from None
        return cls(raw)

    @property
    def address(self) -> str:
        return self._address

    def sign_now(self, digest: bytes) -> SignedDigest:
        """Synchronous signing, for hot paths that cannot afford a coroutine switch."""
        sig = self._key.sign_recoverable(digest, hasher=None)
        return SignedDigest(
            digest=digest,
            r=int.from_bytes(sig[:32], "big"),
            s=int.from_bytes(sig[32:64], "big"),
            v=sig[64] + 27,
            signer=self._address,
        )

    async def unsafe_sign_hash(self, digest: bytes) -> SignedDigest:
        return self.sign_now(digest)

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(address={self._address})"


class KeystoreSigner(LocalKeySigner):
    """A key decrypted at start-up from an encrypted JSON keystore (Web3 Secret Storage V3)."""

    backend = "keystore"

    @classmethod
    def from_file(cls, path: Path, password: str) -> KeystoreSigner:
        try:
            document = orjson.loads(path.read_bytes())
        except OSError as exc:
            raise ConfigError(f"signer.keystore_path: cannot read {path}: {exc.strerror}") from None
        except orjson.JSONDecodeError:
            raise ConfigError(f"signer.keystore_path: {path} is not a JSON keystore") from None
        try:
            raw = Account.decrypt(document, password)
        except ValueError:
            raise ConfigError(f"signer: wrong password for keystore {path}") from None
        except (KeyError, TypeError):
            raise ConfigError(f"signer.keystore_path: {path} is not a V3 JSON keystore") from None
        return cls(bytes(raw))


class Settings(SignerSettingsBase):
    """``signer: {type: local, private_key: 0x…}`` — development only: the key sits in config or env."""

    private_key: SecretStr


def build(settings: Settings) -> LocalKeySigner:
    return LocalKeySigner.from_hex(settings.private_key.get_secret_value())


def generate_dev_key(path: Path) -> str:
    """Create (once) a development key file readable by its owner only; return its hex."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = "0x" + secrets.token_bytes(32).hex()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value
