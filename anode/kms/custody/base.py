"""The custody Protocol: what the KMS needs from wherever the owner keys are kept.

Three operations, no more: make a new secp256k1 key for an account (inside the backend, never
seen outside it), tell a key's address, sign a 32-byte digest with it. The KMS decides *whether*
to sign (both signatures checked); the backend only holds keys and signs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from anode.signers.base import SignedDigest


@dataclass(frozen=True, slots=True)
class KeyHandle:
    """A key in a backend: ``handle`` names it there (a PKCS#11 label, a file), ``address`` is its owner address."""

    handle: str
    address: str


class Custody(Protocol):
    backend: str

    def create_key(self, account_id: str) -> KeyHandle:
        """A new key for ``account_id``, generated inside the backend. Blocking; run off the event loop."""
        ...

    def address(self, handle: str) -> str:
        """The checksummed address of the key ``handle``."""
        ...

    def sign_digest(self, handle: str, digest: bytes) -> SignedDigest:
        """A canonical (low-s, ``v`` 27/28) signature of ``digest`` as given. Blocking."""
        ...

    def health(self) -> str | None:
        """``None`` when the backend can sign, else what is wrong (never a secret)."""
        ...

    def close(self) -> None: ...
