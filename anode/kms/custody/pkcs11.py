"""``custody: {type: pkcs11}``: one secp256k1 key pair per account, generated inside the token.

Each account's key is labelled ``kms:<first 40 hex digits of sha256(accountId)>``, made with
:func:`anode.signers.pkcs11.generate_key` (sensitive, not extractable, sign only), so creating the
key of an account that already has one finds it instead. Signing is ``CKM_ECDSA`` over the digest
on one session, every call under the library's lock (:mod:`anode.signers.pkcs11` says why), and
the raw ``r ‖ s`` is completed by :func:`anode.signers.ecdsa.signed_digest`, which refuses a
signature that does not recover to the key's address.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import cast

import pkcs11
from pkcs11 import Mechanism, ObjectClass
from pkcs11.exceptions import NoSuchKey, PKCS11Error
from pkcs11.types import SignMixin

from anode.errors import ConfigError, SignerUnavailable
from anode.kms.config import Pkcs11Custody as Settings
from anode.kms.custody.base import KeyHandle
from anode.signers import pkcs11 as hsm
from anode.signers.base import SignedDigest
from anode.signers.ecdsa import BAD_SIGNATURE, DerError, address_of_point, raw_to_rs, signed_digest


def label_of(account_id: str) -> str:
    return "kms:" + hashlib.sha256(account_id.encode()).hexdigest()[:40]


class Pkcs11Custody:
    backend = "pkcs11"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._pin = settings.the_pin()
        self._signer_settings = hsm.Settings(
            type="pkcs11", module=settings.module, token_label=settings.token_label, pin=self._pin, key_label="-"
        )
        self._lock = hsm.library_lock(settings.module)
        self._keys: dict[str, tuple[SignMixin, bytes, str]] = {}
        with self._lock:
            self._token = hsm.open_token(self._signer_settings)
            self._session: pkcs11.Session | None = hsm.open_session(self._token, self._pin)

    def _session_now(self) -> pkcs11.Session:
        if self._session is None:
            self._session = hsm.open_session(self._token, self._pin)
        return self._session

    def _key(self, handle: str) -> tuple[SignMixin, bytes, str]:
        """The private key, public point and address of ``handle`` (library lock held)."""
        known = self._keys.get(handle)
        if known is None:
            session = self._session_now()
            try:
                private = cast(SignMixin, session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=handle))
            except NoSuchKey:
                raise SignerUnavailable(f"custody: the token has no key {handle!r}") from None
            point = hsm.key_point(session, handle)
            known = self._keys[handle] = (private, point, address_of_point(point))
        return known

    def create_key(self, account_id: str) -> KeyHandle:
        handle = label_of(account_id)
        with self._lock:
            try:
                return KeyHandle(handle, self._key(handle)[2])
            except SignerUnavailable:
                pass
            self._release()  # generation opens a read-write session of its own
        settings = self._signer_settings.model_copy(update={"key_label": handle})
        try:
            address = hsm.generate_key(settings)
        except ConfigError as exc:
            raise SignerUnavailable(f"custody: {exc.message}") from None
        return KeyHandle(handle, address)

    def address(self, handle: str) -> str:
        with self._lock:
            return self._key(handle)[2]

    def sign_digest(self, handle: str, digest: bytes) -> SignedDigest:
        with self._lock:
            try:
                key, point, address = self._key(handle)
                try:
                    raw = bytes(key.sign(digest, mechanism=Mechanism.ECDSA))
                except PKCS11Error:  # a dropped session: one retry on a new one
                    self._release()
                    key, point, address = self._key(handle)
                    raw = bytes(key.sign(digest, mechanism=Mechanism.ECDSA))
            except PKCS11Error as exc:
                raise SignerUnavailable(f"custody: PKCS#11 signing failed ({type(exc).__name__})") from None
        try:
            r, s = raw_to_rs(raw)
        except DerError as exc:
            raise SignerUnavailable(f"custody: {exc}", code=BAD_SIGNATURE) from None
        return signed_digest(digest, r, s, point, address)

    def health(self) -> str | None:
        with self._lock:
            try:
                self._session_now().generate_random(64)
            except PKCS11Error as exc:
                self._release()
                return f"PKCS#11 token {self._settings.token_label!r}: {type(exc).__name__}"
        return None

    def _release(self) -> None:
        session, self._session = self._session, None
        self._keys.clear()
        if session is not None:
            with contextlib.suppress(PKCS11Error):
                session.close()

    def close(self) -> None:
        with self._lock:
            self._release()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(token={self._settings.token_label})"
