"""Signer backends by their configuration name (``signer: {type: …}``), imported lazily.

Each backend module defines a settings model (a ``SignerSettingsBase`` subclass naming its own
fields, secrets as ``SecretStr``) and a ``build(settings) -> Signer`` function. Adding a backend
is one module plus one line in ``BACKENDS``; heavy client libraries (boto3, python-pkcs11) are
imported only when their backend is configured.

Backends outside aNode register through the Python entry point group ``anode.signers``. The entry
point may name a module (``my_signer = "pkg.mod"``, with ``Settings`` and ``build`` as above) or a
signer class (``my_signer = "pkg.mod:MySigner"``, with a ``Settings`` attribute, built as
``MySigner(settings)``); it is loaded with ``EntryPoint.load()``. A config selects it either as
``signer: {type: custom, plugin: my_signer, …}`` or, shorter, ``signer: {type: my_signer, …}``
(a built-in of the same name wins; ``custom`` is never a plugin's name).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

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
#: ``signer: {type: custom, plugin: <entry point name>, …}``
CUSTOM = "custom"


class PluginSettings(SignerSettingsBase):
    """Mixed into a plugin's own settings model under ``type: custom``: the entry point's name."""

    plugin: str

    def __repr_args__(self) -> Any:
        return [("type", self.type), ("plugin", self.plugin)]


@dataclass(frozen=True, slots=True)
class Backend:
    """What a backend gives the registry: its settings model and how to build a signer from it."""

    settings: type[SignerSettingsBase]
    build: Callable[[SignerSettingsBase], Signer]


def _backend(source: Any, what: str) -> Backend:
    """A backend from a module (``Settings`` + ``build``) or a signer class (``Settings``, called with them)."""
    model = getattr(source, "Settings", None)
    if not (isinstance(model, type) and issubclass(model, SignerSettingsBase)):
        raise ConfigError(f"{what} has no Settings model (a subclass of anode.signers.registry.SignerSettingsBase)")
    build = source if isinstance(source, type) else getattr(source, "build", None)
    if not callable(build):
        raise ConfigError(f"{what} has no build(settings) function")
    return Backend(model, cast(Callable[[SignerSettingsBase], Signer], build))


def _installed() -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)
    return found


def _known() -> str:
    return ", ".join(sorted({*BACKENDS, CUSTOM, *_installed()}))


def _load(name: str, ep: EntryPoint) -> Backend:
    try:
        source = ep.load()
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"signer.type {name}: cannot import {ep.value} ({exc})") from None
    except Exception as exc:  # a plugin's own import-time failure: its type, not its text
        raise ConfigError(f"signer.type {name}: importing {ep.value} failed ({type(exc).__name__})") from None
    return _backend(source, f"signer plugin {name} ({ep.value})")


def _plugin(name: str, where: str) -> Backend:
    """The backend registered as entry point ``name`` (for ``type: custom``)."""
    ep = _installed().get(name)
    if ep is None or name == CUSTOM:
        installed = ", ".join(sorted(set(_installed()) - {CUSTOM})) or "none"
        raise ConfigError(
            f"{where}.plugin: no signer plugin {name!r} in the entry point group {ENTRY_POINT_GROUP} "
            f"(installed: {installed})"
        )
    return _load(name, ep)


def _resolve(name: str) -> Backend:
    """The backend of ``type: name``: a built-in, else an entry point of that name."""
    path = BACKENDS.get(name)
    if path is None:
        ep = _installed().get(name) if name != CUSTOM else None
        if ep is None:
            raise ConfigError(f"signer.type: unknown signer type {name!r} (known: {_known()})")
        return _load(name, ep)
    try:
        module = importlib.import_module(path)
    except ImportError as exc:
        raise ConfigError(f"signer.type {name}: cannot import {path} ({exc})") from None
    return _backend(module, f"signer backend {name} ({path})")


@cache
def _custom_model(model: type[SignerSettingsBase]) -> type[SignerSettingsBase]:
    """``model`` plus the ``plugin`` field that ``type: custom`` carries."""
    created = create_model(f"Custom{model.__name__}", __base__=(model, PluginSettings), __module__=model.__module__)
    return cast(type[SignerSettingsBase], created)


def signer_settings(raw: Any, where: str = "signer") -> SignerSettingsBase:
    """Validate a backend's settings mapping with that backend's own model."""
    if isinstance(raw, SignerSettingsBase):
        return raw
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping with a type")
    kind = raw.get("type", "local")
    if not isinstance(kind, str):
        raise ConfigError(f"{where}.type must be a string")
    if kind == CUSTOM:
        plugin = raw.get("plugin")
        if not isinstance(plugin, str) or not plugin:
            raise ConfigError(
                f"{where}.plugin: type: custom needs plugin: the name of a signer plugin's entry point "
                f"(group {ENTRY_POINT_GROUP})"
            )
        model = _custom_model(_plugin(plugin, where).settings)
    else:
        model = _resolve(kind).settings
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
    if isinstance(settings, PluginSettings):
        return _plugin(settings.plugin, "signer").build(settings)
    return _resolve(settings.type).build(settings)
