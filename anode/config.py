"""Typed settings: a YAML file, then ``ANODE_…`` environment overrides, validated at start-up.

Environment keys map onto the YAML tree with ``__`` for nesting and list indexes as numbers:
``ANODE_SIGNER__PRIVATE_KEY``, ``ANODE_CHAINS__0__RPC_URL``. A value that starts with ``[`` or
``{`` is read as YAML (``ANODE_AUTH__API_KEYS='["k1","k2"]'``); anything else stays a string and
is converted by the field's type. Secrets are ``SecretStr``: they never print.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from anode.errors import ConfigError
from anode.signers.manager_settings import ManagerSettings
from anode.signers.registry import SignerSettingsBase
from anode.userop.codec import parse_address

ENV_PREFIX = "ANODE_"
MAX_VALIDITY_SECONDS = 86_400


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _address(value: str) -> str:
    parse_address(value)
    return value


def _signer_settings(value: Any) -> SignerSettingsBase:
    from anode.signers.registry import signer_settings

    try:
        return signer_settings(value)
    except ConfigError as exc:
        raise ValueError(exc.message) from None


#: validated by the configured backend's own settings model (``anode/signers/registry.py``)
SignerConfig = Annotated[SignerSettingsBase, BeforeValidator(_signer_settings)]


def _managed_signer_settings(value: Any) -> SignerSettingsBase | ManagerSettings:
    from anode.signers.manager_settings import signer_config

    try:
        return signer_config(value)
    except ConfigError as exc:
        raise ValueError(exc.message) from None


#: the server's ``signer:``: one backend, or a manager (``primary``, ``backups``, ``retiring``, …)
ManagedSignerConfig = Annotated[SignerSettingsBase | ManagerSettings, BeforeValidator(_managed_signer_settings)]


class PaymasterSettings(_Section):
    entry_point: str
    address: str
    contract: Literal["verifying", "singleton"]
    #: needed only for an EntryPoint that is not at its canonical address
    entry_point_version: Literal["v0.6", "v0.7", "v0.8"] | None = None
    verification_gas_limit: int = Field(100_000, ge=0, lt=1 << 128)
    post_op_gas_limit: int = Field(0, ge=0, lt=1 << 128)

    _check_addresses = field_validator("entry_point", "address")(_address)


class ChainSettings(_Section):
    chain_id: int = Field(gt=0)
    #: provider URLs carry API keys (``/v2/<key>``, ``?apikey=``): kept out of repr/str
    rpc_url: str = Field(repr=False)
    bundler_url: str | None = Field(None, repr=False)
    paymasters: list[PaymasterSettings] = Field(min_length=1)


class AuthSettings(_Section):
    #: project keys: may sponsor
    api_keys: list[SecretStr] = Field(default_factory=list)
    #: admin keys: may also manage policies, blacklists and keys
    admin_keys: list[SecretStr] = Field(default_factory=list)


class SponsorshipSettings(_Section):
    valid_for_seconds: int = Field(600, ge=1, le=MAX_VALIDITY_SECONDS)
    #: validAfter is set this far in the past, so chains whose clock lags still accept the op
    valid_after_slack_seconds: int = Field(60, ge=0, le=3600)
    sponsor_name: str = "aNode"
    sponsor_icon: str | None = None


class ModuleEntry(_Section):
    name: str
    enabled: bool = True
    config: dict[str, Any] = Field(default_factory=dict)


class PipelineSettings(_Section):
    """The ordered pipeline (``pipeline.modules``). Without one, operations are only signed."""

    modules: list[ModuleEntry] = Field(default_factory=lambda: [ModuleEntry(name="paymaster_signer")])


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, lt=65536)
    #: server processes sharing the port (one Python process uses one core). Every piece of shared
    #: state (ledger, limits, confirmations, audit chain) lives in the database or Redis.
    workers: int = Field(1, ge=1, le=64)


class Settings(_Section):
    environment: Literal["development", "production"] = "development"
    #: may carry the database password: kept out of repr/str
    database_url: str = Field("sqlite:///anode.db", repr=False)
    signer: ManagedSignerConfig
    chains: list[ChainSettings] = Field(min_length=1)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    sponsorship: SponsorshipSettings = Field(default_factory=SponsorshipSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    #: Redis for shared caches and limits across processes (``redis://127.0.0.1:6379/0``); none: in-process
    redis_url: str | None = Field(None, repr=False)
    #: policies seeded at start-up (see the policy engine); managed at runtime through the API
    policies: list[dict[str, Any]] = Field(default_factory=list)
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _unique_chains(self) -> Settings:
        ids = [chain.chain_id for chain in self.chains]
        if len(ids) != len(set(ids)):
            raise ValueError("chains: each chain_id may appear once")
        return self


def _set_path(tree: dict[str, Any], parts: list[str], value: Any) -> None:
    node: Any = tree
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        key: Any = int(part) if part.isdigit() else part
        if isinstance(node, list):
            if not isinstance(key, int):
                raise ConfigError(f"environment override: {part!r} must be a list index")
            while len(node) <= key:
                node.append({})
            if last:
                node[key] = value
            else:
                if not isinstance(node[key], dict | list):
                    node[key] = [] if parts[index + 1].isdigit() else {}
                node = node[key]
            continue
        if last:
            node[key] = value
        else:
            if not isinstance(node.get(key), dict | list):
                node[key] = [] if parts[index + 1].isdigit() else {}
            node = node[key]


def apply_env_overrides(tree: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in ("ANODE_CONFIG",):
            continue
        raw = environ[name]
        value: Any = yaml.safe_load(raw) if raw[:1] in "[{" and raw else raw
        _set_path(tree, name[len(ENV_PREFIX) :].lower().split("__"), value)
    return tree


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read ``path`` (YAML), apply environment overrides and validate; ``ConfigError`` on problems."""
    env = os.environ if environ is None else environ
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        tree = loaded or {}
    apply_env_overrides(tree, env)
    return validate_settings(tree)


def validate_settings(tree: dict[str, Any]) -> Settings:
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "(top level)"
            lines.append(f"  {where}: {error['msg'].removeprefix('Value error, ')}")
        raise ConfigError("invalid configuration:\n" + "\n".join(lines)) from None
