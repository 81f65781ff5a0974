"""``POST /kms/sign-user-operation``: the owner key in SoftHSM2 signs only when the passkey and an
authorized paymaster agree, and each way of getting one of them wrong is refused with its own code.

Real parts: the KMS's app in process (PKCS#11 custody on a SoftHSM2 token, a SQLite file), the
sandbox's EntryPoints and factories on anvil (the userOpHash is the EntryPoint's own
``getUserOpHash``), a software authenticator whose registrations and assertions py_webauthn
verifies, and paymaster approvals built with eth-account's EIP-712 encoder.
"""

from __future__ import annotations

import time
from dataclasses import replace

import httpx
import pytest
import sqlalchemy as sa
from eth_account import Account
from eth_account.messages import encode_defunct

from anode.devchain.anvil import Anvil
from anode.devchain.deploy import Deployment
from anode.kms.service import KmsService
from anode.kms.store import challenges
from tests.kms.authenticator import SoftAuthenticator
from tests.kms.conftest import Factory
from tests.kms.harness import ADMIN_HEADERS, ORIGIN, PAYMASTER, Wallet, refusal

OTHER_PAYMASTER_KEY = "0x" + "0bad" * 16


@pytest.fixture
async def wallet(kms: tuple[httpx.AsyncClient, KmsService], anvil: Anvil, deployment: Deployment) -> Wallet:
    wallet = Wallet(kms[0], anvil, deployment, "v0.7", "alice@example.com")
    await wallet.create()
    return wallet


@pytest.fixture
async def passkey(wallet: Wallet) -> SoftAuthenticator:
    authenticator = SoftAuthenticator()
    await wallet.register(authenticator)
    return authenticator


async def test_both_signatures_agree_and_the_owner_key_signs_the_user_op_hash(
    wallet: Wallet, passkey: SoftAuthenticator
) -> None:
    prepared = await wallet.prepare(passkey)
    reply = await wallet.sign(prepared)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["success"] is True
    assert answer["userOpHash"] == "0x" + prepared.op_hash.hex()
    proof = answer["verificationProof"]
    assert (proof["paymasterVerified"], proof["userPasskeyVerified"], proof["dualSignatureMode"]) == (True,) * 3
    # the v0.7 SimpleAccount recovers its owner from the EIP-191 form of the userOpHash
    signer = Account.recover_message(encode_defunct(primitive=prepared.op_hash), signature=answer["signature"])
    assert signer == wallet.account["ownerAddress"]


async def test_create_account_is_idempotent_and_answers_the_factory_s_address(wallet: Wallet) -> None:
    again = await wallet.create()
    assert again == wallet.account
    from tests.support.onchain import simple_account_init

    sender, _, factory_data = simple_account_init(
        wallet.anvil.rpc_url, wallet.deployment.factories["v0.7"], again["ownerAddress"], 0
    )
    assert again["address"] == sender
    assert again["factoryData"] == "0x" + factory_data.hex()


async def test_an_account_may_register_several_passkeys_and_sign_with_each(wallet: Wallet) -> None:
    first, second = SoftAuthenticator(), SoftAuthenticator()
    await wallet.register(first)
    await wallet.register(second)
    for authenticator in (first, second):
        reply = await wallet.sign(await wallet.prepare(authenticator))
        assert reply.status_code == 200, reply.text


async def test_no_passkey_signature_is_refused(wallet: Wallet, passkey: SoftAuthenticator) -> None:
    prepared = await wallet.prepare(passkey)
    body = {**prepared.body}
    del body["userSignature"]
    reply = await wallet.post("/kms/sign-user-operation", body, prepared.headers)
    assert refusal(reply) == (401, "ANODE_KMS_PASSKEY_MISSING")


async def test_a_passkey_of_another_account_is_refused(wallet: Wallet, passkey: SoftAuthenticator) -> None:
    bob = Wallet(wallet.client, wallet.anvil, wallet.deployment, "v0.7", "bob@example.com")
    await bob.create()
    bobs_passkey = SoftAuthenticator()
    await bob.register(bobs_passkey)
    op = wallet.new_op()
    # Bob's passkey answers a challenge the KMS issued for Alice's operation
    assertion = bobs_passkey.assert_(await wallet.challenge(wallet.op_hash(op)))
    reply = await wallet.sign(await wallet.prepare(passkey, op, assertion=assertion))
    assert refusal(reply) == (401, "ANODE_KMS_PASSKEY_OTHER_ACCOUNT")


