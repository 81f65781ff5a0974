"""``signer: {type: keystore}``: an encrypted JSON keystore (V3), decrypted once at start-up.

The password comes from ``password`` (e.g. ``ANODE_SIGNER__PASSWORD``), the environment variable
named by ``password_env``, or ``password_file`` (a mounted secret).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import SecretStr, model_validator

from anode.errors import ConfigError
from anode.signers.local import KeystoreSigner
from anode.signers.registry import SignerSettingsBase


class Settings(SignerSettingsBase):
    keystore_path: Path
    password: SecretStr | None = None
    password_env: str | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _has_password(self) -> Settings:
        if self.password is None and self.password_env is None and self.password_file is None:
            raise ValueError("a keystore needs password, password_env or password_file")
        return self


def read_password(settings: Settings) -> str:
    if settings.password is not None:
        return settings.password.get_secret_value()
    if settings.password_env is not None:
        if settings.password_env not in os.environ:
            raise ConfigError(f"signer.password_env: environment variable {settings.password_env} is not set")
        return os.environ[settings.password_env]
    assert settings.password_file is not None
    try:
        return settings.password_file.read_text().rstrip("\n")
    except OSError as exc:
        raise ConfigError(f"signer.password_file: cannot read it ({exc.strerror})") from None


def build(settings: Settings) -> KeystoreSigner:
    return KeystoreSigner.from_file(settings.keystore_path, read_password(settings))
