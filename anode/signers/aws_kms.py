"""``signer: {type: aws_kms}``: a secp256k1 key that never leaves AWS KMS.

At start-up ``GetPublicKey`` gives the key's SubjectPublicKeyInfo, from which the address is
derived (a key of any spec but ``ECC_SECG_P256K1``, or one not for ``SIGN_VERIFY``, stops
start-up). Each signature is one ``Sign(MessageType=DIGEST, SigningAlgorithm=ECDSA_SHA_256)``
call on the 32-byte digest: KMS signs the digest as given (no second hash) and returns DER
``SEQUENCE {r, s}``, which :mod:`anode.signers.ecdsa` turns into a low-s signature with ``v``.

Credentials come from boto3's standard chain (environment, ``profile``, container or instance
role) unless ``access_key_id``/``secret_access_key`` are set. boto3 blocks, so calls run on this
signer's own thread pool (``max_concurrency`` threads and as many pooled HTTP connections,
:mod:`anode.signers.threaded`); the event loop never waits on KMS. Errors name the AWS error
code (``AccessDeniedException``), never AWS's message text, and botocore's loggers are held at
WARNING or above (below, they print every response body: :func:`anode.redact.quiet_loggers`).
"""

from __future__ import annotations

import functools
import re
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from pydantic import Field, SecretStr

from anode.errors import ConfigError, SignerUnavailable
from anode.redact import known_code, quiet_loggers
from anode.signers.base import SignedDigest
from anode.signers.ecdsa import BAD_SIGNATURE, DerError, address_of_point, der_to_rs, point_from_spki, signed_digest
from anode.signers.registry import SignerSettingsBase
from anode.signers.threaded import ThreadedSigner

KEY_SPEC = "ECC_SECG_P256K1"
SIGNING_ALGORITHM = "ECDSA_SHA_256"
#: AWS error codes are CamelCase words, an acronym first at most (``KMSInvalidStateException``,
#: ``AccessDeniedException``): never digits, never an access key id or a base64 secret
_AWS_CODE = re.compile(r"^[A-Z]*(?:[A-Z][a-z]+)+$")


class Settings(SignerSettingsBase):
    key_id: str  # key id, key ARN, alias name (alias/…) or alias ARN
    region: str
    endpoint_url: str | None = None  # a VPC endpoint, or a local KMS for tests
    profile: str | None = None
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None
    timeout_seconds: float = Field(default=5.0, gt=0)
    max_attempts: int = Field(default=2, ge=1, le=10)  # botocore's own retries, first call included
    max_concurrency: int = Field(default=16, ge=1, le=256)


def _error(exc: Exception) -> str:
    """A short reason for an error from botocore: the AWS error code only.

    AWS's message text is never repeated: a proxy or a fake in front of KMS may echo credentials
    or request data there.
    """
    if isinstance(exc, ClientError):
        return known_code(exc.response.get("Error", {}).get("Code"), shape=_AWS_CODE) or "ClientError"
    return type(exc).__name__


def kms_client(settings: Settings) -> Any:
    """A boto3 KMS client for ``settings`` (connection fields only; ``key_id`` is not used)."""

    def secret(value: SecretStr | None) -> str | None:
        return None if value is None else value.get_secret_value()

    quiet_loggers()  # botocore logs every response body at DEBUG, an error's text included

    try:
        session = boto3.session.Session(
            profile_name=settings.profile,
            region_name=settings.region,
            aws_access_key_id=secret(settings.access_key_id),
            aws_secret_access_key=secret(settings.secret_access_key),
            aws_session_token=secret(settings.session_token),
        )
        return session.client(
            "kms",
            endpoint_url=settings.endpoint_url,
            config=Config(
                connect_timeout=settings.timeout_seconds,
                read_timeout=settings.timeout_seconds,
                retries={"max_attempts": settings.max_attempts, "mode": "standard"},
                max_pool_connections=settings.max_concurrency,
            ),
        )
    except BotoCoreError as exc:  # e.g. ProfileNotFound
        raise ConfigError(f"signer: cannot set up the AWS KMS client ({_error(exc)})") from None


