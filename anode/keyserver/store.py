"""What the key server holds: its keys and the callers' hashed tokens (the audit log: ``audit.py``).

Keys are built with :func:`anode.signers.registry.build_signer`, so any backend works. At start-up
each key signs a fixed probe digest; the public key recovered from it (needed by the Web3Signer
routes, which list public keys) must give the backend's own address, so a backend that signs
with another key or hashes the digest again stops start-up.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from eth_utils.crypto import keccak

from anode.errors import ConfigError
from anode.keyserver.audit import AuditLog, verify_audit
from anode.keyserver.config import KeySettings, TokenSettings
from anode.signers.base import Signer
from anode.signers.ecdsa import address_of_point, recover_point
from anode.signers.registry import build_signer

log = logging.getLogger("anode.keyserver")

PROBE_DIGEST = keccak(b"anode keyserver start-up probe")

__all__ = ["PROBE_DIGEST", "AuditLog", "Key", "KeyRing", "Tokens", "verify_audit"]


@dataclass(frozen=True, slots=True)
class Key:
    id: str
    signer: Signer
    allowed: frozenset[str]
    #: uncompressed public key without the ``04`` prefix (64 bytes), learned from the probe
    public_key: bytes = b""

    @property
    def address(self) -> str:
        return self.signer.address


class KeyRing:
    """The configured keys by id (and by public key, for the Web3Signer routes)."""

    def __init__(self, keys: Iterable[Key]) -> None:
        self._keys = {key.id: key for key in keys}
        self._by_public_key: dict[str, Key] = {}

    @classmethod
    def build(cls, settings: Iterable[KeySettings]) -> KeyRing:
        keys: list[Key] = []
        for entry in settings:
            signer = build_signer(entry.signer)
            keys.append(Key(entry.id, signer, frozenset(entry.allowed_callers)))
            if signer.backend == "local":
                log.warning("key %r is a plain-text key in the config file (type: local)", entry.id)
        return cls(keys)

    async def probe(self) -> None:
        """Sign the probe digest with every key; learn its public key; check it gives the address."""
        for key in list(self._keys.values()):
            signed = await key.signer.unsafe_sign_hash(PROBE_DIGEST)
            point = recover_point(PROBE_DIGEST, signed.r, signed.s, signed.v - 27)
            if point is None or address_of_point(point) != key.address:
                raise ConfigError(
                    f"keys: key {key.id!r} ({key.signer.backend}) signs with a key other than its address"
                )
            probed = Key(key.id, key.signer, key.allowed, point[1:])
            self._keys[key.id] = probed
            self._by_public_key[point[1:].hex()] = probed
            log.info("key %r: %s (%s)", key.id, key.address, key.signer.backend)

    def get(self, key_id: str) -> Key | None:
        return self._keys.get(key_id)

    def by_public_key(self, identifier: str) -> Key | None:
        """A key by its public key as Web3Signer names it: hex, 64 bytes, or 65 with the ``04`` prefix."""
        body = identifier.lower().removeprefix("0x")
        if len(body) == 130 and body.startswith("04"):
            body = body[2:]
        return self._by_public_key.get(body)

    def usable_by(self, caller: str) -> list[Key]:
        return [key for key in self._keys.values() if caller in key.allowed]

    async def aclose(self) -> None:
        for key in self._keys.values():
            await key.signer.aclose()


class Tokens:
    """Bearer tokens held as SHA-256 digests; a presented token is compared with every one in constant time."""

    def __init__(self, settings: Iterable[TokenSettings]) -> None:
        self._digests: list[tuple[bytes, str]] = []
        for token in settings:
            if token.token is not None:
                digest = hashlib.sha256(token.token.get_secret_value().encode()).digest()
            else:
                assert token.token_sha256 is not None
                digest = bytes.fromhex(token.token_sha256)
            self._digests.append((digest, token.id))

    def caller(self, presented: str | None) -> str | None:
        """The id of the token presented, or ``None``."""
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for known, token_id in self._digests:  # no early exit: the time does not depend on which matched
            if hmac.compare_digest(digest, known):
                found = token_id
        return found
