"""``custody: {type: development}``: keys in files, encrypted at rest under a key-encryption key.

For development and tests only (the settings refuse it in ``environment: production``, and the
KMS warns at start-up). Each account's key is a random secp256k1 key in ``key_dir/<handle>.json``:
its address and the key sealed with AES-256-GCM under the key-encryption key (the environment
variable ``kek_env``, 64 hex digits), the handle as associated data, so a file copied under
another account's name does not open. The key is decrypted for each signature and dropped.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

import orjson
from coincurve import PrivateKey
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from anode.errors import ConfigError, SignerUnavailable
from anode.kms.config import DevelopmentCustody as Settings
from anode.kms.custody.base import KeyHandle
from anode.signers.base import SignedDigest
from anode.signers.ecdsa import address_of_point


def handle_of(account_id: str) -> str:
    return "dev-" + hashlib.sha256(account_id.encode()).hexdigest()[:40]


class DevelopmentCustody:
    backend = "development"

    def __init__(self, settings: Settings) -> None:
        raw = os.environ.get(settings.kek_env, "")
        try:
            kek = bytes.fromhex(raw)
        except ValueError:
            kek = b""
        if len(kek) != 32:
            raise ConfigError(f"custody.kek_env: {settings.kek_env} must hold a 32-byte key as 64 hex digits")
        self._aead = AESGCM(kek)
        self._dir = settings.key_dir
        self._dir.mkdir(parents=True, exist_ok=True)

    def _path(self, handle: str) -> Path:
        return self._dir / f"{handle}.json"

    def _read(self, handle: str) -> dict[str, str]:
        try:
            record: dict[str, str] = orjson.loads(self._path(handle).read_bytes())
        except FileNotFoundError:
            raise SignerUnavailable(f"custody: no key {handle!r}") from None
        return record

    def create_key(self, account_id: str) -> KeyHandle:
        handle = handle_of(account_id)
        if self._path(handle).exists():
            return KeyHandle(handle, self._read(handle)["address"])
        key = PrivateKey(secrets.token_bytes(32))
        address = address_of_point(key.public_key.format(compressed=False))
        nonce = secrets.token_bytes(12)
        sealed = self._aead.encrypt(nonce, key.secret, handle.encode())
        record = {"address": address, "nonce": nonce.hex(), "sealed": sealed.hex()}
        temporary = self._path(handle).with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, orjson.dumps(record))
        finally:
            os.close(fd)
        os.replace(temporary, self._path(handle))
        return KeyHandle(handle, address)

    def address(self, handle: str) -> str:
        return self._read(handle)["address"]

    def sign_digest(self, handle: str, digest: bytes) -> SignedDigest:
        record = self._read(handle)
        try:
            secret = self._aead.decrypt(
                bytes.fromhex(record["nonce"]), bytes.fromhex(record["sealed"]), handle.encode()
            )
        except InvalidTag:
            raise SignerUnavailable(f"custody: key {handle!r} does not open under this key-encryption key") from None
        signature = PrivateKey(secret).sign_recoverable(digest, hasher=None)
        return SignedDigest(
            digest=digest,
            r=int.from_bytes(signature[:32], "big"),
            s=int.from_bytes(signature[32:64], "big"),
            v=signature[64] + 27,
            signer=record["address"],
        )

    def health(self) -> str | None:
        return None if self._dir.is_dir() else f"key_dir {self._dir} is gone"

    def close(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key_dir={self._dir})"
