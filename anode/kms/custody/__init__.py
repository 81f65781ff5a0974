"""Where the accounts' owner keys live: a small Protocol (``base.py``) and one module per backend.

    base.py         Custody: create a key for an account, its address, sign a digest
    pkcs11.py       an HSM (SoftHSM2 in tests): one non-extractable secp256k1 key per account
    development.py  keys in files, encrypted under a key-encryption key; refused in production

:func:`build_custody` picks the backend from ``custody.type``. docs/kms.md says how a TEE
(an OP-TEE trusted application, a Nitro enclave) plugs in behind the same Protocol.
"""

from __future__ import annotations

from anode.kms.config import DevelopmentCustody, KmsSettings, Pkcs11Custody
from anode.kms.custody.base import Custody, KeyHandle


def build_custody(settings: KmsSettings) -> Custody:
    custody = settings.custody
    if isinstance(custody, Pkcs11Custody):
        from anode.kms.custody.pkcs11 import Pkcs11Custody as Backend

        return Backend(custody)
    assert isinstance(custody, DevelopmentCustody)
    from anode.kms.custody.development import DevelopmentCustody as DevBackend

    return DevBackend(custody)


__all__ = ["Custody", "KeyHandle", "build_custody"]
