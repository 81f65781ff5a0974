"""What a wallet and a paymaster do with the KMS, for its tests.

The paymaster's approval is built here with eth-account's generic EIP-712 encoder from the type
docs/kms.md documents (not with ``anode.kms.eip712``), and the userOpHash comes from the
EntryPoint's own ``getUserOpHash``: the KMS is checked against the spec and the contracts.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils.crypto import keccak

from anode.devchain.anvil import Anvil
from anode.devchain.deploy import Deployment
from tests.kms.authenticator import SoftAuthenticator, unb64url
from tests.signers.softhsm import SoftHsm
from tests.support.onchain import UserOp, execute_calldata, get_user_op_hash
from tests.support.wallet import rpc_op

ADMIN = "kms-admin-token-for-the-tests-7c1d0e"
RP_ID, ORIGIN = "localhost", "http://localhost:5173"
PAYMASTER_KEY = "0x" + "5eed" * 16
PAYMASTER = Account.from_key(PAYMASTER_KEY).address
ADMIN_HEADERS = {"authorization": f"Bearer {ADMIN}"}

APPROVAL_TYPES = {
    "EIP712Domain": [
        {"name": "name", "type": "string"},
        {"name": "version", "type": "string"},
        {"name": "chainId", "type": "uint256"},
    ],
    "PaymasterApproval": [
        {"name": "userOpHash", "type": "bytes32"},
        {"name": "accountId", "type": "string"},
        {"name": "userSignatureHash", "type": "bytes32"},
        {"name": "nonce", "type": "bytes32"},
        {"name": "timestamp", "type": "uint256"},
    ],
}
ROTATION_TYPES = {
    "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"}],
    "SignerRotation": [{"name": "oldAddress", "type": "address"}, {"name": "newAddress", "type": "address"}],
}


def full_rpc_op(op: UserOp, version: str) -> dict[str, Any]:
    """``op`` as a wallet sends it over RPC, its paymaster fields included."""
    fields = rpc_op(op, version)
    if op.paymaster is None:
        return fields
    if version == "v0.6":
        return {**fields, "paymasterAndData": "0x" + op.paymaster_and_data(version).hex()}
    return {
        **fields,
        "paymaster": op.paymaster,
        "paymasterData": "0x" + op.paymaster_data.hex(),
        "paymasterVerificationGasLimit": hex(op.paymaster_verification_gas_limit),
        "paymasterPostOpGasLimit": hex(op.paymaster_post_op_gas_limit),
    }


def kms_config(
    directory: Path, anvil: Anvil, deployment: Deployment, database_url: str, hsm: SoftHsm | None, **extra: Any
) -> dict[str, Any]:
    custody: dict[str, Any]
    if hsm is None:
        custody = {"type": "development", "key_dir": str(directory / "keys"), "kek_env": "KMS_TEST_KEK"}
    else:
        custody = {"type": "pkcs11", "module": str(hsm.module), "token_label": hsm.token_label, "pin": hsm.pin}
    entry_points = [
        {"address": deployment.entry_points[v], "version": v, "factory": deployment.factories[v]}
        for v in ("v0.6", "v0.7", "v0.8")
        if v in deployment.entry_points
    ]
    return {
        "database_url": database_url,
        "custody": custody,
        "webauthn": {"rp_id": RP_ID, "rp_name": "KMS tests", "origins": [ORIGIN]},
        "chains": [{"chain_id": deployment.chain_id, "rpc_url": anvil.rpc_url, "entry_points": entry_points}],
        "admin_token": ADMIN,
        **extra,
    }


def approval(
    chain_id: int, op_hash: bytes, account_id: str, assertion: dict[str, Any], nonce: bytes, timestamp: int,
    key: str = PAYMASTER_KEY,
) -> str:  # fmt: skip
    """The paymaster's ``X-Paymaster-Signature``: its EIP-712 PaymasterApproval."""
    signature_hash = keccak(unb64url(assertion["response"]["signature"]))
    message = {
        "types": APPROVAL_TYPES,
        "primaryType": "PaymasterApproval",
        "domain": {"name": "aNode KMS", "version": "1", "chainId": chain_id},
        "message": {
            "userOpHash": op_hash,
            "accountId": account_id,
            "userSignatureHash": signature_hash,
            "nonce": nonce,
            "timestamp": timestamp,
        },
    }
    return "0x" + bytes(Account.sign_message(encode_typed_data(full_message=message), key).signature).hex()


def rotation_signature(old: str, new: str, key: str) -> str:
    message = {
        "types": ROTATION_TYPES,
        "primaryType": "SignerRotation",
        "domain": {"name": "aNode KMS", "version": "1"},
        "message": {"oldAddress": old, "newAddress": new},
    }
    return "0x" + bytes(Account.sign_message(encode_typed_data(full_message=message), key).signature).hex()


