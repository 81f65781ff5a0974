"""Keccak-256, the one hash function every hot path here calls (getHash, userOpHash, EIP-55).

safe-pysha3 (a C extension) hashes 32 bytes in about 0.8 µs; pycryptodome's cffi wrapper, the
fallback, takes about 5 µs for the same. A pm_getPaymasterData call hashes about ten times.
"""

from __future__ import annotations

try:
    from sha3 import keccak_256 as _keccak_256
except ImportError:  # pragma: no cover - the dependency is declared; this keeps a bare install working
    _keccak_256 = None
from Crypto.Hash import keccak as _pycryptodome


def _slow(data: bytes) -> bytes:
    return _pycryptodome.new(data=data, digest_bits=256).digest()


EMPTY = _slow(b"")


def keccak(data: bytes) -> bytes:
    if not data:  # empty initCode, paymasterAndData: common enough to skip the call
        return EMPTY
    if _keccak_256 is not None:
        digest: bytes = _keccak_256(data).digest()
        return digest
    return _slow(data)
