"""Typed settings: a YAML file, then ``ANODE_…`` environment overrides, validated at start-up.

Environment keys map onto the YAML tree with ``__`` for nesting and list indexes as numbers:
``ANODE_SIGNER__PRIVATE_KEY``, ``ANODE_CHAINS__0__RPC_URL``. A value that starts with ``[`` or
``{`` is read as YAML (``ANODE_AUTH__API_KEYS='["k1","k2"]'``); anything else stays a string and
is converted by the field's type. Secrets are ``SecretStr``: they never print. ``ANODE_CONFIG``
and ``ANODE_TEST_…`` (the test suite's own variables) are not settings.
"""

from __future__ import annotations

import os
import re
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
#: the test suite's own variables (``ANODE_TEST_REDIS_URL``, ``ANODE_TEST_REQUIRE_ALL``): not settings
TEST_ENV_PREFIX = "ANODE_TEST_"
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


#: a quoted piece of a YAML problem (``'\\t'``, ``'<block end>'``, or text from the file: a tag, an alias)
_QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")
_TOKEN_NAME = re.compile(r"<[a-z ]+>")


def _masked(text: str) -> str:
    """``text`` with every quoted piece longer than a character or two (it could be from the file) as ``'…'``."""

    def keep(match: re.Match[str]) -> str:
        inner = match.group()[1:-1]
        return match.group() if len(inner) <= 4 or _TOKEN_NAME.fullmatch(inner) else "'…'"

    return _QUOTED.sub(keep, text)


def describe_yaml_error(exc: yaml.YAMLError) -> str:
    """What is wrong and where (line, column), never the text around it.

    PyYAML's own message quotes the offending line, which in a config file may be a key or a
    password; this says only the kind of problem and its position (1-based).
    """
    if isinstance(exc, yaml.MarkedYAMLError):
        problem = _masked(exc.problem or exc.context or "syntax error")
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        started = ""
        if exc.problem and exc.context and exc.context_mark is not None and exc.context_mark is not mark:
            start = exc.context_mark
            started = f" ({_masked(exc.context)} from line {start.line + 1}, column {start.column + 1})"
        return f"{problem}{where}{started}"
    if isinstance(exc, yaml.reader.ReaderError):
        return f"{_masked(str(exc.reason))} at character {exc.position + 1}"
    return f"unreadable YAML ({type(exc).__name__})"


def apply_env_overrides(tree: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Merge ``ANODE_…`` variables into ``tree``; a bad one is a ``ConfigError`` naming it, never its value."""
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name == "ANODE_CONFIG" or name.startswith(TEST_ENV_PREFIX):
            continue
        raw = environ[name]
        value: Any = raw
        if raw[:1] in "[{" and raw:
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError as exc:
                raise ConfigError(
                    f"environment variable {name} starts with {raw[0]!r}, so it is read as YAML, and its value "
                    f"is not valid YAML: {describe_yaml_error(exc)}"
                ) from None
        try:
            _set_path(tree, name[len(ENV_PREFIX) :].lower().split("__"), value)
        except ConfigError as exc:
            problem = exc.message.removeprefix("environment override: ")
            raise ConfigError(f"environment variable {name}: {problem}") from None
    return tree


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read ``path`` (YAML), apply environment overrides and validate; ``ConfigError`` on problems."""
    env = os.environ if environ is None else environ
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start + 1})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {describe_yaml_error(exc)}") from None
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
