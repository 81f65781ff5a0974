"""The paymaster signers the KMS trusts: add, list, remove, and rotate with a proof from both keys.

A signer has a name, permissions (``sign-user-operation`` lets it approve operations) and an
optional expiry. A rotation hands the old signer's name, permissions and expiry to the new one
once both keys have signed ``SignerRotation(old, new)`` (``eip712.py``); the old one keeps
working for ``rotation_overlap_seconds``, then is refused. Every change is chained into the audit log.
"""

from __future__ import annotations

import time
from typing import Any

from anode.errors import InvalidRequest, KmsNotFound, KmsRefused, KmsReplay
from anode.kms import audit, eip712
from anode.kms.config import KmsSettings
from anode.kms.store import AuthorizedSigner, KmsStore, checksum
from anode.userop.codec import parse_address, parse_bytes

SIGN_PERMISSION = "sign-user-operation"


class PaymasterSigners:
    def __init__(self, settings: KmsSettings, store: KmsStore) -> None:
        self.settings = settings
        self.store = store

    def authorized(self, paymaster: str, now: float) -> AuthorizedSigner:
        return self.check(self.store.signer(paymaster), paymaster, now)

    @staticmethod
    def check(signer: AuthorizedSigner | None, paymaster: str, now: float) -> AuthorizedSigner:
        """``signer`` (``paymaster``'s row, as read now) if it may approve an operation at ``now``."""
        if signer is None or SIGN_PERMISSION not in signer.permissions:
            raise KmsRefused(
                f"paymaster {paymaster} is not an authorized signer of this KMS",
                code="ANODE_KMS_PAYMASTER_UNAUTHORIZED",
            )
        if signer.expires_at is not None and now >= signer.expires_at:
            raise KmsRefused(
                f"paymaster {paymaster}'s authorization expired at {signer.expires_at}",
                code="ANODE_KMS_PAYMASTER_EXPIRED",
            )
        if signer.retires_at is not None and now >= signer.retires_at:
            raise KmsRefused(
                f"paymaster {paymaster} was rotated to {signer.replaced_by}; its overlap ended at {signer.retires_at}",
                code="ANODE_KMS_PAYMASTER_EXPIRED",
            )
        return signer

    def add_signer(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            address = checksum(parse_address(body.get("address")))
        except (InvalidRequest, ValueError, TypeError):
            raise InvalidRequest("address must be the paymaster signer's address", field="address") from None
        name = body.get("name", "")
        permissions = body.get("permissions", [SIGN_PERMISSION])
        expires_at = body.get("expiresAt")
        if not isinstance(name, str) or len(name) > 128:
            raise InvalidRequest("name must be a string of at most 128 characters", field="name")
        if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
            raise InvalidRequest(
                f"permissions must be a list of strings (e.g. [{SIGN_PERMISSION!r}])", field="permissions"
            )
        if expires_at is not None and (not isinstance(expires_at, int) or isinstance(expires_at, bool)):
            raise InvalidRequest("expiresAt must be unix seconds (or null: no expiry)", field="expiresAt")
        signer = AuthorizedSigner(address, name, tuple(permissions), expires_at, None, None)
        with self.store.write() as connection:
            self.store.put_signer(connection, signer)
            audit.append(connection, audit.entry("signer_added", paymaster=address, detail=signer.as_json()))
        return signer.as_json()

    def remove_signer(self, address: str) -> dict[str, Any]:
        signer = checksum(parse_address(address))
        with self.store.write() as connection:
            if not self.store.remove_signer(connection, signer):
                raise KmsNotFound(f"no authorized signer {signer}", code="ANODE_KMS_SIGNER_UNKNOWN")
            audit.append(connection, audit.entry("signer_removed", paymaster=signer))
        return {"address": signer, "removed": True}

    def rotate(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            old = checksum(parse_address(body.get("oldAddress")))
            new = checksum(parse_address(body.get("newAddress")))
        except (InvalidRequest, ValueError, TypeError):
            raise InvalidRequest("oldAddress and newAddress must be addresses") from None
        proof = body.get("proof")
        if not isinstance(proof, dict):
            raise InvalidRequest(
                "proof must be {oldSignature, newSignature}: both keys' SignerRotation signatures", field="proof"
            )
        signer = self.store.signer(old)
        if signer is None:
            raise KmsNotFound(f"no authorized signer {old}", code="ANODE_KMS_SIGNER_UNKNOWN")
        if signer.replaced_by is not None:
            raise KmsReplay(f"{old} was rotated to {signer.replaced_by} already", code="ANODE_KMS_SIGNER_ROTATED")
        digest = eip712.rotation_digest(old, new)
        for role, address in (("old", old), ("new", new)):
            try:
                signature = parse_bytes(proof.get(f"{role}Signature"))
            except (InvalidRequest, ValueError, TypeError):
                signature = b""
            if eip712.recover(digest, signature) != address:
                raise KmsRefused(
                    f"proof.{role}Signature is not {address}'s SignerRotation({old}, {new}) signature: "
                    "both the old and the new key must sign",
                    code="ANODE_KMS_ROTATION_PROOF_INVALID",
                )
        retires_at = int(time.time()) + self.settings.rotation_overlap_seconds
        successor = AuthorizedSigner(new, signer.name, signer.permissions, signer.expires_at, None, None)
        retired = AuthorizedSigner(old, signer.name, signer.permissions, signer.expires_at, retires_at, new)
        with self.store.write() as connection:
            self.store.put_signer(connection, successor)
            self.store.put_signer(connection, retired)
            audit.append(
                connection,
                audit.entry("signer_rotated", paymaster=new, detail={"from": old, "to": new, "retiresAt": retires_at}),
            )
        return {"old": retired.as_json(), "new": successor.as_json()}
