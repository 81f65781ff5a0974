"""Signer backends by their configuration name (``signer: {type: …}``), imported lazily.

Each backend module defines a settings model (a ``SignerSettingsBase`` subclass naming its own
fields, secrets as ``SecretStr``) and a ``build(settings) -> Signer`` function. Adding a backend
is one module plus one line in ``BACKENDS``; heavy client libraries (boto3, python-pkcs11) are
imported only when their backend is configured. Backends outside aNode register through the
Python entry point group ``anode.signers`` (``name = "package.module"``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, ValidationError

from anode.errors import ConfigError
from anode.signers.base import Signer


class SignerSettingsBase(BaseModel):
    """Common to every backend: its ``type``, and the paymasters it may sign for (empty: all)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str

    #: backends that hold a plain key in process memory (local, mnemonic) refuse to start in
    #: ``environment: production`` unless this is set
    allow_in_production: bool = False

    def __repr_args__(self) -> Any:  # never print backend fields (hosts, tokens, paths)
        return [("type", self.type)]


#: name → module defining ``Settings`` and ``build``
BACKENDS: dict[str, str] = {
    "local": "anode.signers.local",
    "keystore": "anode.signers.keystore",
    "mnemonic": "anode.signers.mnemonic",
    "aws_kms": "anode.signers.aws_kms",
    "pkcs11": "anode.signers.pkcs11",
    "remote": "anode.signers.remote",
    "cloudflare_secrets": "anode.signers.cloudflare_secrets",
    "hashicorp_vault": "anode.signers.vault",
}

ENTRY_POINT_GROUP = "anode.signers"


def _module(name: str) -> ModuleType:
    path = BACKENDS.get(name)
    if path is None:
        found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if not found:
            known = ", ".join(sorted({*BACKENDS, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))}))
            raise ConfigError(f"signer.type: unknown signer type {name!r} (known: {known})")
        path = found[0].value
    try:
        return importlib.import_module(path)
    except ImportError as exc:
        raise ConfigError(f"signer.type {name}: cannot import {path} ({exc})") from None


def signer_settings(raw: Any, where: str = "signer") -> SignerSettingsBase:
    """Validate a backend's settings mapping with that backend's own model."""
    if isinstance(raw, SignerSettingsBase):
        return raw
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping with a type")
    kind = raw.get("type", "local")
    if not isinstance(kind, str):
        raise ConfigError(f"{where}.type must be a string")
    model = cast(type[SignerSettingsBase], _module(kind).Settings)
    try:
        return model.model_validate({**raw, "type": kind})
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"{where}.{field}: {message}" if field else f"{where}: {message}") from None


#: backends whose key sits in plain form in process memory or configuration
IN_MEMORY_BACKENDS = frozenset({"local", "mnemonic"})


def check_production(settings: SignerSettingsBase, environment: str) -> None:
    if environment == "production" and settings.type in IN_MEMORY_BACKENDS and not settings.allow_in_production:
        raise ConfigError(
            f"signer.type {settings.type} keeps the key in plain form in memory and config: refused in "
            "environment: production. Use aws_kms, pkcs11, remote or keystore, or set "
            "signer.allow_in_production: true if you accept the risk"
        )


def build_signer(settings: SignerSettingsBase) -> Signer:
    build = cast(Callable[[SignerSettingsBase], Signer], _module(settings.type).build)
    return build(settings)