def public_point(client: Any, key_id: str) -> bytes:
    """``GetPublicKey`` of a secp256k1 signing key → its uncompressed point; else :class:`ConfigError`."""
    try:
        response = client.get_public_key(KeyId=key_id)
    except NoCredentialsError:
        raise ConfigError(
            "signer: no AWS credentials found (environment, profile, role, or access_key_id/secret_access_key)"
        ) from None
    except (ClientError, BotoCoreError) as exc:
        raise ConfigError(f"signer.key_id: KMS GetPublicKey for {key_id} failed ({_error(exc)})") from None
    # AWS answers both names; older servers (and moto) only the deprecated one
    spec = response.get("KeySpec") or response.get("CustomerMasterKeySpec")
    if spec != KEY_SPEC:
        raise ConfigError(f"signer.key_id: KMS key {key_id} has key spec {spec}, not {KEY_SPEC}")
    if response.get("KeyUsage", "SIGN_VERIFY") != "SIGN_VERIFY":
        raise ConfigError(f"signer.key_id: KMS key {key_id} is not a SIGN_VERIFY key")
    try:
        return point_from_spki(response["PublicKey"])
    except DerError as exc:
        raise ConfigError(f"signer.key_id: KMS key {key_id}: {exc}") from None


class AwsKmsSigner(ThreadedSigner):
    """One KMS key. Holds a boto3 client (thread-safe) and the key's public point, nothing secret."""

    backend = "aws_kms"

    def __init__(self, client: Any, key_id: str, point: bytes, max_concurrency: int = 16) -> None:
        super().__init__(max_concurrency, "anode-kms")
        self._client = client
        self._key_id = key_id
        self._point = point
        self._address = address_of_point(point)
        self._sign_request = functools.partial(
            client.sign, KeyId=key_id, MessageType="DIGEST", SigningAlgorithm=SIGNING_ALGORITHM
        )

    @classmethod
    def connect(cls, settings: Settings) -> AwsKmsSigner:
        """Fetch and check the key's public key; any problem is a :class:`ConfigError`."""
        client = kms_client(settings)
        return cls(client, settings.key_id, public_point(client, settings.key_id), settings.max_concurrency)

    @property
    def address(self) -> str:
        return self._address

    @property
    def key_id(self) -> str:
        return self._key_id

    def sign_blocking(self, digest: bytes) -> SignedDigest:
        """One ``Sign`` call and its conversion; runs on the signer's thread pool."""
        try:
            response = self._sign_request(Message=digest)
        except (ClientError, BotoCoreError) as exc:
            raise SignerUnavailable(f"aws_kms: Sign with {self._key_id} failed ({_error(exc)})") from None
        try:
            r, s = der_to_rs(response["Signature"])
        except (DerError, KeyError):
            raise SignerUnavailable(
                f"aws_kms: Sign with {self._key_id} returned no DER ECDSA signature", code=BAD_SIGNATURE
            ) from None
        return signed_digest(digest, r, s, self._point, self._address)

    def release(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key_id={self._key_id}, address={self._address})"


def build(settings: Settings) -> AwsKmsSigner:
    return AwsKmsSigner.connect(settings)


def generate_key(settings: Settings, *, description: str = "aNode paymaster signer") -> tuple[str, str]:
    """``anode keys generate`` for KMS: ``CreateKey(ECC_SECG_P256K1, SIGN_VERIFY)`` → ``(key_id, address)``.

    When ``settings.key_id`` is an alias name (``alias/anode-paymaster``) the alias is created to
    point at the new key, so the same configuration then signs with it; an alias that already
    names a key is refused before any key is created. Any other ``key_id`` is ignored: put the
    printed key id into the configuration.
    """
    alias = settings.key_id if settings.key_id.startswith("alias/") else None
    client = kms_client(settings)
    try:
        if alias is not None:
            try:
                existing = client.describe_key(KeyId=alias)["KeyMetadata"]["KeyId"]
            except client.exceptions.NotFoundException:
                pass
            else:
                raise ConfigError(f"signer.key_id: {alias} already names KMS key {existing}; choose another alias")
        created = client.create_key(KeySpec=KEY_SPEC, KeyUsage="SIGN_VERIFY", Description=description)
        key_id = str(created["KeyMetadata"]["KeyId"])
        if alias is not None:
            client.create_alias(AliasName=alias, TargetKeyId=key_id)
        return key_id, address_of_point(public_point(client, key_id))
    except NoCredentialsError:
        raise ConfigError("signer: no AWS credentials found (environment, profile, role, or access keys)") from None
    except (ClientError, BotoCoreError) as exc:
        raise ConfigError(f"signer: KMS key creation failed ({_error(exc)})") from None
    finally:
        client.close()
