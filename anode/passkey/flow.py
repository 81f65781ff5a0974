"""The passkey flow: aNode sponsors an operation, the user's passkey approves it, and the KMS
signs it as the account's owner once aNode's paymaster signer has co-signed.

    prepare:  pipeline → paymaster data signed and recorded (the ledger row) → KMS challenge
    (the browser signs the challenge with the passkey)
    sponsor:  the ledger row of this very operation → PaymasterApproval (EIP-712) by aNode's
              paymaster signer → KMS /kms/sign-user-operation → the signed operation
              [→ the chain's bundler]

Nothing is kept between the two steps but the ledger row the pipeline writes for every signed
operation: the operation handed back at ``sponsor`` must hash to a row this server prepared
(same chain, EntryPoint, sender and nonce, recorded by the prepare step, by the same API key)
whose paymaster data is still valid. Any server process on the same database finds it. An
operation whose hash matches no row but whose sender and nonce do was changed after it was
prepared (``ANODE_PASSKEY_OPERATION_CHANGED``); one with neither was never prepared
(``ANODE_PASSKEY_NOT_PREPARED``); a row past its ``validUntil`` is
``ANODE_PASSKEY_PREPARATION_EXPIRED`` (the paymaster data would be refused on chain).
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from anode.config import MAX_VALIDITY_SECONDS
from anode.errors import BundlerUnavailable, InvalidRequest, KmsUnauthenticated, ServiceUnavailable, SponsorshipRefused
from anode.passkey.kms_client import Attempt, KmsClient
from anode.pipeline.routes import Route
from anode.signers.base import SignedDigest, eip191_digest
from anode.signers.kms_approval import approval_digest, recover
from anode.signers.manager import ManagedSigner
from anode.sponsorship import Sponsored, SponsorRequest, SponsorshipService
from anode.userop.codec import checksum, parse_address, parse_bytes, to_hex
from anode.userop.hashing import user_op_hash
from anode.userop.keccak import keccak
from anode.userop.models import UserOperation, parse_user_op
from anode.userop.versions import EntryPointVersion

#: ledger rows of a sender read to find its preparation (newest first)
_ROWS = 200


@dataclass(frozen=True, slots=True)
class Prepared:
    """Step 1's result: the sponsored operation and the KMS's challenge for it."""

    sponsored: Sponsored
    account_id: str
    #: the operation in its RPC form, paymaster fields included
    user_operation: dict[str, Any]
    #: the KMS's ``/webauthn/authenticate/options`` answer: challenge, kmsNonce, expiresAt, options
    challenge: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PasskeyRequest:
    user_op: Any
    entry_point: Any
    chain_id: Any
    account_id: Any
    user_signature: Any
    #: the method that prepared it, as the ledger records it
    prepared_by: str
    send: bool = False
    api_key_id: str | None = None


@dataclass(frozen=True, slots=True)
class CoSigned:
    """Step 3's result: the operation with the owner's signature the KMS gave."""

    user_operation: dict[str, Any]
    user_op_hash: str
    owner: str
    proof: dict[str, Any]
    #: the userOpHash the bundler answered, when the operation was sent
    sent: str | None = None


class PasskeyFlow:
    def __init__(self, service: SponsorshipService, kms: KmsClient, clock: Callable[[], float] = time.time) -> None:
        self.service = service
        self.kms = kms
        self._clock = clock

    async def prepare(self, request: SponsorRequest) -> Prepared:
        """Run the pipeline and sign the paymaster data (recorded), then ask the KMS for the challenge."""
        context = request.context if isinstance(request.context, dict) else {}
        account_id = _account_id(context.get("accountId"), "context.accountId")
        sponsored = await self.service.sign_or_estimate(request)
        assert sponsored.user_op_hash is not None
        challenge = await self.kms.authentication_options(account_id, to_hex(sponsored.user_op_hash))
        return Prepared(sponsored, account_id, _rpc(sponsored.op), challenge)

    async def sponsor(self, request: PasskeyRequest) -> CoSigned:
        """Co-sign the operation aNode prepared and get the owner's signature from the KMS."""
        account_id = _account_id(request.account_id, "accountId")
        if request.user_signature in (None, "", {}):
            raise KmsUnauthenticated(
                "userSignature is missing: the passkey's assertion over the prepared challenge is required",
                code="ANODE_KMS_PASSKEY_MISSING",
            )
        signature_hash = keccak(_assertion_signature(request.user_signature))
        route = self.service.routes.resolve(request.entry_point, request.chain_id)
        op = parse_user_op(request.user_op, route.version)
        op_hash = user_op_hash(op, route.version, route.entry_point, route.chain_id)
        await self._check_prepared(route, op, to_hex(op_hash), request)
        wire = _rpc(op)

        async def attempt() -> Attempt:
            nonce, timestamp = secrets.token_bytes(32), int(self._clock())
            digest = approval_digest(route.chain_id, op_hash, account_id, signature_hash, nonce, timestamp)
            signed = await self._approve(route, digest)
            body = {
                "userOperation": wire, "entryPoint": route.entry_point_hex, "chainId": route.chain_id,
                "accountId": account_id, "userSignature": request.user_signature, "nonce": to_hex(nonce),
                "timestamp": timestamp,
            }  # fmt: skip
            return body, {"x-paymaster-signature": to_hex(signed.signature), "x-paymaster-address": signed.signer}

        answer = await self.kms.sign_user_operation(attempt)
        signature, owner = _checked(answer, op_hash, route.version)
        signed_op = {**wire, "signature": to_hex(signature)}
        proof = answer.get("verificationProof")
        result = CoSigned(signed_op, to_hex(op_hash), owner, proof if isinstance(proof, dict) else {})
        if not request.send:
            return result
        return replace(result, sent=await self._send(route, signed_op))

    async def aclose(self) -> None:
        await self.kms.aclose()

    async def _check_prepared(self, route: Route, op: UserOperation, op_hash: str, request: PasskeyRequest) -> None:
        since = datetime.now(UTC) - timedelta(seconds=MAX_VALIDITY_SECONDS + 3600)
        rows = await self.service.ledger.find(
            sender=checksum(op.sender), nonce=op.nonce, since=since, limit=_ROWS, api_key_id=request.api_key_id
        )
        same = [
            row for row in rows
            if row["chain_id"] == route.chain_id and row["entry_point"] == route.entry_point_hex
            and int(row["nonce"]) == op.nonce and row["method"] == request.prepared_by
        ]  # fmt: skip
        row = next((row for row in same if row["user_op_hash"] == op_hash), None)
        if row is None and same:
            raise SponsorshipRefused(
                f"this operation (userOpHash {op_hash}) is not the one prepared for sender {checksum(op.sender)} "
                f"and nonce {op.nonce}: it changed after it was prepared; send it exactly as "
                f"{request.prepared_by} answered it, or prepare it again",
                code="ANODE_PASSKEY_OPERATION_CHANGED",
            )
        if row is None:
            raise SponsorshipRefused(
                f"no operation with userOpHash {op_hash} was prepared here: call {request.prepared_by} first",
                code="ANODE_PASSKEY_NOT_PREPARED",
            )
        if int(row["valid_until"]) <= self._clock():
            raise SponsorshipRefused(
                f"the preparation of {op_hash} expired (its paymaster data was valid until {row['valid_until']}): "
                "prepare the operation again",
                code="ANODE_PASSKEY_PREPARATION_EXPIRED",
            )

    async def _approve(self, route: Route, digest: bytes) -> SignedDigest:
        """The PaymasterApproval, signed as is by a key this route's paymaster accepts."""
        signer = self.service.signer
        if isinstance(signer, ManagedSigner):
            return await signer.sign_for(route.paymaster.address, digest, chain_id=route.chain_id)
        return await signer.unsafe_sign_hash(digest)

    async def _send(self, route: Route, signed_op: dict[str, Any]) -> str:
        if route.bundler is None:
            raise BundlerUnavailable(
                f"no bundler_url is configured for chain {route.chain_id}: send: true hands the operation to the "
                "chain's bundler; leave send out and submit the answered operation yourself"
            )
        sent = await route.bundler.relay("eth_sendUserOperation", [signed_op, route.entry_point_hex])
        if isinstance(sent, str):
            await self.service.ledger.mark_sent(route.chain_id, sent)
            return sent
        raise ServiceUnavailable("the bundler accepted the operation but answered no userOpHash")


