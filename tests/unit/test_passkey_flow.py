"""aNode's passkey flow refuses a KMS answer that is not the owner's signature over this operation.

The KMS below is a small aiohttp server standing in for a **misbehaving** KMS: it answers HTTP 200
to ``/kms/sign-user-operation`` with a signature by another key, over another hash, a malformed
one, or one naming another userOpHash. No real KMS here can be made to answer so (the real
``anode kms serve`` signs only the hash it computed, with the account's own key: it is run by
tests/kms/test_anode_flow*.py). Each lie must end in ``ANODE_KMS_ANSWER_INVALID``, with nothing
handed to the bundler and no signature in the error; the honest answer is signed and sent.

Everything else is real: the sponsorship service with its ledger on SQLite in ``tmp_path`` (the
prepare step writes the row the sponsor step looks up), a local paymaster key whose approval the
fake KMS checks, and a small JSON-RPC server recording what the bundler is handed.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from coincurve import PrivateKey

from anode.api.errors import rpc_error
from anode.chain.bundler import BundlerClient
from anode.chain.client import ChainClient
from anode.config import KmsClientSettings, SponsorshipSettings, validate_model
from anode.devchain.anvil import free_port
from anode.errors import ServiceUnavailable
from anode.passkey.flow import CoSigned, PasskeyFlow, PasskeyRequest
from anode.passkey.kms_client import KmsClient
from anode.paymasters.base import GasDefaults
from anode.pipeline.routes import Route, RouteTable, build_family
from anode.signers.base import eip191_digest
from anode.signers.kms_approval import approval_digest, recover
from anode.signers.local import LocalKeySigner, address_of
from anode.sponsorship import SponsorRequest, SponsorshipService
from anode.store.database import create_engine, upgrade
from anode.store.ledger import SqlLedger
from anode.userop.codec import parse_bytes, to_hex
from anode.userop.hashing import user_op_hash
from anode.userop.keccak import keccak
from anode.userop.models import parse_user_op
from anode.userop.versions import EntryPointVersion

PREPARE = "anode_preparePasskeyOperation"
CHAIN_ID = 31337
PAYMASTER = bytes.fromhex("a0Ee7A142d267C1f36714E4a8F75612F20a79720")
OWNER = PrivateKey(bytes.fromhex("11" * 32))
STRANGER = PrivateKey(bytes.fromhex("22" * 32))
PAYMASTER_KEY = "33" * 32
ASSERTION_SIGNATURE = b"the passkey's DER signature"
ASSERTION = {
    "id": "cred", "rawId": "cred", "type": "public-key",
    "response": {"clientDataJSON": "e30", "authenticatorData": "AAAA", "userHandle": "YWxpY2U",
                 "signature": base64.urlsafe_b64encode(ASSERTION_SIGNATURE).rstrip(b"=").decode()},
}  # fmt: skip
#: (paymaster contract, EntryPoint): v0.7 signs the EIP-191 digest of the userOpHash, v0.8 the hash itself
ROUTES = {
    EntryPointVersion.V07: ("verifying", "0000000071727De22E5E9d8BAf0edAc6f37da032"),
    EntryPointVersion.V08: ("singleton", "4337084D9E255Ff0702461CF8895CE9E3b5Ff108"),
}


def operation() -> dict[str, Any]:
    return {
        "sender": "0x5f1b6f3a8e2c4e7b9d0a1c2e3f4a5b6c7d8e9f00", "nonce": "0x0", "callData": "0xb61d27f6",
        "callGasLimit": "0x30d40", "verificationGasLimit": "0xf4240", "preVerificationGas": "0xea60",
        "maxFeePerGas": "0x77359400", "maxPriorityFeePerGas": "0x3b9aca00", "signature": "0x",
    }  # fmt: skip


def owner_signature(key: PrivateKey, op_hash: bytes, version: EntryPointVersion) -> str:
    """What an honest KMS signs: the userOpHash itself for v0.8, its EIP-191 digest before."""
    digest = op_hash if version is EntryPointVersion.V08 else eip191_digest(op_hash)
    sig = key.sign_recoverable(digest, hasher=None)
    return to_hex(sig[:64] + bytes([sig[64] + 27]))


def honest(op_hash: bytes, version: EntryPointVersion) -> dict[str, Any]:
    return {"signature": owner_signature(OWNER, op_hash, version), "userOpHash": to_hex(op_hash)}


#: how the fake KMS answers: the honest answer, and lies aNode must refuse
ANSWERS = {
    "honest": honest,
    "signed by another key": lambda h, v: {**honest(h, v), "signature": owner_signature(STRANGER, h, v)},
    "signed over another hash": lambda h, v: {**honest(h, v), "signature": owner_signature(OWNER, keccak(h), v)},
    "signed over the wrong digest of this hash": lambda h, v: {
        **honest(h, v),
        "signature": owner_signature(
            OWNER, h, EntryPointVersion.V07 if v is EntryPointVersion.V08 else EntryPointVersion.V08
        ),
    },
    "a 64-byte signature": lambda h, v: {**honest(h, v), "signature": honest(h, v)["signature"][:-2]},
    "a signature that is no hex": lambda h, v: {**honest(h, v), "signature": "0xnot-a-signature"},
    "no signature": lambda h, v: {"userOpHash": to_hex(h)},
    "another userOpHash": lambda h, v: {**honest(h, v), "userOpHash": to_hex(keccak(h))},
}


@dataclass
class FakeKms:
    version: EntryPointVersion
    answer: str
    #: the signatures it answered (a refused one must appear nowhere in aNode's answer)
    answered: list[str] = field(default_factory=list)

    async def options(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        return web.json_response({"challenge": "q2Zr", "kmsNonce": "0x01", "expiresAt": 2**31, "options": body})

    async def sign(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        _, entry_point = ROUTES[self.version]
        op = parse_user_op(body["userOperation"], self.version)
        op_hash = user_op_hash(op, self.version, bytes.fromhex(entry_point), body["chainId"])
        digest = approval_digest(
            body["chainId"], op_hash, body["accountId"], keccak(ASSERTION_SIGNATURE),
            parse_bytes(body["nonce"]), body["timestamp"],
        )  # fmt: skip
        approver = recover(digest, parse_bytes(request.headers["x-paymaster-signature"]))
        if approver is None or approver != request.headers["x-paymaster-address"]:
            return web.json_response({"error": {"code": "ANODE_KMS_PAYMASTER_INVALID", "message": "no"}}, status=401)
        answer = ANSWERS[self.answer](op_hash, self.version)
        self.answered.append(str(answer.get("signature")))
        return web.json_response(
            {"success": True, **answer, "ownerAddress": address_of(OWNER),
             "verificationProof": {"paymasterVerified": True, "paymaster": approver}}
        )  # fmt: skip


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    async with TestServer(app, host="127.0.0.1") as server:
        yield f"http://127.0.0.1:{server.port}"


@asynccontextmanager
async def flow(tmp_path: Path, kms: FakeKms, relayed: list[Any]) -> AsyncIterator[PasskeyFlow]:
    """A passkey flow on SQLite, the fake KMS and a bundler that records what it is handed."""

    async def bundler(request: web.Request) -> web.StreamResponse:
        call = await request.json()
        relayed.append(call["params"])
        op = parse_user_op(call["params"][0], kms.version)
        sent = user_op_hash(op, kms.version, bytes.fromhex(ROUTES[kms.version][1]), CHAIN_ID)
        return web.json_response({"jsonrpc": "2.0", "id": call["id"], "result": to_hex(sent)})

    kms_app, bundler_app = web.Application(), web.Application()
    kms_app.router.add_post("/webauthn/authenticate/options", kms.options)
    kms_app.router.add_post("/kms/sign-user-operation", kms.sign)
    bundler_app.router.add_post("/", bundler)
    engine = create_engine(f"sqlite:///{tmp_path / 'anode.db'}")
    upgrade(engine)
    ledger = SqlLedger(engine)
    contract, entry_point = ROUTES[kms.version]
    family = build_family(contract, PAYMASTER, kms.version, GasDefaults(300_000, 100_000))
    async with serving(kms_app) as kms_url, serving(bundler_app) as bundler_url:
        chain = ChainClient(f"http://127.0.0.1:{free_port()}")  # never called: nothing here reads the chain
        route = Route(CHAIN_ID, bytes.fromhex(entry_point), kms.version, family, chain, BundlerClient(bundler_url))
        settings = validate_model(SponsorshipSettings, {})
        service = SponsorshipService(RouteTable([route]), LocalKeySigner.from_hex(PAYMASTER_KEY), ledger, settings)
        passkey = PasskeyFlow(service, KmsClient(validate_model(KmsClientSettings, {"urls": [kms_url]})))
        try:
            yield passkey
        finally:
            await passkey.aclose()
            await chain.aclose()
            await route.bundler.aclose()  # type: ignore[union-attr]
            await ledger.aclose()


async def prepare_and_sponsor(passkey: PasskeyFlow, version: EntryPointVersion) -> tuple[CoSigned, str]:
    """Step 1 then step 3, as a wallet calls them: the answer, and the userOpHash step 1 answered."""
    entry_point = "0x" + ROUTES[version][1]
    prepared = await passkey.prepare(
        SponsorRequest(operation(), entry_point, CHAIN_ID, {"accountId": "alice"}, PREPARE)
    )
    assert prepared.sponsored.user_op_hash is not None
    request = PasskeyRequest(prepared.user_operation, entry_point, CHAIN_ID, "alice", ASSERTION, PREPARE, send=True)
    return await passkey.sponsor(request), to_hex(prepared.sponsored.user_op_hash)


@pytest.mark.parametrize("version", list(ROUTES), ids=lambda v: v.value)
async def test_the_owners_signature_over_this_user_op_hash_is_answered_and_sent(
    tmp_path: Path, version: EntryPointVersion
) -> None:
    kms, relayed = FakeKms(version, "honest"), []
    async with flow(tmp_path, kms, relayed) as passkey:
        signed, op_hash = await prepare_and_sponsor(passkey, version)
    assert (signed.user_op_hash, signed.owner, signed.sent) == (op_hash, address_of(OWNER), op_hash)
    assert [signed.user_operation["signature"]] == kms.answered
    assert kms.answered == [owner_signature(OWNER, parse_bytes(op_hash), version)]
    assert relayed == [[signed.user_operation, "0x" + ROUTES[version][1]]]


@pytest.mark.parametrize("version", list(ROUTES), ids=lambda v: v.value)
@pytest.mark.parametrize("lie", [name for name in ANSWERS if name != "honest"])
async def test_a_kms_answer_that_is_not_the_owners_signature_over_this_hash_is_refused(
    tmp_path: Path, version: EntryPointVersion, lie: str
) -> None:
    kms, relayed = FakeKms(version, lie), []
    async with flow(tmp_path, kms, relayed) as passkey:
        with pytest.raises(ServiceUnavailable) as refused:
            await prepare_and_sponsor(passkey, version)
    assert refused.value.code == "ANODE_KMS_ANSWER_INVALID"
    wire = rpc_error(refused.value)
    assert (wire["code"], wire["data"]["anodeCode"]) == (-32603, "ANODE_KMS_ANSWER_INVALID")
    assert len(kms.answered) == 1  # the KMS was asked once, and answered
    if lie != "no signature":  # the lie appears nowhere in the error
        assert kms.answered[0].removeprefix("0x").lower() not in orjson.dumps(wire).decode().lower()
    assert relayed == []  # nothing went to the bundler
