"""In-process signers: a raw hex key and an encrypted JSON keystore; the dev key generator."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from coincurve import PublicKey
from eth_account import Account
from eth_keys import keys
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from anode.errors import ConfigError
from anode.signers.base import SECP256K1_N, Signer
from anode.signers.local import KeystoreSigner, LocalKeySigner, generate_dev_key
from anode.signers.registry import SignerSettingsBase, build_signer, signer_settings

#: anvil account 0: a key whose address everyone knows
KEY_HEX = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
KEY_ADDRESS = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
PASSWORD = "correct horse battery staple"

private_keys = st.integers(1, SECP256K1_N - 1).map(lambda n: n.to_bytes(32, "big"))
digests = st.binary(min_size=32, max_size=32)


def SignerSettings(**fields: Any) -> SignerSettingsBase:
    return signer_settings(fields)


def _recover_coincurve(digest: bytes, signature: bytes) -> str:
    public = PublicKey.from_signature_and_message(signature[:64] + bytes([signature[64] - 27]), digest, hasher=None)
    return to_checksum_address(keccak(public.format(compressed=False)[1:])[12:])


def _recover_eth_keys(digest: bytes, r: int, s: int, v: int) -> str:
    return keys.Signature(vrs=(v - 27, r, s)).recover_public_key_from_msg_hash(digest).to_checksum_address()


# -- LocalKeySigner ---------------------------------------------------------------------------


def test_address_is_the_keys_ethereum_address() -> None:
    assert LocalKeySigner.from_hex(KEY_HEX).address == KEY_ADDRESS
    assert LocalKeySigner.from_hex("0x" + KEY_HEX).address == KEY_ADDRESS
    assert LocalKeySigner.from_hex("0X" + KEY_HEX.upper()).address == KEY_ADDRESS


def test_local_signer_satisfies_the_signer_protocol() -> None:
    signer = LocalKeySigner.from_hex(KEY_HEX)
    assert isinstance(signer, Signer)
    assert signer.backend == "local"


@settings(max_examples=150, deadline=None)
@given(private_keys, digests)
def test_signatures_recover_to_the_signer_low_s_and_v_27_28(key: bytes, digest: bytes) -> None:
    signer = LocalKeySigner(key)
    signed = signer.sign_now(digest)
    assert signed.digest == digest
    assert signed.signer == signer.address == Account.from_key(key).address
    assert signed.v in (27, 28)
    assert 0 < signed.s <= SECP256K1_N // 2, "high s: OpenZeppelin's ECDSA.recover would revert"
    assert 0 < signed.r < SECP256K1_N
    sig = signed.signature
    assert len(sig) == 65
    assert sig == signed.r.to_bytes(32, "big") + signed.s.to_bytes(32, "big") + bytes([signed.v])
    assert _recover_coincurve(digest, sig) == signer.address
    assert _recover_eth_keys(digest, signed.r, signed.s, signed.v) == signer.address


async def test_async_signing_signs_exactly_the_digest_given() -> None:
    signer = LocalKeySigner.from_hex(KEY_HEX)
    digest = keccak(b"some getHash() result")
    signed = await signer.unsafe_sign_hash(digest)
    assert signed == signer.sign_now(digest)  # RFC 6979: deterministic
    # eth-account's unsafe_sign_hash signs the same digest the same way
    reference = Account.unsafe_sign_hash(digest, "0x" + KEY_HEX)
    assert (signed.r, signed.s, signed.v) == (reference.r, reference.s, reference.v)
    await signer.aclose()


def test_repr_and_str_never_show_the_key() -> None:
    signer = LocalKeySigner.from_hex(KEY_HEX)
    for text in (repr(signer), str(signer), f"{signer}", f"{signer!r}"):
        assert KEY_HEX not in text.lower()
        assert KEY_ADDRESS in text


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("0x" + "zz" * 32, "hex"),
        ("0x" + "11" * 31, "32 bytes"),
        ("0x" + "11" * 33, "32 bytes"),
        ("0x" + "00" * 32, "not a valid secp256k1 key"),
        ("0x" + f"{SECP256K1_N:064x}", "not a valid secp256k1 key"),
        ("0x" + "ab" * 31 + "a", "hex"),  # odd digit count
    ],
)
def test_bad_private_key_is_a_config_error_that_does_not_echo_it(value: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        LocalKeySigner.from_hex(value)
    assert reason in caught.value.message
    assert value[2:] not in caught.value.message
    assert value[2:] not in repr(caught.value)


# -- KeystoreSigner ---------------------------------------------------------------------------


def _keystore(tmp_path: Path, kdf: str, key: str = KEY_HEX, password: str = PASSWORD) -> Path:
    # tiny work factors: these tests check decryption, not the KDF's strength
    document = Account.encrypt("0x" + key, password, kdf=kdf, iterations=2)  # type: ignore[arg-type]
    path = tmp_path / f"keystore-{kdf}.json"
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize("kdf", ["scrypt", "pbkdf2"])
async def test_keystore_decrypts_to_the_same_key(tmp_path: Path, kdf: str) -> None:
    signer = KeystoreSigner.from_file(_keystore(tmp_path, kdf), PASSWORD)
    assert signer.backend == "keystore"
    assert signer.address == KEY_ADDRESS
    digest = keccak(b"x")
    signed = await signer.unsafe_sign_hash(digest)
    assert _recover_coincurve(digest, signed.signature) == KEY_ADDRESS
    assert KEY_HEX not in repr(signer).lower()


def test_wrong_keystore_password_is_a_config_error_without_the_password(tmp_path: Path) -> None:
    path = _keystore(tmp_path, "pbkdf2")
    attempt = "my-wrong-password-1234"
    with pytest.raises(ConfigError) as caught:
        KeystoreSigner.from_file(path, attempt)
    assert "wrong password" in caught.value.message
    assert attempt not in caught.value.message
    assert PASSWORD not in caught.value.message
    assert caught.value.__cause__ is None  # `from None`: no chained error carrying details


def test_missing_keystore_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        KeystoreSigner.from_file(tmp_path / "absent.json", PASSWORD)


def test_keystore_that_is_not_json_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "k.json"
    path.write_text("not json")
    with pytest.raises(ConfigError, match="not a JSON keystore"):
        KeystoreSigner.from_file(path, PASSWORD)


@pytest.mark.parametrize("document", [{"version": 3}, []])
def test_json_that_is_not_a_keystore_is_a_config_error(tmp_path: Path, document: object) -> None:
    """A JSON file that is not a V3 keystore must stop start-up with a message, not a KeyError."""
    path = tmp_path / "k.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ConfigError) as caught:
        KeystoreSigner.from_file(path, PASSWORD)
    assert "keystore" in caught.value.message


# -- signer settings → signer (wiring) --------------------------------------------------------


def test_build_signer_reads_the_password_from_a_file(tmp_path: Path) -> None:
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD + "\n")  # a trailing newline, as editors leave it
    settings = SignerSettings(type="keystore", keystore_path=_keystore(tmp_path, "pbkdf2"), password_file=password_file)
    assert build_signer(settings).address == KEY_ADDRESS


def test_build_signer_reads_the_password_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANODE_TEST_KEYSTORE_PASSWORD", PASSWORD)
    settings = SignerSettings(
        type="keystore", keystore_path=_keystore(tmp_path, "pbkdf2"), password_env="ANODE_TEST_KEYSTORE_PASSWORD"
    )
    assert build_signer(settings).address == KEY_ADDRESS


def test_build_signer_names_a_missing_password_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANODE_TEST_UNSET_PASSWORD", raising=False)
    settings = SignerSettings(
        type="keystore", keystore_path=_keystore(tmp_path, "pbkdf2"), password_env="ANODE_TEST_UNSET_PASSWORD"
    )
    with pytest.raises(ConfigError, match="ANODE_TEST_UNSET_PASSWORD"):
        build_signer(settings)


def test_build_signer_local() -> None:
    signer = build_signer(SignerSettings(type="local", private_key="0x" + KEY_HEX))  # type: ignore[arg-type]
    assert signer.address == KEY_ADDRESS
    assert signer.backend == "local"


# -- generate_dev_key -------------------------------------------------------------------------


def test_generate_dev_key_creates_an_owner_only_file_once(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "dev.key"
    first = generate_dev_key(path)
    assert path.exists()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert first.startswith("0x") and len(first) == 66
    assert path.read_text().strip() == first
    before = path.stat().st_mtime_ns

    second = generate_dev_key(path)
    assert second == first
    assert path.stat().st_mtime_ns == before  # not rewritten
    assert LocalKeySigner.from_hex(second).address == Account.from_key(first).address


def test_generate_dev_key_gives_different_keys_for_different_files(tmp_path: Path) -> None:
    assert generate_dev_key(tmp_path / "a.key") != generate_dev_key(tmp_path / "b.key")