async def test_a_replayed_assertion_is_refused(wallet: Wallet, passkey: SoftAuthenticator) -> None:
    prepared = await wallet.prepare(passkey)
    assert (await wallet.sign(prepared)).status_code == 200
    # the same assertion again, under a fresh paymaster nonce and approval
    reply = await wallet.sign(prepared.with_nonce())
    assert refusal(reply) == (409, "ANODE_KMS_PASSKEY_REPLAYED")


async def test_a_reused_challenge_is_refused(wallet: Wallet, passkey: SoftAuthenticator) -> None:
    op = wallet.new_op()
    challenge = await wallet.challenge(wallet.op_hash(op))
    assert (
        await wallet.sign(await wallet.prepare(passkey, op, assertion=passkey.assert_(challenge)))
    ).status_code == 200
    # a new, valid assertion (its counter is higher) over the challenge already used
    reply = await wallet.sign(await wallet.prepare(passkey, op, assertion=passkey.assert_(challenge)))
    assert refusal(reply) == (409, "ANODE_KMS_CHALLENGE_USED")


async def test_a_challenge_the_kms_never_issued_is_refused(wallet: Wallet, passkey: SoftAuthenticator) -> None:
    reply = await wallet.sign(await wallet.prepare(passkey, assertion=passkey.assert_("bm90LWlzc3VlZC1ieS10aGUta21z")))
    assert refusal(reply) == (401, "ANODE_KMS_CHALLENGE_UNKNOWN")


async def test_a_reused_nonce_is_refused(wallet: Wallet, passkey: SoftAuthenticator) -> None:
    first = await wallet.prepare(passkey)
    assert (await wallet.sign(first)).status_code == 200
    second = await wallet.prepare(passkey)
    second = second.with_nonce(nonce=first.body["nonce"])
    assert refusal(await wallet.sign(second)) == (409, "ANODE_KMS_NONCE_REUSED")


async def test_a_nonce_stays_used_after_a_refusal(wallet: Wallet, passkey: SoftAuthenticator) -> None:
    prepared = await wallet.prepare(passkey)
    broken = replace(prepared, headers={**prepared.headers, "x-paymaster-signature": "0x" + "11" * 65})
    assert refusal(await wallet.sign(broken)) == (403, "ANODE_KMS_PAYMASTER_SIGNATURE_INVALID")
    # the same nonce, now with a valid approval: still used
    assert refusal(await wallet.sign(prepared)) == (409, "ANODE_KMS_NONCE_REUSED")


# 330, not 301, ahead: the check runs a moment after the timestamp is made, on a busy machine seconds later
@pytest.mark.parametrize("offset", [-301, 330])
async def test_a_timestamp_outside_the_window_is_refused(
    wallet: Wallet, passkey: SoftAuthenticator, offset: int
) -> None:
    prepared = await wallet.prepare(passkey, timestamp=int(time.time()) + offset)
    assert refusal(await wallet.sign(prepared)) == (400, "ANODE_KMS_TIMESTAMP_OUT_OF_WINDOW")


async def test_an_unauthorized_paymaster_is_refused(wallet: Wallet, passkey: SoftAuthenticator) -> None:
    prepared = await wallet.prepare(passkey, key=OTHER_PAYMASTER_KEY)
    assert refusal(await wallet.sign(prepared)) == (403, "ANODE_KMS_PAYMASTER_UNAUTHORIZED")


async def test_an_expired_paymaster_is_refused(wallet: Wallet, passkey: SoftAuthenticator) -> None:
    other = Account.from_key(OTHER_PAYMASTER_KEY).address
    added = await wallet.client.post(
        "/admin/authorized-signers",
        json={"address": other, "name": "expired", "expiresAt": int(time.time()) - 1},
        headers=ADMIN_HEADERS,
    )
    assert added.status_code == 200, added.text
    prepared = await wallet.prepare(passkey, key=OTHER_PAYMASTER_KEY)
    assert refusal(await wallet.sign(prepared)) == (403, "ANODE_KMS_PAYMASTER_EXPIRED")


async def test_a_paymaster_signature_over_other_data_is_refused(wallet: Wallet, passkey: SoftAuthenticator) -> None:
    prepared = await wallet.prepare(passkey)
    other = await wallet.prepare(passkey)  # the paymaster approved another operation
    forged = replace(
        prepared, headers={**prepared.headers, "x-paymaster-signature": other.headers["x-paymaster-signature"]}
    )
    assert refusal(await wallet.sign(forged)) == (403, "ANODE_KMS_PAYMASTER_SIGNATURE_INVALID")


