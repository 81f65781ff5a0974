"""Authorized-signer rotation with a two-key proof, the hash-chained decision log and
``anode kms audit verify``, the EIP-712 digests, and the development custody backend."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
import yaml
from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data

from anode.config import validate_model
from anode.devchain.anvil import Anvil
from anode.devchain.deploy import Deployment
from anode.errors import ConfigError
from anode.kms import audit, eip712
from anode.kms.config import DevelopmentCustody as DevSettings
from anode.kms.config import KmsSettings
from anode.kms.custody.development import DevelopmentCustody
from anode.kms.service import KmsService
from anode.signers.ecdsa import recovered_address
from tests.kms.authenticator import SoftAuthenticator
from tests.kms.conftest import KEK, Factory
from tests.kms.harness import (
    ADMIN_HEADERS,
    APPROVAL_TYPES,
    PAYMASTER,
    PAYMASTER_KEY,
    ROTATION_TYPES,
    Wallet,
    kms_config,
    refusal,
    rotation_signature,
)
from tests.support.cli import anode

NEW_KEY = "0x" + "7a11" * 16
NEW = Account.from_key(NEW_KEY).address


async def _wallet(client: httpx.AsyncClient, anvil: Anvil, deployment: Deployment) -> tuple[Wallet, SoftAuthenticator]:
    wallet = Wallet(client, anvil, deployment, "v0.7", "carol")
    await wallet.create()
    passkey = SoftAuthenticator()
    await wallet.register(passkey)
    return wallet, passkey


async def _rotate(client: httpx.AsyncClient, old_key: str, new_key: str) -> httpx.Response:
    old, new = Account.from_key(old_key).address, Account.from_key(new_key).address
    proof = {
        "oldSignature": rotation_signature(old, new, old_key),
        "newSignature": rotation_signature(old, new, new_key),
    }
    return await client.post(
        "/admin/rotate-signer", json={"oldAddress": old, "newAddress": new, "proof": proof}, headers=ADMIN_HEADERS
    )


async def test_a_rotation_proof_signed_by_one_key_only_is_refused(
    kms: tuple[httpx.AsyncClient, KmsService],
) -> None:
    client = kms[0]
    for old_key, new_key in ((PAYMASTER_KEY, PAYMASTER_KEY), (NEW_KEY, NEW_KEY)):  # one key signs both halves
        proof = {
            "oldSignature": rotation_signature(PAYMASTER, NEW, old_key),
            "newSignature": rotation_signature(PAYMASTER, NEW, new_key),
        }
        reply = await client.post(
            "/admin/rotate-signer",
            json={"oldAddress": PAYMASTER, "newAddress": NEW, "proof": proof},
            headers=ADMIN_HEADERS,
        )
        assert refusal(reply) == (403, "ANODE_KMS_ROTATION_PROOF_INVALID")
    listed = (await client.get("/admin/authorized-signers", headers=ADMIN_HEADERS)).json()["signers"]
    assert [s["address"] for s in listed] == [PAYMASTER]


async def test_after_a_rotation_both_sign_during_the_overlap(
    kms: tuple[httpx.AsyncClient, KmsService], anvil: Anvil, deployment: Deployment
) -> None:
    client = kms[0]
    wallet, passkey = await _wallet(client, anvil, deployment)
    rotated = await _rotate(client, PAYMASTER_KEY, NEW_KEY)
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["new"]["permissions"] == ["sign-user-operation"]
    for key in (NEW_KEY, PAYMASTER_KEY):
        reply = await wallet.sign(await wallet.prepare(passkey, key=key))
        assert reply.status_code == 200, reply.text
    assert refusal(await _rotate(client, PAYMASTER_KEY, NEW_KEY)) == (409, "ANODE_KMS_SIGNER_ROTATED")


async def test_after_the_overlap_the_old_signer_stops(
    kms_factory: Factory, anvil: Anvil, deployment: Deployment
) -> None:
    client, _ = await kms_factory(rotation_overlap_seconds=0)
    wallet, passkey = await _wallet(client, anvil, deployment)
    assert (await _rotate(client, PAYMASTER_KEY, NEW_KEY)).status_code == 200
    assert refusal(await wallet.sign(await wallet.prepare(passkey))) == (403, "ANODE_KMS_PAYMASTER_EXPIRED")
    assert (await wallet.sign(await wallet.prepare(passkey, key=NEW_KEY))).status_code == 200


async def test_every_decision_is_chained_and_audit_verify_finds_a_change(
    kms: tuple[httpx.AsyncClient, KmsService], anvil: Anvil, deployment: Deployment, tmp_path: Path
) -> None:
    client, service = kms
    wallet, passkey = await _wallet(client, anvil, deployment)
    prepared = await wallet.prepare(passkey)
    assert (await wallet.sign(prepared)).status_code == 200
    assert refusal(await wallet.sign(prepared)) == (409, "ANODE_KMS_NONCE_REUSED")
    kinds = [(r["kind"], (r["detail"] or {}).get("code")) for r in audit.records(service.store)]
    assert kinds == [
        ("signer_added", None), ("account_created", None), ("passkey_registered", None), ("signed", None),
        ("refused", "ANODE_KMS_NONCE_REUSED"),
    ]  # fmt: skip
    signed = audit.records(service.store)[3]
    assert signed["user_op_hash"] == "0x" + prepared.op_hash.hex()
    assert signed["signer"] == wallet.account["ownerAddress"] and signed["paymaster"] == PAYMASTER

    config = tmp_path / "kms.yaml"
    config.write_text(yaml.safe_dump(kms_config(tmp_path, anvil, deployment, str(service.store.engine.url), None)))
    done = anode("kms", "audit", "verify", "--config", str(config), env={"KMS_TEST_KEK": KEK})
    assert done.returncode == 0, done.stderr
    assert "5 record(s), intact" in done.stdout
    with service.store.engine.begin() as connection:
        connection.execute(sa.update(audit.audit_log).where(audit.audit_log.c.seq == 4).values(paymaster=NEW))
    done = anode("kms", "audit", "verify", "--config", str(config), env={"KMS_TEST_KEK": KEK})
    assert done.returncode == 2
    assert "record 4 was changed" in done.stderr


def test_the_approval_digest_is_eip712_as_eth_account_encodes_it() -> None:
    op_hash, signature_hash, nonce = secrets.token_bytes(32), secrets.token_bytes(32), secrets.token_bytes(32)
    message = {
        "types": APPROVAL_TYPES,
        "primaryType": "PaymasterApproval",
        "domain": {"name": "aNode KMS", "version": "1", "chainId": 31337},
        "message": {
            "userOpHash": op_hash, "accountId": "alice", "userSignatureHash": signature_hash, "nonce": nonce,
            "timestamp": 1_700_000_000,
        },
    }  # fmt: skip
    expected = _hash_eip191_message(encode_typed_data(full_message=message))
    assert eip712.approval_digest(31337, op_hash, "alice", signature_hash, nonce, 1_700_000_000) == expected
    rotation = {
        "types": ROTATION_TYPES,
        "primaryType": "SignerRotation",
        "domain": {"name": "aNode KMS", "version": "1"},
        "message": {"oldAddress": PAYMASTER, "newAddress": NEW},
    }
    assert eip712.rotation_digest(PAYMASTER, NEW) == _hash_eip191_message(encode_typed_data(full_message=rotation))


def test_development_custody_keeps_keys_encrypted_and_needs_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KMS_TEST_KEK", KEK)
    settings = DevSettings(type="development", key_dir=tmp_path / "keys", kek_env="KMS_TEST_KEK")
    custody = DevelopmentCustody(settings)
    key = custody.create_key("dora")
    assert custody.create_key("dora") == key  # the account's one key
    digest = secrets.token_bytes(32)
    signed = custody.sign_digest(key.handle, digest)
    assert recovered_address(signed) == key.address
    stored = (tmp_path / "keys" / f"{key.handle}.json").read_bytes()
    assert b"sealed" in stored and key.address.encode() in stored
    monkeypatch.setenv("KMS_TEST_KEK", "cd" * 32)  # another key-encryption key cannot open it
    with pytest.raises(Exception, match="does not open"):
        DevelopmentCustody(settings).sign_digest(key.handle, digest)
    monkeypatch.setenv("KMS_TEST_KEK", "short")
    with pytest.raises(ConfigError, match="64 hex digits"):
        DevelopmentCustody(settings)


def test_development_custody_is_refused_in_production(tmp_path: Path, anvil: Anvil, deployment: Deployment) -> None:
    tree = kms_config(tmp_path, anvil, deployment, "sqlite:///x.db", None, environment="production")
    with pytest.raises(ConfigError, match="development backend"):
        validate_model(KmsSettings, tree)


async def test_the_development_backend_signs_for_the_kms_too(
    kms_factory: Factory, kek: str, anvil: Anvil, deployment: Deployment
) -> None:
    client, service = await kms_factory(hsm=None)
    assert service.custody.backend == "development"
    wallet, passkey = await _wallet(client, anvil, deployment)
    reply = await wallet.sign(await wallet.prepare(passkey))
    assert reply.status_code == 200, reply.text
