"""secp256k1 ECDSA plumbing: the one place aNode derives an address from a public key, recovers
a signature and brings ``s`` to the lower half.

Backends whose key lives elsewhere hand back a bare ``(r, s)`` — DER ``SEQUENCE {r, s}`` from AWS
KMS, raw ``r ‖ s`` from PKCS#11 ``CKM_ECDSA`` — and a public key as DER (an X.509
``SubjectPublicKeyInfo`` or a PKCS#11 ``CKA_EC_POINT``), or, from a key server, ``r ‖ s ‖ v``.
Ethereum wants ``s`` in the lower half of the curve order (OpenZeppelin's ``ECDSA.recover``
rejects the other half) and a recovery id, which no HSM reports. :func:`signed_digest` normalises
``s`` and finds ``v`` by recovering the public key for each candidate and comparing it with the
key the backend reported at start-up; :func:`checked_signature` normalises a signature that has
its ``v`` and recovers it once. A signature that recovers to another key (a wrong key, or a
backend that hashed the digest once more) is refused rather than returned. Both give a
:class:`~anode.signers.base.RecoveredDigest`, which the signer manager does not recover again.

The DER reader is deliberately tiny and strict: it reads exactly the structures above.
"""

from __future__ import annotations

from coincurve import PublicKey
from eth_utils.address import to_checksum_address

from anode.errors import SignerUnavailable
from anode.signers.base import SECP256K1_N, RecoveredDigest, SignedDigest
from anode.userop.keccak import keccak

HALF_N = SECP256K1_N // 2
#: DER OID 1.2.840.10045.2.1 (id-ecPublicKey) and 1.3.132.0.10 (secp256k1), tag and length included
EC_PUBLIC_KEY_OID = bytes.fromhex("06072a8648ce3d0201")
SECP256K1_OID = bytes.fromhex("06052b8104000a")

BAD_SIGNATURE = "ANODE_SIGNER_BAD_SIGNATURE"

_SEQUENCE, _INTEGER, _BIT_STRING, _OCTET_STRING = 0x30, 0x02, 0x03, 0x04


class DerError(ValueError):
    """Bytes that are not the DER structure expected."""


def _read(data: bytes, pos: int, tag: int) -> tuple[bytes, int]:
    """One DER element with ``tag`` at ``pos``: its contents and the position after it."""
    if pos + 2 > len(data) or data[pos] != tag:
        raise DerError(f"expected DER tag 0x{tag:02x} at offset {pos}")
    length, pos = data[pos + 1], pos + 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 2 or pos + count > len(data):
            raise DerError("unsupported DER length")
        length, pos = int.from_bytes(data[pos : pos + count], "big"), pos + count
    end = pos + length
    if end > len(data):
        raise DerError("truncated DER element")
    return data[pos:end], end


def _only(data: bytes, tag: int) -> bytes:
    value, end = _read(data, 0, tag)
    if end != len(data):
        raise DerError("trailing bytes after DER element")
    return value


def der_to_rs(der: bytes) -> tuple[int, int]:
    """DER ``SEQUENCE { INTEGER r, INTEGER s }`` (an X9.62 ECDSA signature) → ``(r, s)``."""
    body = _only(der, _SEQUENCE)
    r, pos = _read(body, 0, _INTEGER)
    s, pos = _read(body, pos, _INTEGER)
    if pos != len(body):
        raise DerError("trailing bytes in ECDSA signature")
    return int.from_bytes(r, "big"), int.from_bytes(s, "big")


def raw_to_rs(raw: bytes) -> tuple[int, int]:
    """Raw ``r ‖ s`` (PKCS#11 ``CKM_ECDSA``, 32 bytes each on secp256k1) → ``(r, s)``."""
    if len(raw) != 64:
        raise DerError(f"expected a 64-byte r ‖ s signature, got {len(raw)} bytes")
    return int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")


def low_s(s: int) -> int:
    """The canonical of the two valid ``s``: ``n − s`` when ``s > n/2`` (EIP-2, OpenZeppelin)."""
    return SECP256K1_N - s if s > HALF_N else s


def uncompressed_point(point: bytes) -> bytes:
    """A SEC1 point (compressed or not) → 65 bytes ``04 ‖ x ‖ y``, checked to lie on secp256k1."""
    try:
        return PublicKey(point).format(compressed=False)
    except (ValueError, TypeError):
        raise DerError("not a secp256k1 public key") from None