@dataclass
class Prepared:
    """One operation ready to send: the body and headers of ``POST /kms/sign-user-operation``."""

    op: UserOp
    op_hash: bytes
    body: dict[str, Any]
    headers: dict[str, str]

    def with_nonce(self, key: str = PAYMASTER_KEY, **changes: Any) -> Prepared:
        """The same assertion under a new paymaster nonce (and a new approval of it)."""
        body = {**self.body, "nonce": "0x" + secrets.token_hex(32), "timestamp": int(time.time()), **changes}
        signature = approval(
            body["chainId"], self.op_hash, body["accountId"], body["userSignature"], bytes.fromhex(body["nonce"][2:]),
            body["timestamp"], key,
        )  # fmt: skip
        return replace(self, body=body, headers={**self.headers, "x-paymaster-signature": signature})


class Wallet:
    """A wallet of one account on one EntryPoint version, talking to the KMS through ``client``."""

    def __init__(self, client: httpx.AsyncClient, anvil: Anvil, deployment: Deployment, version: str,
                 account_id: str) -> None:  # fmt: skip
        self.client, self.anvil, self.deployment, self.version = client, anvil, deployment, version
        self.account_id = account_id
        self.entry_point = deployment.entry_points[version]
        self.account: dict[str, Any] = {}

    async def post(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.client.post(path, json=body, headers=headers)

    async def create(self) -> dict[str, Any]:
        reply = await self.post(
            "/aa/create-account",
            {"accountId": self.account_id, "entryPoint": self.entry_point, "chainId": self.deployment.chain_id},
        )
        assert reply.status_code == 200, reply.text
        self.account = reply.json()
        return self.account

    async def register(self, authenticator: SoftAuthenticator) -> dict[str, Any]:
        options = await self.post("/webauthn/register/options", {"accountId": self.account_id})
        assert options.status_code == 200, options.text
        credential = authenticator.register(options.json()["options"])
        reply = await self.post("/webauthn/register", {"accountId": self.account_id, "credential": credential})
        assert reply.status_code == 200, reply.text
        result: dict[str, Any] = reply.json()
        return result

    def new_op(self, data: bytes = b"") -> UserOp:
        return UserOp(
            sender=self.account["address"],
            factory=self.account["factory"],
            factory_data=bytes.fromhex(self.account["factoryData"][2:]),
            call_data=execute_calldata(self.account["ownerAddress"], 0, data),
        )

    def op_hash(self, op: UserOp) -> bytes:
        return get_user_op_hash(self.anvil.rpc_url, self.entry_point, self.version, op)

    async def challenge(self, op_hash: bytes, account_id: str | None = None) -> str:
        reply = await self.post(
            "/webauthn/authenticate/options",
            {"accountId": account_id or self.account_id, "userOpHash": "0x" + op_hash.hex()},
        )
        assert reply.status_code == 200, reply.text
        challenge: str = reply.json()["challenge"]
        return challenge

    async def prepare(self, authenticator: SoftAuthenticator, op: UserOp | None = None, *, key: str = PAYMASTER_KEY,
                      timestamp: int | None = None, assertion: dict[str, Any] | None = None) -> Prepared:  # fmt: skip
        op = op or self.new_op()
        op_hash = self.op_hash(op)
        if assertion is None:
            assertion = authenticator.assert_(await self.challenge(op_hash))
        nonce, moment = secrets.token_bytes(32), int(time.time()) if timestamp is None else timestamp
        body = {
            "userOperation": full_rpc_op(op, self.version),
            "entryPoint": self.entry_point,
            "chainId": self.deployment.chain_id,
            "accountId": self.account_id,
            "userSignature": assertion,
            "nonce": "0x" + nonce.hex(),
            "timestamp": moment,
        }
        headers = {
            "x-paymaster-address": Account.from_key(key).address,
            "x-paymaster-signature": approval(self.deployment.chain_id, op_hash, self.account_id, assertion, nonce,
                                              moment, key),
        }  # fmt: skip
        return Prepared(op, op_hash, body, headers)

    async def sign(self, prepared: Prepared) -> httpx.Response:
        return await self.post("/kms/sign-user-operation", prepared.body, prepared.headers)


def refusal(reply: httpx.Response) -> tuple[int, str]:
    """``(HTTP status, error code)`` of a refusal."""
    return reply.status_code, reply.json()["error"]["code"]


class KmsProcess:
    """``python -m anode.kms serve`` as a real process on a fixed port; :meth:`restart` keeps the port."""

    def __init__(self, directory: Path, config: dict[str, Any] | Callable[[int], dict[str, Any]],
                 env: dict[str, str]) -> None:  # fmt: skip
        """``config`` may be a function of the port (a page's origin names it)."""
        import yaml

        from anode.devchain.anvil import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = directory / "kms.yaml"
        self.config_path.write_text(yaml.safe_dump(config(self.port) if callable(config) else config))
        self.log_path = directory / "kms.log"
        self.env = {**os.environ, **env}
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> KmsProcess:
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "anode.kms",
                    "serve",
                    "--config",
                    str(self.config_path),
                    "--port",
                    str(self.port),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the KMS exited with {self._process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/kms/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the KMS did not start in time:\n{self.log()}")

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def log(self) -> str:
        return self.log_path.read_text()[-3000:] if self.log_path.exists() else ""
