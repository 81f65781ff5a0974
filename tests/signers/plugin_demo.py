"""A signer plugin as a third party would ship it, outside aNode.

Its distribution declares the entry point ``[anode.signers] plugin_demo = tests.signers.plugin_demo``;
aNode finds it by the ``type`` in ``signer: {type: plugin_demo, …}``. A plugin module needs only
what a built-in backend has: a ``Settings`` model (a ``SignerSettingsBase``, secrets as
``SecretStr``) and ``build(settings)`` returning an object with the ``Signer`` protocol. This one
keeps a key in memory and signs with coincurve, touching no aNode signer code.
"""

from __future__ import annotations

from coincurve import PrivateKey
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from pydantic import SecretStr

from anode.signers.base import SignedDigest
from anode.signers.registry import SignerSettingsBase


class Settings(SignerSettingsBase):
    secret_key: SecretStr
    label: str = "demo"


class DemoSigner:
    backend = "plugin_demo"

    def __init__(self, secret_key: bytes, label: str) -> None:
        self._key = PrivateKey(secret_key)
        self._label = label
        self._address = to_checksum_address(keccak(self._key.public_key.format(compressed=False)[1:])[12:])

    @property
    def address(self) -> str:
        return self._address

    async def unsafe_sign_hash(self, digest: bytes) -> SignedDigest:
        signature = self._key.sign_recoverable(digest, hasher=None)
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:64], "big")
        return SignedDigest(digest=digest, r=r, s=s, v=27 + signature[64], signer=self._address)

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"DemoSigner(label={self._label}, address={self._address})"


def build(settings: Settings) -> DemoSigner:
    return DemoSigner(bytes.fromhex(settings.secret_key.get_secret_value().removeprefix("0x")), settings.label)
