"""``signer: {type: pkcs11}``: a secp256k1 key inside a PKCS#11 HSM (YubiHSM, CloudHSM, Luna, SoftHSM2).

The key is generated inside the token (:func:`generate_key`: ``CKA_SENSITIVE`` true,
``CKA_EXTRACTABLE`` false, signing only) and never leaves it. The address comes from the public
key object's ``CKA_EC_POINT``; each signature is ``CKM_ECDSA`` over the 32-byte digest (the token
does not hash), giving raw ``r ‖ s``, which :mod:`anode.signers.ecdsa` normalises (low s) and
completes with ``v``.

python-pkcs11 initialises the library with ``C_Initialize(NULL)``, which by the PKCS#11
standard promises the library that no two threads call it at once, and SoftHSM2 then runs
without its own locks (concurrent ``C_Sign`` on two sessions corrupts its heap). So every call
into one library goes through one lock per library, and each signer signs on its own worker
thread (:mod:`anode.signers.threaded`) with one session: the event loop never waits on the
token, and the token sees one call at a time (SoftHSM2 signs in about 0.5 ms, so one library
serves about 2,000 signatures a second). Login is per token, not per session (see
:func:`open_session` for how a wrong PIN is still refused when the process is already logged
in). A session the token has dropped (token reset, HSM fail-over) is replaced once before a
signature is reported as failed.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import secrets
import threading
from pathlib import Path
from typing import cast

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11.exceptions import (
    MultipleObjectsReturned,
    NoSuchKey,
    NoSuchToken,
    PinIncorrect,
    PinLenRange,
    PKCS11Error,
    UserAlreadyLoggedIn,
)
from pkcs11.types import SignMixin
from pydantic import SecretStr

from anode.errors import ConfigError, SignerUnavailable
from anode.signers.base import SignedDigest
from anode.signers.ecdsa import (
    BAD_SIGNATURE,
    SECP256K1_OID,
    DerError,
    address_of_point,
    point_from_ec_point,
    raw_to_rs,
    signed_digest,
)
from anode.signers.registry import SignerSettingsBase
from anode.signers.threaded import ThreadedSigner

log = logging.getLogger("anode.signers.pkcs11")


class Settings(SignerSettingsBase):
    module: Path  # the vendor's PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so
    token_label: str
    pin: SecretStr
    key_label: str


#: one lock per PKCS#11 library: it was initialised without locking arguments (see above)
_LIBRARY_LOCKS: dict[str, threading.Lock] = {}


def library_lock(module: Path) -> threading.Lock:
    """The lock every call into the library at ``module`` is made under."""
    return _LIBRARY_LOCKS.setdefault(str(module), threading.Lock())


def _what(exc: PKCS11Error) -> str:
    """The PKCS#11 error's name (``PinIncorrect``, ``DeviceRemoved``); never a PIN."""
    return type(exc).__name__


def open_token(settings: Settings) -> pkcs11.Token:
    try:
        library = pkcs11.lib(str(settings.module))
    except PKCS11Error:
        raise ConfigError(f"signer.module: cannot load the PKCS#11 library {settings.module}") from None
    try:
        return library.get_token(token_label=settings.token_label)
    except NoSuchToken:
        raise ConfigError(
            f"signer.token_label: no token labelled {settings.token_label!r} in {settings.module}"
        ) from None
    except MultipleObjectsReturned:
        raise ConfigError(f"signer.token_label: several tokens are labelled {settings.token_label!r}") from None


#: token → a keyed digest of the PIN this process logged in with (login is per token, not per session)
_LOGINS: dict[tuple[str, bytes], bytes] = {}
_SALT = secrets.token_bytes(32)


def _pin_digest(pin: SecretStr) -> bytes:
    return hmac.digest(_SALT, pin.get_secret_value().encode(), "sha256")


def open_session(token: pkcs11.Token, pin: SecretStr, *, rw: bool = False) -> pkcs11.Session:
    """A session logged in as the user.

    Login is token-wide: once this process is logged in, the token answers a second login with
    "already logged in" without checking the PIN. The PIN is then compared with the one this
    process logged in with, so a wrong PIN is refused either way.
    """
    which = (token.label, bytes(token.serial))
    try:
        session = token.open(rw=rw, user_pin=pin.get_secret_value())
    except UserAlreadyLoggedIn:
        known = _LOGINS.get(which)
        if known is not None and not hmac.compare_digest(known, _pin_digest(pin)):
            raise ConfigError("signer.pin: the token refused the PIN") from None
        return token.open(rw=rw)
    except (PinIncorrect, PinLenRange):
        raise ConfigError("signer.pin: the token refused the PIN") from None
    _LOGINS[which] = _pin_digest(pin)
    return session


def _find(session: pkcs11.Session, object_class: ObjectClass, label: str) -> pkcs11.Key:
    try:
        return session.get_key(object_class=object_class, key_type=KeyType.EC, label=label)
    except NoSuchKey:
        kind = "private" if object_class == ObjectClass.PRIVATE_KEY else "public"
        raise ConfigError(f"signer.key_label: no EC {kind} key labelled {label!r} on the token") from None
    except MultipleObjectsReturned:
        raise ConfigError(f"signer.key_label: several keys are labelled {label!r}; labels must be unique") from None


