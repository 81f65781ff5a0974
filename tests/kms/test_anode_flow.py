"""aNode's side of the dual-signature KMS, against a real ``anode kms serve`` (PKCS#11 custody on
SoftHSM2) and a real ``anode serve`` on anvil with the real EntryPoints.

A wallet prepares an operation (``anode_preparePasskeyOperation``: the pipeline, the paymaster
data, the KMS challenge), its passkey (the software authenticator) signs the challenge, and
``pm_sponsor_with_passkey`` co-signs and gets the owner's signature from the KMS: the operation
executes through ``handleOps``. aNode's first KMS URL is a closed port, so every call here fails
over to the second. The refusals: an operation changed after it was prepared, one never prepared,
an expired preparation, the KMS's own refusals passed on with their codes, and no other replica
asked once one has refused.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account

from anode.devchain.anvil import DEFAULT_ACCOUNT_KEYS, Anvil, free_port
from anode.devchain.deploy import Deployment
from anode.devchain.rpc import DevRpc
from tests.kms.authenticator import SoftAuthenticator
from tests.kms.harness import ADMIN_HEADERS, ORIGIN, KmsProcess, kms_config
from tests.signers.softhsm import SoftHsm
from tests.support.onchain import UserOp, execute_calldata, handle_ops
from tests.support.server import rpc, running_server
from tests.support.wallet import rpc_op, server_config, with_paymaster

PAIRS = [("verifying", "v0.6"), ("verifying", "v0.7"), ("singleton", "v0.8")]
SIGNER_KEY = DEFAULT_ACCOUNT_KEYS[9]
SIGNER = Account.from_key(SIGNER_KEY).address
_ids = itertools.count(1)


def start_kms(directory: Path, anvil: Anvil, deployment: Deployment, hsm: SoftHsm | None,
              env: dict[str, str], *, authorize: bool = True) -> KmsProcess:  # fmt: skip
    """A KMS process whose passkeys may come from the test authenticator's origin and from its own page."""

    def config(port: int) -> dict[str, Any]:
        tree = kms_config(directory, anvil, deployment, f"sqlite:///{directory / 'kms.db'}", hsm)
        origins = [ORIGIN, f"http://localhost:{port}"]
        return {**tree, "webauthn": {"rp_id": "localhost", "rp_name": "aNode flow", "origins": origins}}

    process = KmsProcess(directory, config, env).start()
    if authorize:
        reply = httpx.post(f"{process.url}/admin/authorized-signers", json={"address": SIGNER, "name": "aNode"},
                           headers=ADMIN_HEADERS, timeout=30)  # fmt: skip
        assert reply.status_code == 200, reply.text
    return process


@pytest.fixture(scope="module")
def kms_url(tmp_path_factory: pytest.TempPathFactory, anvil: Anvil, deployment: Deployment,
            softhsm: SoftHsm) -> Iterator[str]:  # fmt: skip
    process = start_kms(tmp_path_factory.mktemp("kms"), anvil, deployment, softhsm, softhsm.env)
    try:
        yield process.url
    finally:
        process.stop()


def anode_config(anvil: Anvil, deployment: Deployment, urls: list[str]) -> dict[str, Any]:
    return {**server_config(anvil, deployment, SIGNER_KEY, PAIRS), "kms": {"urls": urls, "timeout_seconds": 5}}


@pytest.fixture(scope="module")
def anode_url(anvil: Anvil, deployment: Deployment, kms_url: str) -> Iterator[str]:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there: every call fails over
    with running_server(anode_config(anvil, deployment, [closed, kms_url])) as url:
        yield url


