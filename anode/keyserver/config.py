"""The key server's settings: one YAML file, validated at start-up.

```yaml
keys:
  - id: paymaster                       # the key_id aNode names
    signer: {type: keystore, keystore_path: /keys/paymaster.json, password_env: PAYMASTER_PASSWORD}
    allowed_callers: [anode-eu]         # token ids that may use this key
tokens:
  - id: anode-eu
    token_sha256: 5e884898…             # `anode keyserver token` prints a token and its digest
audit_log: /var/lib/anode-keyserver/audit.jsonl   # its head is kept beside it, in audit.jsonl.head
host: 0.0.0.0
port: 9100
tls_cert: /etc/anode-keyserver/cert.pem # with tls_key: serve HTTPS (do, off localhost)
tls_key: /etc/anode-keyserver/key.pem
```

``signer`` takes any aNode backend (validated by that backend's own settings model), so a key in
an HSM is ``{type: pkcs11, module, token_label, pin, key_label}``. A token may be given in plain
(``token``, e.g. for tests) or, better, as its SHA-256 (``token_sha256``): the file then holds
nothing that lets anyone sign. Secrets a backend needs come from the environment the backend
names (``password_env``, ``SOFTHSM2_CONF``, AWS credentials).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, field_validator, model_validator

from anode.config import LogLevel, SignerConfig, read_yaml_file, upper, validate_model

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TokenSettings(_Section):
    id: str = Field(pattern=_NAME)
    token: SecretStr | None = None
    token_sha256: str | None = None

    @field_validator("token_sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None and not _SHA256.match(value.lower()):
            raise ValueError("must be 64 hex digits (the SHA-256 of the token)")
        return None if value is None else value.lower()

    @model_validator(mode="after")
    def _one_form(self) -> TokenSettings:
        if (self.token is None) == (self.token_sha256 is None):
            raise ValueError("give exactly one of token and token_sha256")
        return self


class KeySettings(_Section):
    id: str = Field(pattern=_NAME)
    signer: SignerConfig
    allowed_callers: list[str] = Field(min_length=1)


class KeyserverSettings(_Section):
    keys: list[KeySettings] = Field(min_length=1)
    tokens: list[TokenSettings] = Field(min_length=1)
    audit_log: Path
    #: fsync each audit record before the signature is returned (slower; survives power loss)
    audit_fsync: bool = False
    host: str = "127.0.0.1"
    port: int = Field(9100, ge=0, lt=65536)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    log_level: Annotated[LogLevel, BeforeValidator(upper)] = "INFO"

    @model_validator(mode="after")
    def _consistent(self) -> KeyserverSettings:
        for kind, ids in (("keys", [k.id for k in self.keys]), ("tokens", [t.id for t in self.tokens])):
            if len(ids) != len(set(ids)):
                raise ValueError(f"{kind}: each id may appear once")
        known = {token.id for token in self.tokens}
        for key in self.keys:
            unknown = sorted(set(key.allowed_callers) - known)
            if unknown:
                raise ValueError(f"key {key.id!r}: allowed_callers names unknown token ids {unknown}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self


def load_keyserver_settings(path: Path) -> KeyserverSettings:
    """Read and validate the key server's YAML file (with the server's own loader); :class:`ConfigError`
    names every problem."""
    tree = read_yaml_file(path, "key server config")
    return validate_model(KeyserverSettings, tree, what="key server configuration")