def key_point(session: pkcs11.Session, label: str) -> bytes:
    """The uncompressed public point of the secp256k1 key pair ``label``; checks the curve."""
    public = _find(session, ObjectClass.PUBLIC_KEY, label)
    if bytes(public[Attribute.EC_PARAMS]) != SECP256K1_OID:
        raise ConfigError(f"signer.key_label: key {label!r} is not on secp256k1")
    try:
        return point_from_ec_point(bytes(public[Attribute.EC_POINT]))
    except DerError as exc:
        raise ConfigError(f"signer.key_label: key {label!r}: CKA_EC_POINT {exc}") from None


class Pkcs11Signer(ThreadedSigner):
    """One key pair on a token, one session, one worker thread."""

    backend = "pkcs11"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = library_lock(settings.module)
        self._session: pkcs11.Session | None = None
        self._key: SignMixin | None = None
        with self._lock:
            self._token = open_token(settings)
            try:
                session, key = self._open()
                point = key_point(session, settings.key_label)
                if key[Attribute.EXTRACTABLE] or not key[Attribute.SENSITIVE]:
                    log.warning("PKCS#11 key %r can leave the token (extractable, not sensitive)", settings.key_label)
            except PKCS11Error as exc:
                self._close_session()
                raise ConfigError(f"signer: PKCS#11 token {settings.token_label!r}: {_what(exc)}") from None
            except ConfigError:
                self._close_session()
                raise
        self._point = point
        self._address = address_of_point(point)
        super().__init__(1, "anode-pkcs11")

    def _open(self) -> tuple[pkcs11.Session, SignMixin]:
        """A new session and the private key's handle in it (library lock held)."""
        self._session = open_session(self._token, self._settings.pin)
        self._key = cast(SignMixin, _find(self._session, ObjectClass.PRIVATE_KEY, self._settings.key_label))
        return self._session, self._key

    def _sign_on_session(self, digest: bytes) -> bytes:
        key = self._key if self._key is not None else self._open()[1]
        return bytes(key.sign(digest, mechanism=Mechanism.ECDSA))

    @property
    def address(self) -> str:
        return self._address

    def sign_blocking(self, digest: bytes) -> SignedDigest:
        """``CKM_ECDSA`` under the library lock; runs on the signer's worker thread."""
        with self._lock:
            try:
                try:
                    raw = self._sign_on_session(digest)
                except PKCS11Error as exc:  # the token may have dropped the session: one retry on a new one
                    log.warning("pkcs11: signing failed (%s); retrying on a new session", _what(exc))
                    self._close_session()
                    raw = self._sign_on_session(digest)
            except PKCS11Error as exc:
                raise SignerUnavailable(f"pkcs11: signing failed ({_what(exc)})") from None
            except ConfigError as exc:  # no new session: token gone, PIN changed, key removed
                raise SignerUnavailable(f"pkcs11: no session to sign with ({exc.message})") from None
        try:
            r, s = raw_to_rs(raw)
        except DerError as exc:
            raise SignerUnavailable(f"pkcs11: {exc}", code=BAD_SIGNATURE) from None
        return signed_digest(digest, r, s, self._point, self._address)

    def release(self) -> None:
        """Close the session (the process's last one logs out)."""
        with self._lock:
            self._close_session()

    def _close_session(self) -> None:
        session, self._session, self._key = self._session, None, None
        if session is not None:
            with contextlib.suppress(PKCS11Error):
                session.close()

    def __repr__(self) -> str:
        where = f"token={self._settings.token_label}, key={self._settings.key_label}"
        return f"{type(self).__name__}({where}, address={self._address})"


def build(settings: Settings) -> Pkcs11Signer:
    return Pkcs11Signer(settings)


def generate_key(settings: Settings) -> str:
    """``anode keys generate`` for PKCS#11: a secp256k1 key pair made inside the token; its address.

    The private key is sensitive, not extractable and may only sign. A key already labelled
    ``settings.key_label`` is refused (never replaced).
    """
    with library_lock(settings.module):
        return _generate(settings)


def _generate(settings: Settings) -> str:
    session = open_session(open_token(settings), settings.pin, rw=True)
    try:
        for object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
            if list(session.get_objects({Attribute.CLASS: object_class, Attribute.LABEL: settings.key_label})):
                raise ConfigError(f"signer.key_label: the token already has a key labelled {settings.key_label!r}")
        params = session.create_domain_parameters(KeyType.EC, {Attribute.EC_PARAMS: SECP256K1_OID}, local=True)
        params.generate_keypair(
            id=secrets.token_bytes(16),
            label=settings.key_label,
            store=True,
            capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
            private_template={
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.PRIVATE: True,
                Attribute.DERIVE: False,
            },
        )
        return address_of_point(key_point(session, settings.key_label))
    except PKCS11Error as exc:
        raise ConfigError(f"signer: PKCS#11 key generation failed ({_what(exc)})") from None
    finally:
        session.close()