class PasskeyWallet:
    """A wallet of one KMS account: its passkey, its operations, and aNode's three steps."""

    def __init__(self, kms_url: str, anode_url: str, anvil: Anvil, deployment: Deployment, version: str) -> None:
        self.kms_url, self.anode_url, self.anvil, self.version = kms_url, anode_url, anvil, version
        self.chain_id = deployment.chain_id
        self.entry_point = deployment.entry_points[version]
        self.account_id = f"flow-{version}-{next(_ids)}-{time.monotonic_ns()}"
        self.passkey = SoftAuthenticator()
        self.account: dict[str, Any] = {}

    def kms(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        reply = httpx.post(f"{self.kms_url}{path}", json=body, timeout=30)
        assert reply.status_code == 200, reply.text
        answer: dict[str, Any] = reply.json()
        return answer

    def create(self, register: bool = True) -> PasskeyWallet:
        self.account = self.kms(
            "/aa/create-account",
            {"accountId": self.account_id, "entryPoint": self.entry_point, "chainId": self.chain_id},
        )
        if register:
            options = self.kms("/webauthn/register/options", {"accountId": self.account_id})["options"]
            self.kms("/webauthn/register", {"accountId": self.account_id, "credential": self.passkey.register(options)})
        return self

    def new_op(self) -> UserOp:
        return UserOp(
            sender=self.account["address"],
            factory=self.account["factory"],
            factory_data=bytes.fromhex(self.account["factoryData"][2:]),
            call_data=execute_calldata(self.account["ownerAddress"], 0, b""),
        )

    def call(self, method: str, user_op: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
        reply: dict[str, Any] = rpc(self.anode_url, method, [user_op, self.entry_point, hex(self.chain_id), context])
        return reply

    def prepare(self, op: UserOp, **context: Any) -> dict[str, Any]:
        reply = self.call("anode_preparePasskeyOperation", rpc_op(op, self.version), {"accountId": self.account_id,
                                                                                      **context})  # fmt: skip
        assert "result" in reply, reply
        result: dict[str, Any] = reply["result"]
        return result

    def sponsor(self, user_op: dict[str, Any], assertion: dict[str, Any], **context: Any) -> dict[str, Any]:
        return self.call(
            "pm_sponsor_with_passkey", user_op, {"accountId": self.account_id, "userSignature": assertion, **context}
        )

    def executed(self, op: UserOp, signed: dict[str, Any]) -> None:
        """``signed`` (the answered operation) goes through the real EntryPoint, paid by aNode's paymaster."""
        final = replace(with_paymaster(op, self.version, signed), signature=bytes.fromhex(signed["signature"][2:]))
        result = handle_ops(self.anvil.rpc_url, self.entry_point, self.version, [final.to_tuple(self.version)])
        assert result.success, result.reason
        assert (result.events[0].sender, result.events[0].paymaster) == (self.account["address"], final.paymaster)
        with DevRpc(self.anvil.rpc_url) as node:
            assert node.call("eth_getCode", self.account["address"], "latest") != "0x"


def code_of(reply: dict[str, Any]) -> str:
    assert "error" in reply, reply
    code: str = reply["error"]["data"]["anodeCode"]
    return code


@pytest.fixture(params=[version for _, version in PAIRS])
def wallet(request: pytest.FixtureRequest, kms_url: str, anode_url: str, anvil: Anvil,
           deployment: Deployment) -> PasskeyWallet:  # fmt: skip
    return PasskeyWallet(kms_url, anode_url, anvil, deployment, request.param).create()


def test_a_prepared_operation_approved_by_the_passkey_executes(wallet: PasskeyWallet) -> None:
    op = wallet.new_op()
    prepared = wallet.prepare(op)
    assert prepared["accountId"] == wallet.account_id
    assert prepared["options"]["challenge"] == prepared["challenge"]
    assertion = wallet.passkey.assert_(prepared["challenge"])
    reply = wallet.sponsor(prepared["userOperation"], assertion)
    assert "result" in reply, reply
    result = reply["result"]
    assert result["userOpHash"] == prepared["userOpHash"]
    assert result["ownerAddress"] == wallet.account["ownerAddress"]
    assert result["verificationProof"]["paymaster"] == SIGNER
    wallet.executed(op, result["userOperation"])


def test_an_operation_changed_after_it_was_prepared_is_refused(wallet: PasskeyWallet) -> None:
    prepared = wallet.prepare(wallet.new_op())
    assertion = wallet.passkey.assert_(prepared["challenge"])
    changed = {**prepared["userOperation"], "callGasLimit": hex(int(prepared["userOperation"]["callGasLimit"], 16) + 1)}
    assert code_of(wallet.sponsor(changed, assertion)) == "ANODE_PASSKEY_OPERATION_CHANGED"
    # the operation as prepared still goes through: the refusal used nothing up
    assert "result" in wallet.sponsor(prepared["userOperation"], assertion)


def test_an_operation_never_prepared_is_refused(wallet: PasskeyWallet) -> None:
    op = rpc_op(wallet.new_op(), wallet.version)
    assertion = wallet.passkey.assert_("AAAA")
    assert code_of(wallet.sponsor(op, assertion)) == "ANODE_PASSKEY_NOT_PREPARED"


def test_an_expired_preparation_is_refused(kms_url: str, anode_url: str, anvil: Anvil, deployment: Deployment) -> None:
    wallet = PasskeyWallet(kms_url, anode_url, anvil, deployment, "v0.7").create()
    prepared = wallet.prepare(wallet.new_op(), validForSeconds=1)
    assertion = wallet.passkey.assert_(prepared["challenge"])
    time.sleep(2.1)
    assert code_of(wallet.sponsor(prepared["userOperation"], assertion)) == "ANODE_PASSKEY_PREPARATION_EXPIRED"


def test_the_kms_refusals_are_passed_on_with_their_codes(
    kms_url: str, anode_url: str, anvil: Anvil, deployment: Deployment
) -> None:
    wallet = PasskeyWallet(kms_url, anode_url, anvil, deployment, "v0.7").create()
    prepared = wallet.prepare(wallet.new_op())
    assertion = wallet.passkey.assert_(prepared["challenge"])
    stranger = SoftAuthenticator()  # a passkey the KMS does not know
    reply = wallet.sponsor(prepared["userOperation"], stranger.assert_(prepared["challenge"]))
    assert code_of(reply) == "ANODE_KMS_PASSKEY_UNKNOWN"
    assert reply["error"]["code"] == -32502
    assert "result" in wallet.sponsor(prepared["userOperation"], assertion)
    replayed = wallet.sponsor(prepared["userOperation"], assertion)
    assert code_of(replayed) in ("ANODE_KMS_PASSKEY_REPLAYED", "ANODE_KMS_CHALLENGE_USED")
    other = PasskeyWallet(kms_url, anode_url, anvil, deployment, "v0.7")  # an account the KMS never created
    reply = other.call("anode_preparePasskeyOperation", rpc_op(wallet.new_op(), "v0.7"), {"accountId": "nobody-x"})
    assert code_of(reply) == "ANODE_KMS_ACCOUNT_UNKNOWN"


def _sign_requests(kms_url: str) -> float:
    metrics = httpx.get(f"{kms_url}/metrics", timeout=30).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("kms_requests_total{") and "sign_user_operation" in line
    )


def test_a_refusal_is_not_retried_on_another_replica_and_no_kms_is_no_signature(
    tmp_path: Path, kms_url: str, anvil: Anvil, deployment: Deployment, kek: str
) -> None:
    """The first KMS refuses (aNode's signer is not authorized there): aNode answers that refusal and
    never asks the second, which would sign. With every replica down, nothing signs."""
    unauthorized = start_kms(tmp_path, anvil, deployment, None, {"KMS_TEST_KEK": kek}, authorize=False)
    try:
        with running_server(anode_config(anvil, deployment, [unauthorized.url, kms_url])) as url:
            wallet = PasskeyWallet(unauthorized.url, url, anvil, deployment, "v0.7").create()
            prepared = wallet.prepare(wallet.new_op())
            before = _sign_requests(kms_url)
            reply = wallet.sponsor(prepared["userOperation"], wallet.passkey.assert_(prepared["challenge"]))
            assert code_of(reply) == "ANODE_KMS_PAYMASTER_UNAUTHORIZED"
            assert _sign_requests(kms_url) == before
    finally:
        unauthorized.stop()
    down = [f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"]
    with running_server(anode_config(anvil, deployment, down)) as url:
        wallet = PasskeyWallet(kms_url, url, anvil, deployment, "v0.7").create()
        reply = wallet.call("anode_preparePasskeyOperation", rpc_op(wallet.new_op(), "v0.7"),
                            {"accountId": wallet.account_id})  # fmt: skip
        assert code_of(reply) == "ANODE_KMS_UNAVAILABLE"
        assert "replica 1: connection refused; replica 2: connection refused" in reply["error"]["message"]


def test_what_the_wallet_sends_wrong_is_refused_by_name(
    kms_url: str, anode_url: str, anvil: Anvil, deployment: Deployment
) -> None:
    wallet = PasskeyWallet(kms_url, anode_url, anvil, deployment, "v0.7").create()
    op = rpc_op(wallet.new_op(), wallet.version)
    reply = wallet.call("anode_preparePasskeyOperation", op, {})
    assert (code_of(reply), reply["error"]["data"]["field"]) == ("ANODE_INVALID_PARAMS", "context.accountId")
    prepared = wallet.prepare(wallet.new_op())
    assert code_of(wallet.sponsor(prepared["userOperation"], {})) == "ANODE_KMS_PASSKEY_MISSING"
    reply = wallet.sponsor(prepared["userOperation"], {"id": "x", "response": {}})
    assert (code_of(reply), reply["error"]["data"]["field"]) == ("ANODE_INVALID_PARAMS", "userSignature")
    assertion = wallet.passkey.assert_(prepared["challenge"])
    reply = wallet.sponsor(prepared["userOperation"], assertion, send="yes")
    assert (code_of(reply), reply["error"]["data"]["field"]) == ("ANODE_INVALID_PARAMS", "context.send")
    with running_server(server_config(anvil, deployment, SIGNER_KEY, PAIRS)) as url:  # no kms:
        reply = rpc(url, "anode_preparePasskeyOperation", [op, wallet.entry_point, hex(wallet.chain_id),
                                                           {"accountId": wallet.account_id}])  # fmt: skip
        assert code_of(reply) == "ANODE_KMS_NOT_CONFIGURED"
        assert reply["error"]["code"] == -32601
