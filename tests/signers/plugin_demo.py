"""A signer plugin as a third party would ship it, outside aNode, in both forms an entry point takes.

- A module: ``[anode.signers] plugin_demo = tests.signers.plugin_demo``. It needs only what a
  built-in backend has: a ``Settings`` model (a ``SignerSettingsBase``, secrets as ``SecretStr``)
  and ``build(settings)`` returning an object with the ``Signer`` protocol.
- A class: ``plugin_class = tests.signers.plugin_demo:ClassDemoSigner``, with a ``Settings``
  attribute; aNode calls ``ClassDemoSigner(settings)``.

A config picks either with ``signer: {type: custom, plugin: <entry point name>, …}`` or by its name
as the ``type``. Both keep a key in memory and sign with coincurve, touching no aNode signer code.
"""

from __future__ import annotations

from typing import ClassVar

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


DemoSettings = Settings


class ClassDemoSigner(DemoSigner):
    """The class form: the entry point names this class, which carries its ``Settings``."""

    backend = "plugin_class_demo"
    Settings: ClassVar[type[DemoSettings]] = DemoSettings

    def __init__(self, settings: DemoSettings) -> None:
        super().__init__(bytes.fromhex(settings.secret_key.get_secret_value().removeprefix("0x")), settings.label)

    def __repr__(self) -> str:
        return f"ClassDemoSigner(label={self._label}, address={self._address})"
