"""What the KMS decides: accounts, passkeys, challenges, and the dual-signature check before a signature.

``sign_user_operation`` checks, in this order, and stops at the first refusal:

1. the paymaster's ``timestamp`` is within ``signature_window_seconds`` of now;
2. its ``nonce`` is new for that paymaster; from here on the request uses it up, whatever the
   answer: a refusal records it with the refusal, a signature in the transaction below;
3. the paymaster's EIP-712 approval (``eip712.py``) recovers to ``X-Paymaster-Address``, and that
   address is an authorized signer with the ``sign-user-operation`` permission, not expired and
   not rotated out;
4. the passkey assertion: its challenge was issued by this KMS for this account and for the
   userOpHash the KMS computes from the operation it was sent, and has not expired; the
   credential is registered to this account; py_webauthn checks origin, rp id, user presence and
   verification and the signature, and the sign counter must have grown;
5. the custody backend signs the userOpHash as the account's owner (EIP-191 for the v0.6 and v0.7
   SimpleAccount, the raw hash for v0.8); the signature is returned only once one transaction has
   taken the nonce, the challenge and the counter (each set-if-absent or conditional, so of
   concurrent identical requests exactly one gets through) and chained the audit record.

Every decision, refusals with their code included, is recorded in the audit log.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import time
from typing import Any

import httpx

from anode.errors import (
    AnodeError,
    InvalidRequest,
    KmsNotFound,
    KmsRefused,
    KmsReplay,
    KmsStale,
    KmsUnauthenticated,
    ServiceUnavailable,
    UnsupportedEntryPoint,
)
from anode.kms import audit, eip712
from anode.kms.config import KmsSettings
from anode.kms.custody import Custody
from anode.kms.passkeys import Assertion, Passkeys, read_assertion
from anode.kms.paymasters import PaymasterSigners
from anode.kms.store import Account, Challenge, Credential, Found, KmsStore, Taken, checksum
from anode.signers.ecdsa import address_bytes_of_point, recover_point
from anode.userop.codec import parse_address, parse_bytes, parse_quantity
from anode.userop.hashing import user_op_hash
from anode.userop.keccak import keccak
from anode.userop.models import parse_user_op
from anode.userop.versions import EntryPointVersion

_ACCOUNT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,127}$")
_GET_ADDRESS = keccak(b"getAddress(address,uint256)")[:4]
_CREATE_ACCOUNT = keccak(b"createAccount(address,uint256)")[:4]


def _nonce_reused(paymaster: str, nonce: str) -> KmsReplay:
    return KmsReplay(
        f"nonce {nonce} of paymaster {paymaster} was used already: sign with a new one", code="ANODE_KMS_NONCE_REUSED"
    )


def _taken(what: str, paymaster: str, nonce: str, count: int) -> KmsReplay:
    if what == "nonce":
        return _nonce_reused(paymaster, nonce)
    if what == "counter":
        return KmsReplay(
            f"the assertion's sign counter ({count}) is not above the passkey's last one: a replayed assertion",
            code="ANODE_KMS_PASSKEY_REPLAYED",
        )
    return KmsReplay("this challenge was used already: ask for a new one", code="ANODE_KMS_CHALLENGE_USED")


def _account_id(value: Any) -> str:
    if not isinstance(value, str) or not _ACCOUNT_ID.match(value):
        raise InvalidRequest(
            "accountId must be 1-128 characters: letters, digits and _ . : @ + - (not first)", field="accountId"
        )
    return value


def _bytes32(value: Any, field: str) -> bytes:
    try:
        raw = parse_bytes(value)
    except (InvalidRequest, ValueError, TypeError):
        raw = b""
    if len(raw) != 32:
        raise InvalidRequest(f"{field} must be 32 bytes as 0x-prefixed hex", field=field)
    return raw


def _chain_id(value: Any) -> int:
    try:
        return parse_quantity(value)
    except (InvalidRequest, ValueError, TypeError):
        raise InvalidRequest("chainId must be a number (or 0x-hex)", field="chainId") from None


def _word(value: int) -> bytes:
    return value.to_bytes(32, "big")


def _signed_by(digest: bytes, signature: bytes, address: str) -> bool:
    """Whether ``signature`` (``r ‖ s ‖ v``, v 0/1/27/28) of ``digest`` recovers to ``address``
    (``eip712.recover``'s check, comparing the 20 bytes instead of checksumming the recovered address)."""
    if len(signature) != 65:
        return False
    r, s, v = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:64], "big"), signature[64]
    point = recover_point(digest, r, s, v - 27 if v >= 27 else v)
    return point is not None and address_bytes_of_point(point) == bytes.fromhex(address[2:])


