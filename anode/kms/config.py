"""The KMS's settings: one YAML file (``anode kms serve --config kms.yaml``), validated at start-up.

```yaml
environment: production                 # the development custody backend is refused here
database_url: postgresql://kms@db/kms   # default sqlite:///kms.db; the KMS's own tables (kms_*)
custody:
  type: pkcs11                          # one non-extractable secp256k1 key per account, made inside
  module: /usr/lib/softhsm/libsofthsm2.so
  token_label: kms
  pin: "…"                              # or pin_env: KMS_PIN
webauthn:
  rp_id: wallet.example.com
  rp_name: Example Wallet
  origins: [https://wallet.example.com]
chains:
  - chain_id: 1
    rpc_url: https://node.example.com   # the factories' getAddress is read from here
    entry_points:
      - {address: "0x0000000071727De22E5E9d8BAf0edAc6f37da032", version: v0.7, factory: "0x…"}
admin_token_sha256: 5e88…               # the SHA-256 of the admin token (or admin_token: … in tests)
signature_window_seconds: 300           # a paymaster request's timestamp must be this close to now
nonce_retention_seconds: 600            # a paymaster nonce is remembered at least this long
challenge_seconds: 180                  # a passkey challenge expires after this
rotation_overlap_seconds: 3600          # a rotated-out paymaster signer keeps working this long
host: 127.0.0.1
port: 9200
```

The development backend (``custody: {type: development, key_dir, kek_env}``) keeps each key in a
file under ``key_dir``, encrypted (AES-256-GCM) under the key-encryption key read from the
environment variable ``kek_env`` (64 hex digits). It is refused when ``environment: production``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, field_validator, model_validator

from anode.config import LogLevel, read_yaml_file, upper, validate_model
from anode.errors import ConfigError
from anode.userop.versions import EntryPointVersion

_ADDRESS = r"^0x[0-9a-fA-F]{40}$"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Pkcs11Custody(_Section):
    type: Literal["pkcs11"]
    module: Path
    token_label: str
    pin: SecretStr | None = None
    pin_env: str | None = None

    def the_pin(self) -> SecretStr:
        if self.pin is not None:
            return self.pin
        value = os.environ.get(self.pin_env or "")
        if not value:
            raise ConfigError(f"custody.pin_env: the environment variable {self.pin_env!r} is not set")
        return SecretStr(value)

    @model_validator(mode="after")
    def _one_pin(self) -> Pkcs11Custody:
        if (self.pin is None) == (self.pin_env is None):
            raise ValueError("give exactly one of pin and pin_env")
        return self


class DevelopmentCustody(_Section):
    type: Literal["development"]
    key_dir: Path
    kek_env: str = "ANODE_KMS_KEK"


class EntryPointSettings(_Section):
    address: str = Field(pattern=_ADDRESS)
    version: EntryPointVersion
    #: the SimpleAccountFactory for this EntryPoint
    factory: str = Field(pattern=_ADDRESS)


class ChainSettings(_Section):
    chain_id: int = Field(gt=0)
    rpc_url: str
    entry_points: list[EntryPointSettings] = Field(min_length=1)


class WebauthnSettings(_Section):
    rp_id: str
    rp_name: str = "aNode KMS"
    origins: list[str] = Field(min_length=1)


class KmsSettings(_Section):
    environment: Literal["development", "production"] = "development"
    database_url: str = "sqlite:///kms.db"
    custody: Annotated[Pkcs11Custody | DevelopmentCustody, Field(discriminator="type")]
    webauthn: WebauthnSettings
    chains: list[ChainSettings] = Field(min_length=1)
    admin_token: SecretStr | None = None
    admin_token_sha256: str | None = None
    signature_window_seconds: int = Field(300, ge=1, le=3600)
    nonce_retention_seconds: int = Field(600, ge=600)
    challenge_seconds: int = Field(180, ge=10, le=3600)
    rotation_overlap_seconds: int = Field(3600, ge=0)
    host: str = "127.0.0.1"
    port: int = Field(9200, ge=0, lt=65536)
    log_level: Annotated[LogLevel, BeforeValidator(upper)] = "INFO"

    @field_validator("admin_token_sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None and not _SHA256.match(value.lower()):
            raise ValueError("must be 64 hex digits (the SHA-256 of the admin token)")
        return None if value is None else value.lower()

    @model_validator(mode="after")
    def _consistent(self) -> KmsSettings:
        if (self.admin_token is None) == (self.admin_token_sha256 is None):
            raise ValueError("give exactly one of admin_token and admin_token_sha256")
        if self.environment == "production" and self.custody.type == "development":
            raise ValueError(
                "custody: the development backend keeps keys in files; use type: pkcs11 in environment: production"
            )
        if self.nonce_retention_seconds < 2 * self.signature_window_seconds:
            raise ValueError("nonce_retention_seconds must be at least twice signature_window_seconds")
        ids = [chain.chain_id for chain in self.chains]
        if len(ids) != len(set(ids)):
            raise ValueError("chains: each chain_id may appear once")
        return self

    def entry_point(self, chain_id: int, address: str) -> EntryPointSettings | None:
        for chain in self.chains:
            if chain.chain_id == chain_id:
                for entry in chain.entry_points:
                    if entry.address.lower() == address.lower():
                        return entry
        return None

    def chain(self, chain_id: int) -> ChainSettings | None:
        return next((chain for chain in self.chains if chain.chain_id == chain_id), None)


def load_kms_settings(path: Path) -> KmsSettings:
    """Read and validate the KMS's YAML file; :class:`ConfigError` names every problem."""
    return validate_model(KmsSettings, read_yaml_file(path, "KMS config"), what="KMS configuration")