def point_from_spki(der: bytes) -> bytes:
    """X.509 ``SubjectPublicKeyInfo`` (KMS ``GetPublicKey``) → uncompressed secp256k1 point.

    Refuses any other algorithm or curve: a NIST P-256 key would sign, and never recover.
    """
    body = _only(der, _SEQUENCE)
    algorithm, pos = _read(body, 0, _SEQUENCE)
    bits, end = _read(body, pos, _BIT_STRING)
    if end != len(body):
        raise DerError("trailing bytes in SubjectPublicKeyInfo")
    if not algorithm.startswith(EC_PUBLIC_KEY_OID):
        raise DerError("not an elliptic-curve public key")
    if algorithm[len(EC_PUBLIC_KEY_OID) :] != SECP256K1_OID:
        raise DerError("not a secp256k1 key")
    if not bits or bits[0] != 0:
        raise DerError("malformed public key bit string")
    return uncompressed_point(bits[1:])


def point_from_ec_point(value: bytes) -> bytes:
    """PKCS#11 ``CKA_EC_POINT`` → uncompressed point.

    The standard value is the point wrapped in a DER OCTET STRING (``04 41 04 ‖ x ‖ y``); some
    modules return the bare point (``04 ‖ x ‖ y``). Both are accepted, told apart by length.
    """
    if len(value) in (33, 65):
        return uncompressed_point(value)
    return uncompressed_point(_only(value, _OCTET_STRING))


def address_bytes_of_point(point: bytes) -> bytes:
    """The 20-byte Ethereum address of an uncompressed (65-byte ``04 ‖ x ‖ y``) public key."""
    return keccak(point[1:])[12:]


def address_of_point(point: bytes) -> str:
    """Checksummed Ethereum address of an uncompressed (65-byte) public key."""
    return to_checksum_address(address_bytes_of_point(point))


def recover_point(digest: bytes, r: int, s: int, recovery_id: int) -> bytes | None:
    """The uncompressed public key that signed ``digest`` with ``(r, s, recovery_id)``, or ``None``."""
    if recovery_id not in (0, 1) or not (0 < r < SECP256K1_N and 0 < s < SECP256K1_N):
        return None
    rs = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    try:
        return PublicKey.from_signature_and_message(rs + bytes([recovery_id]), digest, hasher=None).format(
            compressed=False
        )
    except ValueError:
        return None


def recovered(signed: SignedDigest) -> bytes | None:
    """The 20-byte address ``signed`` recovers to, or ``None`` for a malformed signature."""
    if signed.v not in (27, 28):
        return None
    point = recover_point(signed.digest, signed.r, signed.s, signed.v - 27)
    return None if point is None else address_bytes_of_point(point)


def recovered_address(signed: SignedDigest) -> str | None:
    """The checksummed address ``signed`` recovers to, or ``None`` for a malformed signature."""
    raw = recovered(signed)
    return None if raw is None else to_checksum_address(raw)


def _out_of_range(r: int, s: int) -> bool:
    return not (0 < r < SECP256K1_N and 0 < s < SECP256K1_N)


def signed_digest(digest: bytes, r: int, s: int, point: bytes, address: str) -> RecoveredDigest:
    """Canonical Ethereum signature of ``digest`` from a backend's ``(r, s)`` (no recovery id).

    ``point`` is the key's uncompressed public key, ``address`` its address. ``s`` is brought to
    the lower half; ``v`` is the recovery id whose recovered key is ``point``.
    """
    if _out_of_range(r, s):
        raise SignerUnavailable("the signing backend returned an out-of-range signature", code=BAD_SIGNATURE)
    s = low_s(s)
    for recovery_id in (0, 1):
        if recover_point(digest, r, s, recovery_id) == point:
            return RecoveredDigest(digest=digest, r=r, s=s, v=27 + recovery_id, signer=address)
    raise SignerUnavailable(
        f"the signing backend returned a signature that does not recover to {address} "
        "(a different key, or a backend that hashed the digest again)",
        code=BAD_SIGNATURE,
    )


def checked_signature(digest: bytes, signature: bytes, address: str, where: str) -> RecoveredDigest:
    """``r ‖ s ‖ v`` (``v`` 0/1 or 27/28) as a canonical signature of ``digest``, if it recovers to ``address``.

    A high ``s`` is replaced by the other valid ``s`` of the same signature (the recovery id flips
    with it). ``where`` names the backend in errors.
    """
    if len(signature) != 65:
        raise SignerUnavailable(f"{where} answered a malformed signature", code=BAD_SIGNATURE)
    r, s, v = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:64], "big"), signature[64]
    v = v + 27 if v in (0, 1) else v
    if v not in (27, 28) or _out_of_range(r, s):
        raise SignerUnavailable(f"{where} answered an out-of-range signature", code=BAD_SIGNATURE)
    if s > HALF_N:
        s, v = SECP256K1_N - s, 55 - v
    point = recover_point(digest, r, s, v - 27)
    if point is None or address_of_point(point) != address:
        raise SignerUnavailable(
            f"{where} returned a signature that does not recover to {address} "
            "(another key signed, or the server hashed the digest again)",
            code=BAD_SIGNATURE,
        )
    return RecoveredDigest(digest=digest, r=r, s=s, v=v, signer=address)