def _rpc(op: UserOperation) -> dict[str, Any]:
    """``op`` in its RPC form (hex quantities, unpacked v0.7/v0.8 fields)."""
    return op.model_dump(by_alias=True, exclude_none=True)


def _account_id(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{field} must be the KMS account's id (a string)", field=field)
    return value


def _assertion_signature(assertion: Any) -> bytes:
    """The assertion's ``response.signature`` bytes (base64url), which the approval names."""
    response = assertion.get("response") if isinstance(assertion, dict) else None
    encoded = response.get("signature") if isinstance(response, dict) else None
    if isinstance(encoded, str) and encoded:
        try:
            return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except (binascii.Error, ValueError):
            pass
    raise InvalidRequest(
        "userSignature must be the passkey assertion's PublicKeyCredential JSON (response.signature in base64url)",
        field="userSignature",
    )


def _checked(answer: dict[str, Any], op_hash: bytes, version: EntryPointVersion) -> tuple[bytes, str]:
    """The owner's signature, checked: for this userOpHash, recovering to the owner the KMS names."""
    try:
        signature = parse_bytes(answer["signature"])
        owner = checksum(parse_address(answer["ownerAddress"]))
        hash_answered = parse_bytes(answer["userOpHash"])
    except (KeyError, TypeError, ValueError):
        raise ServiceUnavailable("the KMS's answer lacks its signature, ownerAddress or userOpHash",
                                 code="ANODE_KMS_ANSWER_INVALID") from None  # fmt: skip
    digest = op_hash if version is EntryPointVersion.V08 else eip191_digest(op_hash)
    if hash_answered != op_hash or recover(digest, signature) != owner:
        raise ServiceUnavailable(
            "the KMS's signature is not its owner's over this operation's userOpHash: nothing is answered",
            code="ANODE_KMS_ANSWER_INVALID",
        )
    return signature, owner
