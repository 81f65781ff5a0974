"""``signer: {type: aws_kms}`` against moto's KMS, served over real HTTP on 127.0.0.1.

moto's ``Sign`` ignores ``MessageType=DIGEST`` and signs ``sha256(digest)``; the server fixture
corrects that (``tests/signers/moto_kms.py``) so that it behaves as AWS KMS does, and
``test_uncorrected_moto_*`` show that the correction is what makes these tests meaningful: against
moto's own behaviour a digest-signing backend's signature recovers to no known key, and aNode
refuses it instead of handing out a signature the paymaster contract would reject.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install 'moto[server]')")

import boto3
from coincurve import PublicKey
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.serialization import load_der_public_key
from eth_utils.crypto import keccak
from moto.server import ThreadedMotoServer

from anode.errors import ConfigError, SignerUnavailable
from anode.signers.aws_kms import AwsKmsSigner, Settings, generate_key
from anode.signers.ecdsa import address_of_point, der_to_rs, low_s
from anode.signers.registry import build_signer, signer_settings
from tests.signers.moto_kms import KmsServer
from tests.support.cli import CHAINS, anode
from tests.support.signer_contract import SignerContract, assert_valid

REGION = "eu-central-1"
#: dummy credentials (moto accepts any); distinctive so the secret-grep test means something
ACCESS_KEY_ID = "AKIATESTANODE0KMS123"
SECRET_ACCESS_KEY = "kmsSecretAccessKeyUnderTest/0123456789abcdefXYZ"


@pytest.fixture(scope="module")
def aws_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Credentials through the standard chain (environment), and no user's ~/.aws files."""
    empty = tmp_path_factory.mktemp("aws")
    return {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "AWS_CONFIG_FILE": str(empty / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(empty / "credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture(scope="module")
def kms(aws_env: dict[str, str]) -> Iterator[KmsServer]:
    with pytest.MonkeyPatch.context() as patch, KmsServer() as server:
        for name, value in aws_env.items():
            patch.setenv(name, value)
        yield server


@pytest.fixture(scope="module")
def kms_key(kms: KmsServer) -> tuple[str, str]:
    """A key made by aNode's own ``generate_key`` (``anode keys generate``): ``(key_id, address)``."""
    return generate_key(
        Settings(type="aws_kms", key_id="alias/anode-contract", region=REGION, endpoint_url=kms.endpoint_url)
    )


def kms_config(kms: KmsServer, key_id: str, **extra: Any) -> dict[str, Any]:
    return {"type": "aws_kms", "key_id": key_id, "region": REGION, "endpoint_url": kms.endpoint_url, **extra}


class TestAwsKmsSigner(SignerContract):
    backend = "aws_kms"

    @pytest.fixture
    def signer_config(self, kms: KmsServer, kms_key: tuple[str, str]) -> dict[str, Any]:
        return kms_config(kms, "alias/anode-contract")

    @pytest.fixture
    def signer_env(self, aws_env: dict[str, str]) -> dict[str, str]:
        return aws_env

    @pytest.fixture
    def signer_secrets(self) -> list[str]:
        return [SECRET_ACCESS_KEY]


def _client(kms: KmsServer) -> Any:
    return boto3.client("kms", region_name=REGION, endpoint_url=kms.endpoint_url)


def test_generate_key_makes_a_secp256k1_signing_key_and_its_alias(kms: KmsServer, kms_key: tuple[str, str]) -> None:
    key_id, address = kms_key
    client = _client(kms)
    metadata = client.describe_key(KeyId="alias/anode-contract")["KeyMetadata"]
    assert metadata["KeyId"] == key_id
    assert metadata["KeyUsage"] == "SIGN_VERIFY"
    assert metadata.get("KeySpec", metadata.get("CustomerMasterKeySpec")) == "ECC_SECG_P256K1"
    # the key id and the alias name the same signer
    by_id = AwsKmsSigner.connect(Settings(**kms_config(kms, key_id)))
    assert by_id.address == address
    client.close()


def test_generate_key_refuses_an_alias_in_use_and_creates_no_key(kms: KmsServer, kms_key: tuple[str, str]) -> None:
    client = _client(kms)
    before = len(client.list_keys()["Keys"])
    with pytest.raises(ConfigError, match="already names KMS key"):
        generate_key(Settings(**kms_config(kms, "alias/anode-contract")))
    assert len(client.list_keys()["Keys"]) == before
    client.close()


def test_settings_credentials_are_used_when_given(kms: KmsServer, kms_key: tuple[str, str]) -> None:
    config = kms_config(kms, kms_key[0], access_key_id="AKIAOTHER", secret_access_key="other-secret-value")
    settings = signer_settings(config)
    assert "other-secret-value" not in repr(settings) + str(settings) + settings.model_dump_json()
    assert build_signer(settings).address == kms_key[1]


@pytest.mark.parametrize("spec", ["ECC_NIST_P256", "RSA_2048"])
def test_a_key_of_another_spec_stops_start_up(kms: KmsServer, spec: str) -> None:
    key_id = _client(kms).create_key(KeySpec=spec, KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    with pytest.raises(ConfigError, match=f"key spec {spec}, not ECC_SECG_P256K1"):
        build_signer(signer_settings(kms_config(kms, key_id)))


def test_an_unknown_key_stops_start_up_naming_it(kms: KmsServer) -> None:
    with pytest.raises(ConfigError, match=r"signer\.key_id: KMS GetPublicKey for alias/absent failed \(NotFound"):
        build_signer(signer_settings(kms_config(kms, "alias/absent")))


def test_an_unreachable_kms_stops_start_up(kms_key: tuple[str, str]) -> None:
    config = {"type": "aws_kms", "key_id": kms_key[0], "region": REGION, "endpoint_url": "http://127.0.0.1:9"}
    with pytest.raises(ConfigError, match="GetPublicKey"):
        build_signer(signer_settings({**config, "timeout_seconds": 1, "max_attempts": 1}))


async def test_a_kms_outage_after_start_up_is_signer_unavailable(kms: KmsServer, kms_key: tuple[str, str]) -> None:
    """A second moto server in this process serves the same keys; it goes away after start-up."""
    second = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    second.start()
    host, port = second.get_host_and_port()
    config = {**kms_config(kms, kms_key[0]), "endpoint_url": f"http://{host}:{port}"}
    signer = AwsKmsSigner.connect(Settings(**config, timeout_seconds=1, max_attempts=1))
    second.stop()
    try:
        with pytest.raises(SignerUnavailable, match=r"Sign with .* failed") as caught:
            await signer.unsafe_sign_hash(keccak(b"x"))
        assert caught.value.code == "ANODE_SIGNER_UNAVAILABLE"
        assert SECRET_ACCESS_KEY not in caught.value.message
    finally:
        await signer.aclose()


# -- why the moto correction matters -----------------------------------------------------------


def test_uncorrected_moto_signs_sha256_of_the_digest(kms: KmsServer, kms_key: tuple[str, str]) -> None:
    """moto's own DIGEST handling hashes again; the corrected server signs the digest itself."""
    key_id = kms_key[0]
    client = _client(kms)
    verifier = load_der_public_key(client.get_public_key(KeyId=key_id)["PublicKey"])
    assert isinstance(verifier, ec.EllipticCurvePublicKey)
    digest = keccak(b"a paymaster hash")

    def sign() -> bytes:
        response = client.sign(KeyId=key_id, Message=digest, MessageType="DIGEST", SigningAlgorithm="ECDSA_SHA_256")
        return bytes(response["Signature"])

    corrected = sign()
    verifier.verify(corrected, digest, ec.ECDSA(Prehashed(hashes.SHA256())))  # AWS's behaviour
    with kms.uncorrected():
        uncorrected = sign()
    verifier.verify(uncorrected, hashlib.sha256(digest).digest(), ec.ECDSA(Prehashed(hashes.SHA256())))
    with pytest.raises(InvalidSignature):
        verifier.verify(uncorrected, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    client.close()


async def test_uncorrected_moto_gives_a_signature_that_recovers_to_no_key_and_is_refused(
    kms: KmsServer, kms_key: tuple[str, str]
) -> None:
    """What a backend that hashed twice would produce: the signer refuses it, nothing reaches a client."""
    signer = AwsKmsSigner.connect(Settings(**kms_config(kms, kms_key[0])))
    digest = keccak(b"a paymaster hash")
    try:
        assert_valid(await signer.unsafe_sign_hash(digest), digest, signer.address)
        with kms.uncorrected(), pytest.raises(SignerUnavailable, match="does not recover") as caught:
            await signer.unsafe_sign_hash(digest)
        assert caught.value.code == "ANODE_SIGNER_BAD_SIGNATURE"

        # and the raw uncorrected signature, with either v, recovers to some other address
        with kms.uncorrected():
            der = _client(kms).sign(
                KeyId=kms_key[0], Message=digest, MessageType="DIGEST", SigningAlgorithm="ECDSA_SHA_256"
            )["Signature"]
        r, s = der_to_rs(der)
        rs = r.to_bytes(32, "big") + low_s(s).to_bytes(32, "big")
        for recovery_id in (0, 1):
            point = PublicKey.from_signature_and_message(rs + bytes([recovery_id]), digest, hasher=None)
            assert address_of_point(point.format(compressed=False)) != signer.address
    finally:
        await signer.aclose()


async def test_anode_keys_generate_makes_a_kms_key_and_it_signs(
    kms: KmsServer, aws_env: dict[str, str], tmp_path: Path
) -> None:
    """The real CLI, in a subprocess, as an operator runs it, against the moto KMS server:
    ``keys generate`` creates the key and its alias, ``keys address`` shows it, a second
    ``generate`` refuses, and the key signs (through this process's DIGEST-fixed server)."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"signer": kms_config(kms, "alias/anode-cli"), "chains": CHAINS}))
    made = anode("keys", "generate", "--config", str(config), env=aws_env)
    assert made.returncode == 0, made.stderr
    key_id, created = made.stdout.strip().removeprefix("created KMS key ").split(": ")
    assert SECRET_ACCESS_KEY not in made.stdout + made.stderr
    shown = anode("keys", "address", "--config", str(config), env=aws_env)
    assert shown.returncode == 0 and shown.stdout.strip() == created
    again = anode("keys", "generate", "--config", str(config), env=aws_env)
    assert again.returncode == 2 and "already names KMS key" in again.stderr
    client = _client(kms)
    assert client.describe_key(KeyId="alias/anode-cli")["KeyMetadata"]["KeyId"] == key_id
    client.close()
    signer = AwsKmsSigner.connect(Settings(**kms_config(kms, key_id)))
    try:
        digest = keccak(b"signed with the key the CLI made")
        assert_valid(await signer.unsafe_sign_hash(digest), digest, created)
    finally:
        await signer.aclose()