async def test_a_user_operation_changed_after_the_passkey_signed_is_refused(
    wallet: Wallet, passkey: SoftAuthenticator
) -> None:
    approved = wallet.new_op()
    assertion = passkey.assert_(await wallet.challenge(wallet.op_hash(approved)))
    changed = replace(approved, call_gas_limit=approved.call_gas_limit + 1)
    # the paymaster approves the changed operation; the passkey approved the first one
    prepared = await wallet.prepare(passkey, changed, assertion=assertion)
    assert refusal(await wallet.sign(prepared)) == (401, "ANODE_KMS_USEROP_CHANGED")


async def test_an_assertion_from_another_origin_is_refused(wallet: Wallet, passkey: SoftAuthenticator) -> None:
    op = wallet.new_op()
    assertion = passkey.assert_(await wallet.challenge(wallet.op_hash(op)), origin="https://evil.example")
    reply = await wallet.sign(await wallet.prepare(passkey, op, assertion=assertion))
    assert refusal(reply) == (401, "ANODE_KMS_PASSKEY_INVALID")
    assert ORIGIN in reply.json()["error"]["message"]


async def test_an_assertion_without_user_verification_is_refused(wallet: Wallet, passkey: SoftAuthenticator) -> None:
    op = wallet.new_op()
    assertion = passkey.assert_(await wallet.challenge(wallet.op_hash(op)), flags=0x01)
    reply = await wallet.sign(await wallet.prepare(passkey, op, assertion=assertion))
    assert refusal(reply) == (401, "ANODE_KMS_PASSKEY_INVALID")


async def test_an_assertion_with_a_forged_signature_is_refused(wallet: Wallet, passkey: SoftAuthenticator) -> None:
    op = wallet.new_op()
    challenge = await wallet.challenge(wallet.op_hash(op))
    impostor = SoftAuthenticator()
    impostor.credential_id = passkey.credential_id  # same credential id, another key
    reply = await wallet.sign(await wallet.prepare(passkey, op, assertion=impostor.assert_(challenge)))
    assert refusal(reply) == (401, "ANODE_KMS_PASSKEY_INVALID")


async def test_an_unknown_account_is_refused(wallet: Wallet, passkey: SoftAuthenticator) -> None:
    prepared = await wallet.prepare(passkey)
    reply = await wallet.sign(replace(prepared, body={**prepared.body, "accountId": "nobody"}))
    assert refusal(reply) == (404, "ANODE_KMS_ACCOUNT_UNKNOWN")


async def test_the_admin_routes_need_the_admin_token(kms: tuple[httpx.AsyncClient, KmsService]) -> None:
    client = kms[0]
    for headers in ({}, {"authorization": "Bearer wrong"}):
        reply = await client.get("/admin/authorized-signers", headers=headers)
        assert refusal(reply) == (401, "ANODE_KMS_ADMIN_TOKEN")
    listed = await client.get("/admin/authorized-signers", headers=ADMIN_HEADERS)
    assert [s["address"] for s in listed.json()["signers"]] == [PAYMASTER]


async def test_a_removed_paymaster_is_refused(wallet: Wallet, passkey: SoftAuthenticator) -> None:
    removed = await wallet.client.delete(f"/admin/authorized-signers/{PAYMASTER}", headers=ADMIN_HEADERS)
    assert removed.status_code == 200, removed.text
    assert refusal(await wallet.sign(await wallet.prepare(passkey))) == (403, "ANODE_KMS_PAYMASTER_UNAUTHORIZED")
    again = await wallet.client.delete(f"/admin/authorized-signers/{PAYMASTER}", headers=ADMIN_HEADERS)
    assert refusal(again) == (404, "ANODE_KMS_SIGNER_UNKNOWN")


async def test_health_and_metrics(wallet: Wallet, passkey: SoftAuthenticator, kms_factory: Factory) -> None:
    health = await wallet.client.get("/kms/health")
    assert health.status_code == 200
    assert health.json()["custody"] == {"backend": "pkcs11", "status": "ok"}
    await wallet.sign(await wallet.prepare(passkey))
    await wallet.sign(await wallet.prepare(passkey, key=OTHER_PAYMASTER_KEY))
    metrics = (await wallet.client.get("/metrics")).text
    assert 'kms_requests_total{outcome="ok",route="sign_user_operation"} 1.0' in metrics
    assert 'kms_refusals_total{code="ANODE_KMS_PAYMASTER_UNAUTHORIZED"} 1.0' in metrics
    assert "kms_request_seconds_bucket" in metrics