class KmsService:
    def __init__(self, settings: KmsSettings, store: KmsStore, custody: Custody) -> None:
        self.settings = settings
        self.store = store
        self.custody = custody
        self.passkeys = Passkeys(settings.webauthn)
        self.signers = PaymasterSigners(settings, store)
        self.appender = audit.Appender(store.driver)

    # -- the audit trail ---------------------------------------------------------------------------

    def _refused(self, exc: AnodeError, **fields: Any) -> None:
        """Record the refusal; a nonce the request got as far as presenting is used up with it."""
        detail = {**fields.pop("detail", {}), "code": exc.code}
        burn = fields.pop("burn", None)
        record = audit.entry("refused", backend=self.custody.backend, detail=detail, **fields)

        def work(cursor: Any) -> None:
            if burn is not None:
                self.store.burn_nonce(cursor, *burn)
            self.appender.append(cursor, record)

        with contextlib.suppress(ServiceUnavailable):  # the refusal stands
            self.store.transact(work)

    # -- accounts -----------------------------------------------------------------------------------

    def _entry_point(self, chain_id: int, entry_point: Any) -> tuple[str, EntryPointVersion, str, str]:
        """``(entry point, version, factory, rpc_url)`` configured for the pair."""
        address = checksum(parse_address(entry_point)) if isinstance(entry_point, str) else ""
        chain = self.settings.chain(chain_id)
        found = self.settings.entry_point(chain_id, address) if address else None
        if chain is None or found is None:
            served = [f"{c.chain_id}: {[e.address for e in c.entry_points]}" for c in self.settings.chains]
            raise UnsupportedEntryPoint(f"entryPoint {entry_point} on chain {chain_id} is not served; served: {served}")
        return checksum(found.address), found.version, checksum(found.factory), chain.rpc_url

    def _account(self, account_id: str) -> Account:
        account = self.store.account(account_id)
        if account is None:
            raise KmsNotFound(
                f"no account {account_id!r}: create it with POST /aa/create-account", code="ANODE_KMS_ACCOUNT_UNKNOWN"
            )
        return account

    def create_account(self, body: dict[str, Any]) -> dict[str, Any]:
        account_id = _account_id(body.get("accountId"))
        chain_id = _chain_id(body.get("chainId"))
        entry_point, version, factory, rpc_url = self._entry_point(chain_id, body.get("entryPoint"))
        account = self.store.account(account_id) or self._new_account(account_id)
        args = bytes.fromhex(account.owner[2:]).rjust(32, b"\0") + _word(0)
        sender = self._eth_call(rpc_url, factory, _GET_ADDRESS + args)
        return {
            "accountId": account_id,
            "address": checksum(sender[12:32]),
            "ownerAddress": account.owner,
            "entryPoint": entry_point,
            "entryPointVersion": str(version),
            "chainId": chain_id,
            "factory": factory,
            "factoryData": "0x" + (_CREATE_ACCOUNT + args).hex(),
        }

    def _new_account(self, account_id: str) -> Account:
        """Make the account's key: one request reserves the account (across processes), makes the
        key and completes the row; concurrent ones wait for it."""
        if not self.store.reserve_account(account_id, self.custody.backend):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                account = self.store.account(account_id)
                if account is not None:
                    return account
                time.sleep(0.05)
            raise ServiceUnavailable(
                f"account {account_id!r} is being created by another request: try again",
                code="ANODE_KMS_ACCOUNT_PENDING",
            )
        try:
            key = self.custody.create_key(account_id)
        except BaseException:
            self.store.release_account(account_id)
            raise
        account = Account(account_id, key.handle, key.address)
        self.store.complete_account(account)
        audit.record(
            self.store,
            audit.entry("account_created", backend=self.custody.backend, signer=key.address,
                        detail={"accountId": account_id}),
        )  # fmt: skip
        return account

    def _eth_call(self, rpc_url: str, to: str, data: bytes) -> bytes:
        call = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "eth_call",
            "params": [{"to": to, "data": "0x" + data.hex()}, "latest"],
        }
        try:
            reply = httpx.post(rpc_url, json=call, timeout=10.0).json()
            return bytes.fromhex(reply["result"][2:])
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            raise ServiceUnavailable(
                f"chain: the factory {to}'s getAddress could not be read", code="ANODE_KMS_CHAIN_UNAVAILABLE"
            ) from None

    # -- passkeys -----------------------------------------------------------------------------------

    def _challenge(self, purpose: str, account_id: str, user_op_hash: bytes | None = None) -> Challenge:
        kms_nonce = secrets.token_bytes(32)
        if user_op_hash is None:
            value = secrets.token_bytes(32)
        else:
            value = keccak(user_op_hash + keccak(account_id.encode()) + kms_nonce)
        challenge = Challenge(
            challenge=value.hex(),
            purpose=purpose,
            account_id=account_id,
            user_op_hash=None if user_op_hash is None else "0x" + user_op_hash.hex(),
            kms_nonce="0x" + kms_nonce.hex(),
            expires_at=int(time.time()) + self.settings.challenge_seconds,
            used_at=None,
        )
        self.store.add_challenge(challenge)
        return challenge

    def registration_options(self, body: dict[str, Any]) -> dict[str, Any]:
        account = self._account(_account_id(body.get("accountId")))
        challenge = self._challenge("register", account.account_id)
        existing = [c.credential_id for c in self.store.credentials_of(account.account_id)]
        options = self.passkeys.registration_options(account.account_id, bytes.fromhex(challenge.challenge), existing)
        return {"accountId": account.account_id, "expiresAt": challenge.expires_at, "options": options}

    def register(self, body: dict[str, Any]) -> dict[str, Any]:
        account = self._account(_account_id(body.get("accountId")))
        credential = body.get("credential")
        if not isinstance(credential, dict):
            raise InvalidRequest(
                "credential must be the PublicKeyCredential JSON of the registration", field="credential"
            )
        challenge = self._registration_challenge(credential, account.account_id)
        credential_id, public_key, count = self.passkeys.verify_registration(credential, bytes.fromhex(challenge))
        try:
            self.store.register(challenge, Credential(credential_id, account.account_id, public_key, count))
        except Taken as taken:
            if taken.what == "credential":
                raise KmsReplay("this passkey is registered already", code="ANODE_KMS_PASSKEY_EXISTS") from None
            raise KmsReplay(
                "this registration challenge was used already: ask for new options", code="ANODE_KMS_CHALLENGE_USED"
            ) from None
        audit.record(
            self.store,
            audit.entry(
                "passkey_registered",
                signer=account.owner,
                detail={"accountId": account.account_id, "credentialId": credential_id},
            ),
        )
        return {"accountId": account.account_id, "credentialId": credential_id, "registered": True}

    def _registration_challenge(self, credential: dict[str, Any], account_id: str) -> str:
        response = credential.get("response")
        wrapped = {"id": credential.get("id") or "-", "response": {**(response or {}), "signature": ""}}
        challenge = read_assertion(wrapped, "credential").challenge.hex()
        issued = self.store.challenge(challenge)
        if issued is None or issued.purpose != "register" or issued.account_id != account_id:
            raise KmsUnauthenticated(
                "the registration's challenge was not issued by this KMS for this account",
                code="ANODE_KMS_CHALLENGE_UNKNOWN",
            )
        if issued.expires_at < time.time():
            raise KmsStale(
                "the registration challenge expired: ask for new options", code="ANODE_KMS_CHALLENGE_EXPIRED"
            )
        return challenge

    def authentication_options(self, body: dict[str, Any]) -> dict[str, Any]:
        account = self._account(_account_id(body.get("accountId")))
        op_hash = _bytes32(body.get("userOpHash"), "userOpHash")
        challenge = self._challenge("authenticate", account.account_id, op_hash)
        allowed = [c.credential_id for c in self.store.credentials_of(account.account_id)]
        options = self.passkeys.authentication_options(bytes.fromhex(challenge.challenge), allowed)
        return {
            "accountId": account.account_id,
            "userOpHash": challenge.user_op_hash,
            "kmsNonce": challenge.kms_nonce,
            "challenge": options["challenge"],
            "expiresAt": challenge.expires_at,
            "options": options,
        }

    # -- the dual signature -------------------------------------------------------------------------

    def sign_user_operation(
        self, body: dict[str, Any], paymaster_signature: str | None, paymaster: str | None
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        try:
            return self._sign(body, paymaster_signature, paymaster, fields)
        except AnodeError as exc:
            self._refused(exc, **fields)
            raise

    def _sign(
        self, body: dict[str, Any], signature_header: str | None, paymaster_header: str | None, fields: dict[str, Any]
    ) -> dict[str, Any]:
        account_id = _account_id(body.get("accountId"))
        fields["detail"] = {"accountId": account_id}
        chain_id = _chain_id(body.get("chainId"))
        entry_point, version, _, _ = self._entry_point(chain_id, body.get("entryPoint"))
        op = parse_user_op(body.get("userOperation"), version)
        op_hash = user_op_hash(op, version, bytes.fromhex(entry_point[2:]), chain_id)
        fields.update(user_op_hash="0x" + op_hash.hex(), chain_id=chain_id)
        account = self._account(account_id)
        fields["signer"] = account.owner
        if body.get("userSignature") in (None, "", {}):
            raise KmsUnauthenticated(
                "userSignature is missing: the user's passkey assertion is required", code="ANODE_KMS_PASSKEY_MISSING"
            )
        assertion = read_assertion(body.get("userSignature"))
        if not signature_header or not paymaster_header:
            raise KmsRefused(
                "the X-Paymaster-Signature and X-Paymaster-Address headers are required",
                code="ANODE_KMS_PAYMASTER_SIGNATURE_MISSING",
            )
        try:
            paymaster = checksum(parse_address(paymaster_header))
            paymaster_signature = parse_bytes(signature_header)
        except (InvalidRequest, ValueError, TypeError):
            raise InvalidRequest("X-Paymaster-Address must be an address and X-Paymaster-Signature 0x-hex") from None
        fields["paymaster"] = paymaster
        nonce = _bytes32(body.get("nonce"), "nonce")
        timestamp = body.get("timestamp")
        if not isinstance(timestamp, int) or isinstance(timestamp, bool):
            raise InvalidRequest("timestamp must be unix seconds (an integer)", field="timestamp")

        # 1. the window
        now = time.time()
        if abs(now - timestamp) > self.settings.signature_window_seconds:
            raise KmsStale(
                f"timestamp {timestamp} is more than {self.settings.signature_window_seconds} s from the KMS's clock "
                f"({int(now)}): sign a fresh approval",
                code="ANODE_KMS_TIMESTAMP_OUT_OF_WINDOW",
            )
        # 2. the nonce: from here on, the answer uses it up, whatever it is (the signer, the
        # challenge and the passkey are read in the same statement, for the checks below)
        nonce_text = "0x" + nonce.hex()
        found = self.store.lookup(paymaster, nonce_text, assertion.challenge.hex(), assertion.credential_id)
        if found.nonce_used:
            raise _nonce_reused(paymaster, nonce_text)
        fields["burn"] = (paymaster, nonce_text)
        # 3. the paymaster
        digest = eip712.approval_digest(chain_id, op_hash, account_id, keccak(assertion.signature), nonce, timestamp)
        if not _signed_by(digest, paymaster_signature, paymaster):
            raise KmsRefused(
                f"X-Paymaster-Signature is not {paymaster}'s PaymasterApproval of this userOpHash, accountId, "
                "assertion, nonce and timestamp (docs/kms.md gives the EIP-712 type)",
                code="ANODE_KMS_PAYMASTER_SIGNATURE_INVALID",
            )
        self.signers.check(found.signer, paymaster, now)
        # 4. the passkey
        challenge, credential, count = self._verified_assertion(assertion, found, account_id, op_hash)
        # 5. the owner's signature: kept back until the nonce, challenge and counter are taken
        owner_digest = (
            op_hash if version is EntryPointVersion.V08 else keccak(b"\x19Ethereum Signed Message:\n32" + op_hash)
        )
        signed = self.custody.sign_digest(account.key_handle, owner_digest)
        if signed.signer != account.owner:
            raise ServiceUnavailable(
                "custody signed with a key other than the account's owner", code="ANODE_KMS_CUSTODY_MISMATCH"
            )
        record = audit.entry(
            "signed",
            backend=self.custody.backend,
            signer=account.owner,
            user_op_hash="0x" + op_hash.hex(),
            chain_id=chain_id,
            paymaster=paymaster,
            detail={"accountId": account_id, "credentialId": credential},
        )
        try:
            self.store.take(
                paymaster=paymaster,
                nonce=nonce_text,
                challenge=challenge,
                credential_id=credential,
                sign_count=count,
                then=lambda cursor: self.appender.append(cursor, record),
            )
        except Taken as taken:
            raise _taken(taken.what, paymaster, nonce_text, count) from None
        return {
            "success": True,
            "signature": "0x" + signed.signature.hex(),
            "userOpHash": "0x" + op_hash.hex(),
            "ownerAddress": account.owner,
            "verificationProof": {
                "paymasterVerified": True,
                "userPasskeyVerified": True,
                "dualSignatureMode": True,
                "paymaster": paymaster,
                "credentialId": credential,
            },
        }

    def _verified_assertion(
        self, assertion: Assertion, found: Found, account_id: str, op_hash: bytes
    ) -> tuple[str, str, int]:
        challenge = found.challenge
        if challenge is None or challenge.purpose != "authenticate":
            raise KmsUnauthenticated(
                "the assertion's challenge was not issued by this KMS: ask POST /webauthn/authenticate/options",
                code="ANODE_KMS_CHALLENGE_UNKNOWN",
            )
        if challenge.account_id != account_id:
            raise KmsUnauthenticated(
                "the assertion's challenge was issued for another account", code="ANODE_KMS_CHALLENGE_OTHER_ACCOUNT"
            )
        if challenge.user_op_hash != "0x" + op_hash.hex():
            raise KmsUnauthenticated(
                "the passkey approved another operation (the userOperation changed after it signed): "
                "ask for a new challenge for this userOpHash",
                code="ANODE_KMS_USEROP_CHANGED",
            )
        if challenge.expires_at < time.time():
            raise KmsStale("the passkey challenge expired: ask for a new one", code="ANODE_KMS_CHALLENGE_EXPIRED")
        credential = found.credential
        if credential is None:
            raise KmsUnauthenticated("this passkey is not registered with the KMS", code="ANODE_KMS_PASSKEY_UNKNOWN")
        if credential.account_id != account_id:
            raise KmsUnauthenticated(
                f"this passkey belongs to another account, not {account_id!r}", code="ANODE_KMS_PASSKEY_OTHER_ACCOUNT"
            )
        count = self.passkeys.verify_assertion(assertion, assertion.challenge, credential.public_key)
        return challenge.challenge, credential.credential_id, count

    def health(self) -> dict[str, Any]:
        custody, store = self.custody.health(), self.store.ping()
        return {
            "status": "ok" if custody is None and store is None else "degraded",
            "custody": {"backend": self.custody.backend, "status": custody or "ok"},
            "store": {"status": store or "ok"},
        }
