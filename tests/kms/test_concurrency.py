"""Single use under load and across a restart, on a SQLite file and on PostgreSQL.

50 identical requests at once (one paymaster nonce, one assertion): exactly one is signed. 50
requests with the same assertion under 50 different nonces and approvals: exactly one is signed
(the challenge and the sign counter are taken together). And a real ``anode kms serve`` process,
stopped and started again on the same store, still refuses what it signed before the restart.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx

from anode.devchain.anvil import Anvil
from anode.devchain.deploy import Deployment
from anode.kms import audit
from tests.kms.authenticator import SoftAuthenticator
from tests.kms.conftest import Factory
from tests.kms.harness import ADMIN_HEADERS, PAYMASTER, KmsProcess, Wallet, kms_config, refusal
from tests.signers.softhsm import SoftHsm

REQUESTS = 50


def _outcomes(replies: list[httpx.Response]) -> Counter[str]:
    return Counter("signed" if r.status_code == 200 else refusal(r)[1] for r in replies)


async def _ready(client: httpx.AsyncClient, anvil: Anvil, deployment: Deployment) -> tuple[Wallet, SoftAuthenticator]:
    wallet = Wallet(client, anvil, deployment, "v0.7", "erin")
    await wallet.create()
    passkey = SoftAuthenticator()
    await wallet.register(passkey)
    return wallet, passkey


async def test_fifty_identical_requests_sign_once(
    kms_factory: Factory, kms_database: str, anvil: Anvil, deployment: Deployment
) -> None:
    client, _ = await kms_factory(database_url=kms_database)
    wallet, passkey = await _ready(client, anvil, deployment)
    prepared = await wallet.prepare(passkey)
    replies = await asyncio.gather(*(wallet.sign(prepared) for _ in range(REQUESTS)))
    assert _outcomes(replies) == Counter({"signed": 1, "ANODE_KMS_NONCE_REUSED": REQUESTS - 1})


async def test_fifty_nonces_on_one_assertion_sign_once(
    kms_factory: Factory, kms_database: str, anvil: Anvil, deployment: Deployment
) -> None:
    client, _ = await kms_factory(database_url=kms_database)
    wallet, passkey = await _ready(client, anvil, deployment)
    prepared = await wallet.prepare(passkey)
    copies = [prepared.with_nonce() for _ in range(REQUESTS)]
    outcomes = _outcomes(await asyncio.gather(*(wallet.sign(copy) for copy in copies)))
    assert outcomes["signed"] == 1, outcomes
    assert set(outcomes) <= {"signed", "ANODE_KMS_PASSKEY_REPLAYED", "ANODE_KMS_CHALLENGE_USED"}, outcomes


async def test_a_restart_forgets_neither_nonce_nor_counter(
    kms_database: str, anvil: Anvil, deployment: Deployment, softhsm: SoftHsm, tmp_path: Path
) -> None:
    process = KmsProcess(tmp_path, kms_config(tmp_path, anvil, deployment, kms_database, softhsm), softhsm.env)
    process.start()
    try:
        async with httpx.AsyncClient(base_url=process.url, timeout=30) as client:
            added = await client.post("/admin/authorized-signers", json={"address": PAYMASTER}, headers=ADMIN_HEADERS)
            assert added.status_code == 200, added.text
            wallet, passkey = await _ready(client, anvil, deployment)
            prepared = await wallet.prepare(passkey)
            reply = await wallet.sign(prepared)
            assert reply.status_code == 200, reply.text
            process.stop()
            process.start()
            assert refusal(await wallet.sign(prepared)) == (409, "ANODE_KMS_NONCE_REUSED")
            assert refusal(await wallet.sign(prepared.with_nonce())) == (409, "ANODE_KMS_PASSKEY_REPLAYED")
            # and the account kept its key: a new operation is signed by the same owner
            again = await wallet.create()
            assert again["ownerAddress"] == wallet.account["ownerAddress"]
            reply = await wallet.sign(await wallet.prepare(passkey))
            assert reply.status_code == 200, reply.text
    finally:
        process.stop()


async def test_concurrent_creations_of_one_account_make_one_key(
    kms_factory: Factory, kms_database: str, anvil: Anvil, deployment: Deployment
) -> None:
    client, service = await kms_factory(database_url=kms_database)
    wallet = Wallet(client, anvil, deployment, "v0.7", "frank")
    body = {"accountId": "frank", "entryPoint": wallet.entry_point, "chainId": deployment.chain_id}
    replies = await asyncio.gather(*(client.post("/aa/create-account", json=body) for _ in range(20)))
    assert {r.status_code for r in replies} == {200}
    assert len({r.json()["ownerAddress"] for r in replies}) == 1
    created = [r for r in audit.records(service.store) if r["kind"] == "account_created"]
    assert len(created) == 1
