"""The KMS's EIP-712 typed data: the paymaster's approval and the signer rotation proof, with the KMS's own domain.

Shared by the KMS (``anode/kms/``, which checks them) and aNode's passkey flow (``anode/passkey/``,
which signs the approval), so both build the digest from this one module.

    EIP712Domain(string name,string version,uint256 chainId)     name "aNode KMS", version "1"
    PaymasterApproval(bytes32 userOpHash,string accountId,bytes32 userSignatureHash,bytes32 nonce,uint256 timestamp)

    EIP712Domain(string name,string version)                     name "aNode KMS", version "1"
    SignerRotation(address oldAddress,address newAddress)

``userSignatureHash`` is ``keccak256`` of the passkey assertion's signature bytes (its
``response.signature``, base64url-decoded): the approval names the one assertion it goes with.
The domain is the KMS's own, so an approval can never pass for a paymaster-data signature (those
are EIP-191 or the paymaster contract's own hash) nor the other way round. The digests are built
from fixed 32-byte words (a test checks them against eth-account's generic EIP-712 encoder).
"""

from __future__ import annotations

from anode.signers.ecdsa import address_of_point, recover_point
from anode.userop.keccak import keccak

NAME, VERSION = "aNode KMS", "1"
DOMAIN_TYPE = keccak(b"EIP712Domain(string name,string version,uint256 chainId)")
ROTATION_DOMAIN_TYPE = keccak(b"EIP712Domain(string name,string version)")
APPROVAL_TYPE = keccak(
    b"PaymasterApproval(bytes32 userOpHash,string accountId,bytes32 userSignatureHash,bytes32 nonce,uint256 timestamp)"
)
ROTATION_TYPE = keccak(b"SignerRotation(address oldAddress,address newAddress)")
_NAME, _VERSION = keccak(NAME.encode()), keccak(VERSION.encode())
ROTATION_DOMAIN = keccak(ROTATION_DOMAIN_TYPE + _NAME + _VERSION)


def _word(value: int) -> bytes:
    return value.to_bytes(32, "big")


def _address(address: str) -> bytes:
    return bytes(12) + bytes.fromhex(address[2:])


def domain_separator(chain_id: int) -> bytes:
    return keccak(DOMAIN_TYPE + _NAME + _VERSION + _word(chain_id))


def approval_digest(
    chain_id: int, user_op_hash: bytes, account_id: str, user_signature_hash: bytes, nonce: bytes, timestamp: int
) -> bytes:
    """The digest a paymaster signs to approve this userOpHash for this account and this assertion."""
    struct = keccak(
        APPROVAL_TYPE + user_op_hash + keccak(account_id.encode()) + user_signature_hash + nonce + _word(timestamp)
    )
    return keccak(b"\x19\x01" + domain_separator(chain_id) + struct)


def rotation_digest(old_address: str, new_address: str) -> bytes:
    """The digest both the old and the new signer sign to hand the old one's rights to the new."""
    struct = keccak(ROTATION_TYPE + _address(old_address) + _address(new_address))
    return keccak(b"\x19\x01" + ROTATION_DOMAIN + struct)


def recover(digest: bytes, signature: bytes) -> str | None:
    """The checksummed address that signed ``digest`` (``r ‖ s ‖ v``, v 0/1/27/28), or ``None``."""
    if len(signature) != 65:
        return None
    r, s, v = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:64], "big"), signature[64]
    v = v - 27 if v >= 27 else v
    point = recover_point(digest, r, s, v)
    return None if point is None else address_of_point(point)
