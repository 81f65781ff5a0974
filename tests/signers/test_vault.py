"""``signer: {type: hashicorp_vault}`` against a stand-in for Vault, because no Vault server installs here.

Neither HashiCorp Vault nor OpenBao can be installed on this machine, so every test here talks
to ``tests/signers/vault_stub.py``: a small HTTP server in this process that speaks exactly the
Vault calls the backend makes (KV v2 read, AppRole login, transit decrypt, token revoke-self)
with Vault's response shapes and status codes. It proves aNode's side of the protocol (paths,
headers, auth, decoding, error handling), not Vault itself. The key read from it signs a sponsored
operation on anvil (the ``SignerContract`` suite), from ``anode serve`` too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from eth_account import Account

from anode.errors import ConfigError
from anode.signers.registry import build_signer, signer_settings
from anode.signers.vault import VaultKeySigner
from tests.signers.vault_stub import VaultStub
from tests.support.signer_contract import SignerContract

KEY = "0x" + "ba17" * 16
OTHER_KEY = "0x" + "c4fe" * 16
READ = "secret/data/anode/paymaster"


@pytest.fixture(scope="module")
def vault() -> Iterator[VaultStub]:
    with VaultStub() as stub:
        stub.put("secret", "anode/paymaster", {"private_key": KEY, "note": "aNode paymaster"})
        yield stub


@pytest.fixture(scope="module")
def reader(vault: VaultStub) -> str:
    """A token whose policy reads the paymaster secret."""
    return vault.token(READ)


def config(vault: VaultStub, **changes: Any) -> dict[str, Any]:
    return {"type": "hashicorp_vault", "address": vault.url, "path": "anode/paymaster", **changes}


class TestVaultSigner(SignerContract):
    backend = "hashicorp_vault"

    @pytest.fixture
    def signer_config(self, vault: VaultStub, reader: str) -> dict[str, Any]:
        return config(vault, token=reader)

    @pytest.fixture
    def signer_env(self) -> dict[str, str]:
        return {}

    @pytest.fixture
    def signer_secrets(self, reader: str) -> list[str]:
        return [KEY[2:], reader]


async def address_of(raw: dict[str, Any]) -> str:
    signer = build_signer(signer_settings(raw))
    assert isinstance(signer, VaultKeySigner)
    await signer.aclose()
    return signer.address


async def test_approle_transit_and_namespace_together() -> None:
    """AppRole login, a transit-encrypted value, a namespace; the login token is revoked afterwards."""
    with VaultStub(namespace="team-a") as stub:
        ciphertext = stub.encrypt("anode", bytes.fromhex(KEY[2:]))  # raw 32 bytes inside
        stub.put("kv", "pm", {"private_key": ciphertext})
        role_id, secret_id = stub.approle("kv/data/pm", "transit/decrypt/anode")
        raw = {
            "type": "hashicorp_vault", "address": stub.url, "auth": "approle", "role_id": role_id,
            "secret_id": secret_id, "mount": "kv", "path": "pm", "transit_key": "anode", "namespace": "team-a",
        }  # fmt: skip
        assert await address_of(raw) == Account.from_key(KEY).address
        paths = [(method, path) for method, path, _ in stub.requests]
        assert paths == [
            ("POST", "/v1/auth/approle/login"),
            ("GET", "/v1/kv/data/pm"),
            ("POST", "/v1/transit/decrypt/anode"),
            ("POST", "/v1/auth/token/revoke-self"),
        ]
        assert all(headers.get("x-vault-namespace") == "team-a" for _, _, headers in stub.requests)
        login_token = stub.requests[1][2]["x-vault-token"]
        assert login_token in stub.revoked

        with pytest.raises(ConfigError, match=r"vault answered 400 to the AppRole login .*invalid role or secret ID"):
            await address_of({**raw, "secret_id": "wrong-secret-id-77"})
        with pytest.raises(ConfigError, match="vault refused") as caught:
            await address_of({**raw, "namespace": "team-b"})
        assert secret_id not in caught.value.message


async def test_a_transit_plaintext_may_also_be_hex_text(vault: VaultStub) -> None:
    ciphertext = vault.encrypt("anode", (KEY + "\n").encode())
    vault.put("secret", "anode/hex-in-transit", {"private_key": ciphertext})
    token = vault.token("secret/data/anode/hex-in-transit", "transit/decrypt/anode")
    raw = config(vault, token=token, path="anode/hex-in-transit", transit_key="anode")
    assert await address_of(raw) == Account.from_key(KEY).address


async def test_versions_fields_and_the_vault_token_variable(vault: VaultStub, monkeypatch: pytest.MonkeyPatch) -> None:
    vault.put("secret", "anode/rotating", {"private_key": KEY})
    vault.put("secret", "anode/rotating", {"private_key": OTHER_KEY[2:], "key": KEY})
    token = vault.token("secret/data/anode/rotating")
    raw = config(vault, path="anode/rotating")
    monkeypatch.setenv("VAULT_TOKEN", token)
    assert await address_of(raw) == Account.from_key(OTHER_KEY).address  # the current version, no 0x
    assert await address_of({**raw, "version": 1}) == Account.from_key(KEY).address
    assert await address_of({**raw, "field": "key"}) == Account.from_key(KEY).address
    monkeypatch.delenv("VAULT_TOKEN")
    with pytest.raises(ConfigError, match=r"signer\.token: set token \(or VAULT_TOKEN\), or use auth: approle"):
        await address_of(raw)


def test_errors_say_what_to_check_without_secrets(vault: VaultStub, reader: str) -> None:
    nobody = vault.token()  # a valid token whose policy allows nothing
    vault.put("secret", "anode/not-a-key", {"private_key": "hello"})
    vault.put("secret", "anode/plain", {"private_key": KEY})
    cases = [
        (config(vault, token=nobody), rf"vault refused reading {READ} \(403: permission denied\): "
         rf"check the token/policy for {READ}"),
        (config(vault, token=vault.token("secret/data/anode/missing"), path="anode/missing"),
         r"vault has nothing at secret/data/anode/missing \(reading secret/data/anode/missing, 404\): check mount"),
        (config(vault, token=reader, field="seed"),
         r"signer\.field: .* has no field 'seed' \(fields: note, private_key\)"),
        (config(vault, token=vault.token("secret/data/anode/not-a-key"), path="anode/not-a-key"),
         r"the value at secret/data/anode/not-a-key is not a private key"),
        (config(vault, token=vault.token("secret/data/anode/plain"), path="anode/plain", transit_key="anode"),
         r"signer\.transit_key: .* is not transit ciphertext"),
        (config(vault, token=reader, address="http://127.0.0.1:1"), r"cannot reach vault at http://127.0.0.1:1"),
        (config(vault, auth="approle", role_id="r"), r"signer: auth: approle needs role_id and secret_id"),
    ]  # fmt: skip
    for raw, message in cases:
        with pytest.raises(ConfigError, match=message) as caught:
            build_signer(signer_settings(raw))
        for secret in (KEY[2:], reader, nobody):
            assert secret not in caught.value.message


def test_a_sealed_vault_stops_start_up(reader: str) -> None:
    with VaultStub() as stub:
        stub.sealed = True
        with pytest.raises(ConfigError, match=r"vault at http://127.0.0.1:\d+ is sealed or unavailable \(503"):
            build_signer(signer_settings({"type": "hashicorp_vault", "address": stub.url, "token": "t", "path": "p"}))
