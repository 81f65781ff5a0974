"""The ``Signer`` protocol every key backend implements, kept as small as eth-account's.

A signer holds one secp256k1 key wherever it lives (process memory, a KMS, an HSM, a remote key
server) and signs 32-byte digests. ``unsafe_sign_hash`` signs exactly the digest it is given:
callers build the EIP-191 digest the contract recovers from. Signatures are canonical (low s)
and carry ``v`` in {27, 28}, as OpenZeppelin's ECDSA expects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from anode.userop.keccak import keccak

EIP191_PREFIX = b"\x19Ethereum Signed Message:\n32"
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def eip191_digest(message_hash: bytes) -> bytes:
    """``toEthSignedMessageHash(message_hash)``: the digest paymaster contracts recover the signer from."""
    return keccak(EIP191_PREFIX + message_hash)


@dataclass(frozen=True, slots=True)
class SignedDigest:
    digest: bytes
    r: int
    s: int
    v: int
    signer: str

    @property
    def signature(self) -> bytes:
        """65 bytes ``r ‖ s ‖ v``."""
        return self.r.to_bytes(32, "big") + self.s.to_bytes(32, "big") + bytes([self.v])


@dataclass(frozen=True, slots=True)
class RecoveredDigest(SignedDigest):
    """A signature aNode's own code (:mod:`anode.signers.ecdsa`) has recovered to ``signer``.

    Backends whose signatures come from elsewhere (a key server, a KMS, an HSM) return it, so the
    signer manager does not recover the same signature a second time.
    """


@runtime_checkable
class Signer(Protocol):
    """One signing key. Implementations never expose key material in ``repr`` or errors."""

    @property
    def address(self) -> str:
        """Checksummed Ethereum address of the key."""
        ...

    @property
    def backend(self) -> str:
        """Short backend name for logs, metrics and the ledger (``local``, ``keystore``, ...)."""
        ...

    async def unsafe_sign_hash(self, digest: bytes) -> SignedDigest:
        """Sign a 32-byte digest as is."""
        ...

    async def aclose(self) -> None:
        """Release connections or sessions."""
        ...


async def sign_eip191(signer: Signer, message_hash: bytes) -> SignedDigest:
    """Sign ``toEthSignedMessageHash(message_hash)``, what paymaster contracts recover from.

    A signer that can only sign messages (Web3Signer signs keccak256 of what it is sent) offers
    its own ``sign_eip191``, used instead of hashing here.
    """
    own = getattr(signer, "sign_eip191", None)
    if own is not None:
        signed: SignedDigest = await own(message_hash)
        return signed
    return await signer.unsafe_sign_hash(eip191_digest(message_hash))
