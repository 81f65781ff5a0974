"""Passkeys with py_webauthn: registration and assertion checks, ES256 only, user verification required.

py_webauthn checks what the WebAuthn spec asks of a relying party: the ceremony type, the
challenge, the origin, the rp id hash, the user-present and user-verified flags and the
signature over ``authenticatorData ‖ sha256(clientDataJSON)``. The sign counter and the
challenge's single use are the store's (:meth:`anode.kms.store.KmsStore.take`), where
they are taken atomically; here the counter is only read from the assertion.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url
from webauthn.helpers.cose import COSEAlgorithmIdentifier
from webauthn.helpers.exceptions import InvalidAuthenticationResponse, InvalidRegistrationResponse
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from anode.errors import InvalidRequest, KmsUnauthenticated
from anode.kms.config import WebauthnSettings

ES256 = [COSEAlgorithmIdentifier.ECDSA_SHA_256]


@dataclass(frozen=True, slots=True)
class Assertion:
    """What the KMS reads from an assertion before verifying it."""

    credential_id: str
    challenge: bytes
    signature: bytes
    raw: dict[str, Any]


def _b64(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidRequest(f"{field} must be a base64url string", field=field)
    try:
        return base64url_to_bytes(value)
    except ValueError:
        raise InvalidRequest(f"{field} must be base64url", field=field) from None


def read_assertion(credential: Any, field: str = "userSignature") -> Assertion:
    """The assertion's credential id, challenge and signature (not yet verified)."""
    if not isinstance(credential, dict) or not isinstance(credential.get("response"), dict):
        raise InvalidRequest(f"{field} must be a WebAuthn assertion (PublicKeyCredential JSON)", field=field)
    response = credential["response"]
    client_data = _b64(response.get("clientDataJSON"), f"{field}.response.clientDataJSON")
    try:
        challenge = base64url_to_bytes(orjson.loads(client_data)["challenge"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise InvalidRequest(f"{field}.response.clientDataJSON holds no challenge", field=field) from None
    credential_id = credential.get("id")
    if not isinstance(credential_id, str) or not credential_id:
        raise InvalidRequest(f"{field}.id must be the credential id", field=field)
    signature = _b64(response.get("signature"), f"{field}.response.signature")
    return Assertion(credential_id, challenge, signature, credential)


def user_handle(account_id: str) -> bytes:
    return hashlib.sha256(b"anode-kms:" + account_id.encode()).digest()


class Passkeys:
    def __init__(self, settings: WebauthnSettings) -> None:
        self._settings = settings

    def registration_options(self, account_id: str, challenge: bytes, existing: list[str]) -> dict[str, Any]:
        options = generate_registration_options(
            rp_id=self._settings.rp_id,
            rp_name=self._settings.rp_name,
            user_name=account_id,
            user_id=user_handle(account_id),
            challenge=challenge,
            authenticator_selection=AuthenticatorSelectionCriteria(
                resident_key=ResidentKeyRequirement.PREFERRED, user_verification=UserVerificationRequirement.REQUIRED
            ),
            exclude_credentials=[PublicKeyCredentialDescriptor(id=base64url_to_bytes(c)) for c in existing],
            supported_pub_key_algs=ES256,
        )
        loaded: dict[str, Any] = orjson.loads(options_to_json(options))
        return loaded

    def authentication_options(self, challenge: bytes, allowed: list[str]) -> dict[str, Any]:
        options = generate_authentication_options(
            rp_id=self._settings.rp_id,
            challenge=challenge,
            allow_credentials=[PublicKeyCredentialDescriptor(id=base64url_to_bytes(c)) for c in allowed],
            user_verification=UserVerificationRequirement.REQUIRED,
        )
        loaded: dict[str, Any] = orjson.loads(options_to_json(options))
        return loaded

    def verify_registration(self, credential: dict[str, Any], challenge: bytes) -> tuple[str, bytes, int]:
        """``(credential id, COSE public key, sign count)`` of a verified registration."""
        try:
            verified = verify_registration_response(
                credential=credential,
                expected_challenge=challenge,
                expected_rp_id=self._settings.rp_id,
                expected_origin=self._settings.origins,
                require_user_verification=True,
                supported_pub_key_algs=ES256,
            )
        except (InvalidRegistrationResponse, ValueError, KeyError, TypeError) as exc:
            raise KmsUnauthenticated(
                f"the passkey registration does not verify: {exc}", code="ANODE_KMS_REGISTRATION_INVALID"
            ) from None
        return bytes_to_base64url(verified.credential_id), verified.credential_public_key, verified.sign_count

    def verify_assertion(self, assertion: Assertion, challenge: bytes, public_key: bytes) -> int:
        """The assertion's sign counter, once its challenge, origin, rp id, flags and signature verify."""
        try:
            verified = verify_authentication_response(
                credential=assertion.raw,
                expected_challenge=challenge,
                expected_rp_id=self._settings.rp_id,
                expected_origin=self._settings.origins,
                credential_public_key=public_key,
                credential_current_sign_count=0,  # the counter is checked atomically in the store
                require_user_verification=True,
            )
        except (InvalidAuthenticationResponse, ValueError, KeyError, TypeError) as exc:
            raise KmsUnauthenticated(
                f"the passkey assertion does not verify: {exc}", code="ANODE_KMS_PASSKEY_INVALID"
            ) from None
        return int(verified.new_sign_count)
