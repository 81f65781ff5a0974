"""The shared ECDSA plumbing of the KMS and HSM backends, against ``cryptography`` (OpenSSL) as reference.

OpenSSL produces exactly what the backends hand back — DER signatures with either ``s``, and
``SubjectPublicKeyInfo`` public keys — so every conversion is checked against an independent
implementation, and high-``s`` signatures are made on purpose.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature, encode_dss_signature
from eth_account import Account
from hypothesis import given, settings
from hypothesis import strategies as st

from anode.errors import SignerUnavailable
from anode.signers.base import SECP256K1_N
from anode.signers.ecdsa import (
    DerError,
    address_of_point,
    der_to_rs,
    low_s,
    point_from_ec_point,
    point_from_spki,
    raw_to_rs,
    signed_digest,
)
from tests.support.signer_contract import assert_valid

secrets_ = st.integers(1, SECP256K1_N - 1)
digests = st.binary(min_size=32, max_size=32)


def _key(secret: int) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(secret, ec.SECP256K1())


def _point(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def _spki(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@settings(max_examples=60, deadline=None)
@given(secrets_, digests, st.booleans())
def test_openssl_signatures_become_canonical_ethereum_signatures(secret: int, digest: bytes, high: bool) -> None:
    key = _key(secret)
    der = key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    r, s = decode_dss_signature(der)
    if high == (s <= SECP256K1_N // 2):  # make the s we want: both are valid ECDSA
        s = SECP256K1_N - s
        der = encode_dss_signature(r, s)
    assert der_to_rs(der) == (r, s)

    point = point_from_spki(_spki(key))
    assert point == _point(key)
    address = address_of_point(point)
    assert address == Account.from_key(secret.to_bytes(32, "big")).address

    signed = signed_digest(digest, r, s, point, address)
    assert signed.s == low_s(s) <= SECP256K1_N // 2
    assert_valid(signed, digest, address)


def test_low_s_is_n_minus_s_in_the_upper_half_only() -> None:
    half = SECP256K1_N // 2
    assert low_s(1) == 1
    assert low_s(half) == half
    assert low_s(half + 1) == SECP256K1_N - half - 1
    assert low_s(SECP256K1_N - 1) == 1


def test_a_signature_by_another_key_or_of_another_digest_is_refused() -> None:
    key, other = _key(7), _key(8)
    digest = b"\x42" * 32
    point = _point(key)
    address = address_of_point(point)
    r, s = decode_dss_signature(other.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()))))
    with pytest.raises(SignerUnavailable, match="does not recover") as caught:
        signed_digest(digest, r, s, point, address)
    assert caught.value.code == "ANODE_SIGNER_BAD_SIGNATURE"
    # what moto does with MessageType=DIGEST: sign sha256(digest)
    r, s = decode_dss_signature(key.sign(digest, ec.ECDSA(hashes.SHA256())))
    with pytest.raises(SignerUnavailable, match="hashed the digest again"):
        signed_digest(digest, r, s, point, address)


@pytest.mark.parametrize(("r", "s"), [(0, 1), (1, 0), (SECP256K1_N, 1), (1, SECP256K1_N)])
def test_out_of_range_values_are_refused(r: int, s: int) -> None:
    point = _point(_key(7))
    with pytest.raises(SignerUnavailable, match="out-of-range"):
        signed_digest(b"\x01" * 32, r, s, point, address_of_point(point))


def test_der_with_long_form_lengths_and_leading_zeros() -> None:
    r, s = SECP256K1_N - 5, 2**255 + 3  # both have the top bit set: a 0x00 pad byte each
    der = encode_dss_signature(r, s)
    assert der[4] == 0  # the pad
    assert der_to_rs(der) == (r, s)
    # the same SEQUENCE written with a long-form length, which DER readers must accept
    body = der[2:]
    assert der_to_rs(bytes([0x30, 0x81, len(body)]) + body) == (r, s)


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"\x30",
        b"\x31\x06\x02\x01\x01\x02\x01\x01",  # SET, not SEQUENCE
        b"\x30\x06\x02\x01\x01\x02\x01",  # truncated
        b"\x30\x06\x02\x01\x01\x02\x01\x01\x00",  # trailing byte
        b"\x30\x09\x02\x01\x01\x02\x01\x01\x02\x01\x01",  # three integers
        b"\x30\x03\x02\x01\x01",  # one integer
    ],
)
def test_malformed_der_signatures_are_der_errors(bad: bytes) -> None:
    with pytest.raises(DerError):
        der_to_rs(bad)


def test_raw_r_s_needs_64_bytes() -> None:
    assert raw_to_rs(b"\x00" * 31 + b"\x01" + b"\x00" * 31 + b"\x02") == (1, 2)
    with pytest.raises(DerError, match="64-byte"):
        raw_to_rs(b"\x01" * 63)


def test_spki_of_another_curve_or_algorithm_is_refused() -> None:
    with pytest.raises(DerError, match="not a secp256k1 key"):
        point_from_spki(_spki(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(DerError, match="not an elliptic-curve public key"):
        point_from_spki(_spki(rsa.generate_private_key(public_exponent=65537, key_size=1024)))
    with pytest.raises(DerError, match="trailing"):
        point_from_spki(_spki(_key(3)) + b"\x00")


def test_ec_point_forms() -> None:
    """CKA_EC_POINT: DER OCTET STRING (the standard), or a bare point (some modules)."""
    key = _key(11)
    point = _point(key)
    compressed = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    assert point_from_ec_point(b"\x04\x41" + point) == point
    assert point_from_ec_point(point) == point
    assert point_from_ec_point(compressed) == point
    assert point_from_ec_point(b"\x04\x21" + compressed) == point
    with pytest.raises(DerError):
        point_from_ec_point(b"\x04\x41" + b"\x04" + b"\x00" * 64)  # not on the curve
    with pytest.raises(DerError):
        point_from_ec_point(b"\x03\x41" + point)  # BIT STRING, not OCTET STRING