async def test_an_expired_challenge_is_refused(
    wallet: Wallet, passkey: SoftAuthenticator, kms: tuple[httpx.AsyncClient, KmsService]
) -> None:
    op = wallet.new_op()
    assertion = passkey.assert_(await wallet.challenge(wallet.op_hash(op)))
    with kms[1].store.engine.begin() as connection:
        connection.execute(sa.update(challenges).values(expires_at=int(time.time()) - 1))
    reply = await wallet.sign(await wallet.prepare(passkey, op, assertion=assertion))
    assert refusal(reply) == (400, "ANODE_KMS_CHALLENGE_EXPIRED")


async def test_a_challenge_issued_for_another_account_is_refused(wallet: Wallet, passkey: SoftAuthenticator) -> None:
    bob = Wallet(wallet.client, wallet.anvil, wallet.deployment, "v0.7", "bob@example.com")
    await bob.create()
    op = wallet.new_op()
    assertion = passkey.assert_(await bob.challenge(wallet.op_hash(op)))  # Bob's challenge, Alice's passkey
    reply = await wallet.sign(await wallet.prepare(passkey, op, assertion=assertion))
    assert refusal(reply) == (401, "ANODE_KMS_CHALLENGE_OTHER_ACCOUNT")


async def test_an_unregistered_passkey_is_refused(wallet: Wallet, passkey: SoftAuthenticator) -> None:
    op = wallet.new_op()
    stranger = SoftAuthenticator()
    reply = await wallet.sign(await wallet.prepare(passkey, op, assertion=stranger.assert_(
        await wallet.challenge(wallet.op_hash(op))
    )))  # fmt: skip
    assert refusal(reply) == (401, "ANODE_KMS_PASSKEY_UNKNOWN")


async def test_registering_a_passkey_twice_or_from_another_origin_is_refused(wallet: Wallet) -> None:
    authenticator = SoftAuthenticator()
    await wallet.register(authenticator)
    options = (await wallet.post("/webauthn/register/options", {"accountId": wallet.account_id})).json()["options"]
    again = await wallet.post(
        "/webauthn/register", {"accountId": wallet.account_id, "credential": authenticator.register(options)}
    )
    assert refusal(again) == (409, "ANODE_KMS_PASSKEY_EXISTS")
    elsewhere = SoftAuthenticator(origin="https://evil.example")
    options = (await wallet.post("/webauthn/register/options", {"accountId": wallet.account_id})).json()["options"]
    reply = await wallet.post(
        "/webauthn/register", {"accountId": wallet.account_id, "credential": elsewhere.register(options)}
    )
    assert refusal(reply) == (401, "ANODE_KMS_REGISTRATION_INVALID")


async def test_a_request_without_the_paymaster_headers_is_refused(wallet: Wallet, passkey: SoftAuthenticator) -> None:
    prepared = await wallet.prepare(passkey)
    reply = await wallet.post("/kms/sign-user-operation", prepared.body)
    assert refusal(reply) == (403, "ANODE_KMS_PAYMASTER_SIGNATURE_MISSING")


async def test_malformed_requests_say_what_to_fix(wallet: Wallet) -> None:
    unknown = await wallet.post(
        "/aa/create-account", {"accountId": "x", "entryPoint": "0x" + "12" * 20, "chainId": wallet.deployment.chain_id}
    )
    assert refusal(unknown) == (400, "ANODE_UNSUPPORTED_ENTRYPOINT")
    bad_id = await wallet.post("/aa/create-account", {"accountId": " spaces ", "entryPoint": wallet.entry_point,
                                                      "chainId": wallet.deployment.chain_id})  # fmt: skip
    assert refusal(bad_id) == (400, "ANODE_INVALID_PARAMS")
    assert "accountId" in bad_id.json()["error"]["message"]
    no_hash = await wallet.post(
        "/webauthn/authenticate/options", {"accountId": wallet.account_id, "userOpHash": "0x12"}
    )
    assert refusal(no_hash) == (400, "ANODE_INVALID_PARAMS")
