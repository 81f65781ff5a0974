"""Typed settings: a YAML file, then ``ANODE_…`` environment overrides, validated at start-up.

Environment keys map onto the YAML tree with ``__`` for nesting and list indexes as numbers:
``ANODE_SIGNER__PRIVATE_KEY``, ``ANODE_CHAINS__0__RPC_URL``. A value that starts with ``[`` or
``{`` is read as YAML (``ANODE_AUTH__API_KEYS='["k1","k2"]'``); anything else stays a string and
is converted by the field's type. ``ANODE_CONFIG`` and ``ANODE_TEST_…`` (the test suite's own
variables) are not settings. A variable whose first part names no setting (``ANODE_BIN``, exported
by a deployment script) is ignored and logged; one that names a section but a setting the section
does not have (``ANODE_SERVER__PROT``) stops start-up, naming the variable.

Secrets are secret types: ``SecretStr`` for keys, tokens and passwords, :class:`SecretUrl` for URLs
that carry credentials (database, Redis, node and bundler URLs: shown with the password, path and
query masked). Mappings the settings pass on unvalidated (module ``config:``, seeded ``policies:``)
show secret-looking values (``secret``, ``token``, ``password``, …) masked, and a webhook's
``secret`` is a ``SecretStr`` from the start. So ``repr(settings)`` and
``settings.model_dump_json()`` hold no secret in clear.

YAML reads an unquoted ``0x…`` as a number; where a string was expected (keys, addresses, hashes)
the error says to quote it.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from anode.errors import ConfigError
from anode.signers.manager_settings import ManagerSettings
from anode.signers.registry import SignerSettingsBase
from anode.userop.codec import parse_address

ENV_PREFIX = "ANODE_"
#: the test suite's own variables (``ANODE_TEST_REDIS_URL``, ``ANODE_TEST_REQUIRE_ALL``): not settings
TEST_ENV_PREFIX = "ANODE_TEST_"
MAX_VALIDITY_SECONDS = 86_400
#: what an unquoted ``0x…`` that YAML read as a number gets instead of "Input should be a valid string"
HEX_NEEDS_QUOTES = "write hex values in quotes ('0x…'): YAML read this one as a number"
MASK = "**********"

log = logging.getLogger("anode.config")


class HexNumber(int):
    """An integer that YAML read from an unquoted ``0x…`` literal (kept apart, so errors can say to quote it)."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, marking hex integers as :class:`HexNumber`."""


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    value: int = loader.construct_yaml_int(node)
    digits = str(node.value).replace("_", "").lstrip("+-")
    return HexNumber(value) if digits[:2].lower() == "0x" else value


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def parse_yaml(text: str) -> Any:
    """``text`` as YAML (safe: plain data only), an unquoted ``0x…`` number as a :class:`HexNumber`."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: plain data only


def read_yaml_file(path: Path, what: str = "config file") -> dict[str, Any]:
    """The mapping in the YAML file ``path`` (empty file: ``{}``); else a ``ConfigError`` that names
    the problem and its position, never the text around it. The server and the key server read
    their files with this one function."""
    try:
        loaded = parse_yaml(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {exc.start + 1})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {describe_yaml_error(exc)}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{what} {path} must hold a mapping at the top level")
    return loaded or {}


_STRING_ERRORS = {"string_type", "value_error", "bytes_type", "url_type", "literal_error"}


def error_message(error: ErrorDetails) -> str:
    """One pydantic error's message for an operator: an unquoted hex number says to quote it."""
    message = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    if isinstance(value, HexNumber) and error["type"] in _STRING_ERRORS:
        return HEX_NEEDS_QUOTES
    if isinstance(value, Mapping):  # a nested model's own message: "private_key: Input should be a valid string"
        field, separator, _ = message.partition(": ")
        if separator and isinstance(_at(value, field), HexNumber):
            return f"{field}: {HEX_NEEDS_QUOTES}"
    return message


def _at(tree: Any, path: str) -> Any:
    """The value at the dotted ``path`` (``signer.private_key``, ``a.0.b``) of ``tree``, or ``None``."""
    for part in path.split("."):
        if isinstance(tree, Mapping):
            tree = tree.get(part)
        elif isinstance(tree, list) and part.isdigit() and int(part) < len(tree):
            tree = tree[int(part)]
        else:
            return None
    return tree


def _hex_numbers(value: Any, where: str = "") -> list[str]:
    """Where in ``value`` (a YAML subtree) an unquoted ``0x…`` number sits (``private_key``, ``a.0.b``)."""
    if isinstance(value, HexNumber):
        return [where]
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in _hex_numbers(v, f"{where}.{k}" if where else str(k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _hex_numbers(v, f"{where}.{i}" if where else str(i))]
    return []


def _hex_refusal(value: Any) -> ValueError | None:
    """``private_key: write hex values in quotes…`` for the first unquoted hex number in ``value``."""
    found = _hex_numbers(value)
    return ValueError(f"{found[0]}: {HEX_NEEDS_QUOTES}") if found else None


class SecretUrl(SecretStr):
    """A URL that may carry credentials: ``str()``/``repr()`` show it with the password masked
    (``postgresql://anode:***@db/anode``); :meth:`get_secret_value` is the URL itself."""

    #: also hide the path and query (node providers put keys there: ``/v2/<key>``, ``?apikey=``)
    _hide_path: bool = False

    def _display(self) -> str:
        return masked_url(self.get_secret_value(), hide_path=self._hide_path)


class SecretEndpoint(SecretUrl):
    """A node or bundler URL: shown as scheme, host and port only."""

    _hide_path = True


def masked_url(url: str, *, hide_path: bool = False) -> str:
    """``url`` without its password (and, with ``hide_path``, without path and query)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return MASK
    if not parts.scheme or (not parts.netloc and hide_path):
        return MASK
    user = ""
    if parts.username is not None:
        user = parts.username + (":***" if parts.password is not None else "") + "@"
    elif parts.password is not None:
        user = ":***@"
    netloc = f"{user}{f'[{host}]' if ':' in host else host}{f':{port}' if port is not None else ''}"
    if hide_path:
        tail = "/…" if parts.path.strip("/") or parts.query or parts.fragment else ""
        return f"{parts.scheme}://{netloc}{tail}"
    query = "?…" if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path}{query}"


def _shown(value: SecretStr) -> str:
    return str(value)


#: a URL with credentials: masked in ``repr``, ``str`` and JSON
DatabaseUrl = Annotated[SecretUrl, PlainSerializer(_shown, return_type=str, when_used="json")]
#: a node or bundler URL (its path and query may hold a provider key): masked in ``repr``, ``str`` and JSON
EndpointUrl = Annotated[SecretEndpoint, PlainSerializer(_shown, return_type=str, when_used="json")]

_SECRET_NAME = re.compile(
    r"(^|_)(secret|secrets|password|passphrase|passwd|token|pin|mnemonic|private_key|privatekey|api_key|apikey|"
    r"credential|credentials|auth|authorization|bearer|key_material|seed)(_|$)",
    re.IGNORECASE,
)


def redacted(value: Any) -> Any:
    """``value`` (plain data) with every secret-looking entry (by its key's name) and secret type masked."""
    if isinstance(value, SecretStr):
        return str(value)
    if isinstance(value, Mapping):
        return {key: _redacted_entry(key, item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redacted(item) for item in value]
    return value


def _redacted_entry(key: Any, item: Any) -> Any:
    if not isinstance(key, str) or item is None:
        return redacted(item)
    if _SECRET_NAME.search(key):
        return MASK
    if key.lower().endswith("url") and isinstance(item, str):  # a webhook's URL may carry a token
        return masked_url(item, hide_path=True)
    return redacted(item)


#: a mapping handed on unvalidated: secret-looking values masked in JSON (and in ``repr``, see ``_Section``)
OpenMapping = Annotated[dict[str, Any], PlainSerializer(redacted, when_used="json")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, redacted(value) if isinstance(value, dict | list) and name in _OPEN_FIELDS else value


#: fields typed as :data:`OpenMapping` (or lists of them): ``repr`` masks their secret-looking values
_OPEN_FIELDS = {"config", "policies"}


def _address(value: str) -> str:
    parse_address(value)
    return value


def _paymaster_family(value: str) -> str:
    from anode.paymasters.registry import FAMILIES

    if value not in FAMILIES:
        raise ValueError(f"unknown paymaster contract {value!r}: use one of {', '.join(sorted(FAMILIES))}")
    return value


def _signer_settings(value: Any) -> SignerSettingsBase:
    from anode.signers.registry import signer_settings

    try:
        return signer_settings(value)
    except ConfigError as exc:
        raise _hex_refusal(value) or ValueError(exc.message) from None


#: validated by the configured backend's own settings model (``anode/signers/registry.py``)
SignerConfig = Annotated[SignerSettingsBase, BeforeValidator(_signer_settings)]


def _managed_signer_settings(value: Any) -> SignerSettingsBase | ManagerSettings:
    from anode.signers.manager_settings import signer_config

    try:
        return signer_config(value)
    except ConfigError as exc:
        raise _hex_refusal(value) or ValueError(exc.message) from None


#: the server's ``signer:``: one backend, or a manager (``primary``, ``backups``, ``retiring``, …)
ManagedSignerConfig = Annotated[SignerSettingsBase | ManagerSettings, BeforeValidator(_managed_signer_settings)]


def _policy_secrets(value: Any) -> Any:
    """A seeded policy with its webhook's ``secret`` as a ``SecretStr`` (the policy model accepts one)."""
    if isinstance(value, Mapping) and isinstance(value.get("webhook"), Mapping):
        webhook = dict(value["webhook"])
        if isinstance(webhook.get("secret"), str):
            webhook["secret"] = SecretStr(webhook["secret"])
        return {**value, "webhook": webhook}
    return value


LogLevel = Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"]


def upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


class FixedPrice(_Section):
    """A price the operator sets: whole tokens per one whole native coin (1 ETH)."""

    source: Literal["fixed"]
    tokens_per_native: Decimal = Field(gt=0)


class ChainlinkPrice(_Section):
    """A price from two Chainlink ``AggregatorV3Interface`` feeds (token/USD and native/USD)."""

    source: Literal["chainlink"]
    token_usd_feed: str
    native_usd_feed: str
    #: a round older than this (``updatedAt``) is refused, never signed on
    max_age_seconds: int = Field(3600, ge=1, le=7 * 86_400)

    _check_feeds = field_validator("token_usd_feed", "native_usd_feed")(_address)


class Erc20TokenSettings(_Section):
    address: str
    price: Annotated[FixedPrice | ChainlinkPrice, Field(discriminator="source")]

    _check_address = field_validator("address")(_address)


class Erc20Settings(_Section):
    """A SingletonPaymaster's ERC-20 mode: users pay gas in these tokens, at a quoted rate."""

    #: receives the tokens; it must have approved the paymaster (refunds of a prefund come from it)
    treasury: str
    #: added to the market rate in the exchange rate aNode signs
    markup_percent: Decimal = Field(Decimal(0), ge=0, le=1000)
    #: how long a quoted rate is the rate aNode signs
    quote_valid_seconds: int = Field(60, ge=1, le=3600)
    tokens: list[Erc20TokenSettings] = Field(min_length=1)
    #: the gas ``postOp``'s token transfer is charged for (signed as ``postOpGas``)
    post_op_gas: int = Field(50_000, ge=0, lt=1 << 128)
    #: v0.7+: the least ``paymasterPostOpGasLimit`` given to an ERC-20 operation (postOp moves the tokens)
    post_op_gas_limit: int = Field(100_000, ge=1, lt=1 << 128)
    #: how long a sender's token balance and allowance are reused before signing (0: read every
    #: time); a refusal is always re-read fresh, so only an acceptance rests on a cached read
    funds_cache_seconds: float = Field(2.0, ge=0, le=60)

    _check_treasury = field_validator("treasury")(_address)


class PaymasterSettings(_Section):
    entry_point: str
    address: str
    #: a family of ``anode/paymasters/registry.py`` (``verifying``, ``singleton``)
    contract: str
    #: needed only for an EntryPoint that is not at its canonical address
    entry_point_version: Literal["v0.6", "v0.7", "v0.8"] | None = None
    verification_gas_limit: int = Field(100_000, ge=0, lt=1 << 128)
    post_op_gas_limit: int = Field(0, ge=0, lt=1 << 128)
    #: ERC-20 mode (``contract: singleton`` only): users pay gas in tokens
    erc20: Erc20Settings | None = None
    #: below this EntryPoint deposit (wei) aNode alerts (``alerts:``) and ``/health`` is degraded
    low_balance_wei: int | None = Field(None, ge=0, lt=1 << 256)

    _check_addresses = field_validator("entry_point", "address")(_address)
    _check_contract = field_validator("contract")(_paymaster_family)


class ChainSettings(_Section):
    chain_id: int = Field(gt=0)
    #: provider URLs carry API keys (``/v2/<key>``, ``?apikey=``): kept out of repr/str
    rpc_url: EndpointUrl
    bundler_url: EndpointUrl | None = None
    paymasters: list[PaymasterSettings] = Field(min_length=1)
    #: blocks the EntryPoint follower waits on this chain before reading one (default: watch.confirmations)
    confirmations: int | None = Field(None, ge=0, le=10_000)


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
    #: validated by the module's own ``Config`` when the pipeline is built (``anode/pipeline/registry.py``)
    config: OpenMapping = Field(default_factory=dict)


class PipelineSettings(_Section):
    """The ordered pipeline (``pipeline.modules``). Without one, operations are only signed."""

    modules: list[ModuleEntry] = Field(default_factory=lambda: [ModuleEntry(name="paymaster_signer")])


def worker_count(workers: int | str) -> int:
    """``server.workers`` / ``--workers`` as a number of processes: ``auto`` is one per usable core."""
    if workers == "auto":
        return max(1, min(64, len(os.sched_getaffinity(0))))
    if isinstance(workers, str):
        if not workers.isdigit() or not 1 <= int(workers) <= 64:
            raise ConfigError(f"--workers must be a number from 1 to 64 or 'auto', not {workers!r}")
        return int(workers)
    return workers


class ServerSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, lt=65536)
    #: server processes sharing the port (one Python process uses one core), or ``auto``: one per
    #: core this process may run on. Every piece of shared state (ledger, limits, confirmations,
    #: audit chain) lives in the database or Redis.
    workers: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = 1
    #: largest request body (JSON-RPC and REST); a larger one is answered 413 before it is read
    max_body_bytes: int = Field(1_048_576, ge=1_024, le=64 * 1_048_576)
    #: most calls in one JSON-RPC batch
    max_batch_length: int = Field(100, ge=1, le=10_000)
    #: how long ``GET /health`` reuses its node reads (0: read on every hit)
    health_cache_seconds: float = Field(5.0, ge=0, le=300)
    #: allocations between two runs of Python's cyclic garbage collector (0: Python's default, 700);
    #: a request allocates a few hundred objects, nearly all freed without it (docs/performance.md)
    gc_threshold: int = Field(50_000, ge=0, le=10_000_000)
    #: chain reads (SBT, PNT, the security filter's) kept in the process, least recently used
    #: dropped first; with Redis, the near copies in front of it. A sender takes two (its SBT and
    #: PNT reads; the security filter's are per contract): keep it above twice the senders active
    #: within the checks' ``cache_ttl``
    cache_max_entries: int = Field(100_000, ge=1_000, le=100_000_000)


class WatchSettings(_Section):
    """The EntryPoint follower (``anode/watch/``): what each signed operation really spent."""

    enabled: bool = False
    #: blocks behind the head before a block is read (a reorg up to this depth is undone)
    confirmations: int = Field(3, ge=0, le=10_000)
    poll_seconds: float = Field(5.0, gt=0, le=3600)
    #: most blocks per ``eth_getLogs`` call
    block_range: int = Field(1_000, ge=1, le=100_000)
    #: where a chain's first run starts (none: at the confirmed head); later runs resume from the cursor
    start_block: int | None = Field(None, ge=0)
    #: a follower that stops renewing its lease for this long is replaced by another process's
    lease_seconds: float = Field(30.0, gt=0, le=3600)
    #: where the lease lives: ``database`` (a row in it) or ``redis`` (a key in ``redis_url``'s Redis)
    lease: Literal["database", "redis"] = "database"


class DepositSettings(_Section):
    """The deposit monitor (``anode/watch/deposits.py``): each paymaster's EntryPoint deposit."""

    enabled: bool = True
    #: seconds between reads of every deposit (and between samples kept for the dashboard)
    poll_seconds: float = Field(30.0, gt=0, le=3600)
    #: samples older than this are deleted
    retention_days: int = Field(30, ge=1, le=3650)
    #: refuse (``ANODE_050_DEPOSIT_TOO_LOW``) an operation whose maximum cost the deposit cannot cover
    refuse_below_cost: bool = True


class AlertSettings(_Section):
    """Where a low deposit is reported: a webhook ``POST`` signed with HMAC-SHA256 (docs/operations.md)."""

    webhook_url: EndpointUrl | None = None
    webhook_secret: SecretStr | None = None
    #: while a deposit stays low, at most one alert per paymaster this often
    repeat_minutes: float = Field(60.0, gt=0, le=7 * 24 * 60)
    timeout_seconds: float = Field(10.0, gt=0, le=60)

    @model_validator(mode="after")
    def _secret_with_url(self) -> AlertSettings:
        if self.webhook_url is not None and self.webhook_secret is None:
            raise ValueError("alerts.webhook_url needs alerts.webhook_secret (the HMAC key receivers verify with)")
        return self


class KmsClientSettings(_Section):
    """The dual-signature KMS aNode co-signs passkey operations with (docs/kms.md, "aNode's side").

    ``urls`` are replicas of one KMS (one database, one custody): a request goes to the first that
    answers, in order. A replica's refusal is the KMS's decision and is never retried elsewhere.
    """

    #: the KMS replicas, e.g. ``https://kms-a.internal:9200``; masked in repr, str and JSON
    urls: list[EndpointUrl] = Field(min_length=1)
    #: how long one replica may take to answer before the next is asked
    timeout_seconds: float = Field(10.0, gt=0, le=120)


class FundingSettings(_Section):
    """The key ``anode deposit add`` pays deposits from (``ANODE_FUNDING__PRIVATE_KEY`` in the environment)."""

    private_key: SecretStr | None = None


class Settings(_Section):
    environment: Literal["development", "production"] = "development"
    #: may carry the database password: masked in repr, str and JSON
    database_url: DatabaseUrl = SecretUrl("sqlite:///anode.db")
    signer: ManagedSignerConfig
    chains: list[ChainSettings] = Field(min_length=1)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    sponsorship: SponsorshipSettings = Field(default_factory=SponsorshipSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    watch: WatchSettings = Field(default_factory=WatchSettings)
    deposits: DepositSettings = Field(default_factory=DepositSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    funding: FundingSettings = Field(default_factory=FundingSettings)
    #: the dual-signature KMS for the passkey flow (docs/kms.md); none: the flow is not offered
    kms: KmsClientSettings | None = None
    #: Redis for shared caches and limits across processes (``redis://127.0.0.1:6379/0``); none: in-process
    redis_url: DatabaseUrl | None = None
    #: policies seeded at start-up (see the policy engine); managed at runtime through the API.
    #: Validated when the policy engine seeds them; a webhook's ``secret`` is a ``SecretStr`` from here on.
    policies: list[Annotated[OpenMapping, BeforeValidator(_policy_secrets)]] = Field(default_factory=list)
    log_level: Annotated[LogLevel, BeforeValidator(upper)] = "INFO"

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


def _is_setting_variable(name: str) -> bool:
    return name.startswith(ENV_PREFIX) and name != "ANODE_CONFIG" and not name.startswith(TEST_ENV_PREFIX)


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The settings model a field holds (``ServerSettings``, or ``ChainSettings`` for a list of them)."""
    if get_origin(annotation) is list:
        (annotation,) = get_args(annotation) or (None,)
    if isinstance(annotation, type) and issubclass(annotation, _Section):
        return annotation
    return None


def _unknown_setting(parts: list[str]) -> str | None:
    """Why the path ``parts`` (``["server", "prot"]``) names no setting, when a known section lacks the field."""
    model: type[BaseModel] | None = Settings
    listed = False  # the path so far names a list: the next part must be an index
    where: list[str] = []
    for part in parts:
        if listed:
            if not part.isdigit():
                return f"{part!r} must be a list index"
            listed = False
            where.append(part)
            continue
        if model is None:
            return None  # an open mapping or a backend's own settings: validation names the problem
        field = model.model_fields.get(part)
        if field is None:
            return f"{'.'.join(where)} has no setting {part!r}"
        where.append(part)
        listed = get_origin(field.annotation) is list
        model = _section_model(field.annotation)
    return None


def setting_variables(environ: Mapping[str, str]) -> list[str]:
    """The ``ANODE_…`` variables in ``environ`` that name a setting (the rest are ignored)."""
    return [
        name
        for name in sorted(environ)
        if _is_setting_variable(name) and name[len(ENV_PREFIX) :].lower().split("__")[0] in Settings.model_fields
    ]


def ignored_variables(environ: Mapping[str, str]) -> list[str]:
    """The ``ANODE_…`` variables in ``environ`` whose first part names no setting (``ANODE_BIN``)."""
    return [name for name in sorted(environ) if _is_setting_variable(name) and name not in setting_variables(environ)]


def apply_env_overrides(
    tree: dict[str, Any], environ: Mapping[str, str], sources: dict[tuple[str, ...], str] | None = None
) -> dict[str, Any]:
    """Merge ``ANODE_…`` variables into ``tree``; a bad one is a ``ConfigError`` naming it, never its value.

    A variable whose first part is no setting is ignored (logged); one naming a setting that a known
    section does not have is refused. ``sources`` (if given) maps each path set to its variable.
    """
    for name in sorted(environ):
        if not _is_setting_variable(name):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if parts[0] not in Settings.model_fields:
            log.debug("environment variable %s names no aNode setting: ignored", name)
            continue
        unknown = _unknown_setting(parts)
        if unknown is not None:
            raise ConfigError(f"environment variable {name}: {unknown}")
        raw = environ[name]
        value: Any = raw
        if raw[:1] in "[{" and raw:
            try:
                value = parse_yaml(raw)
            except yaml.YAMLError as exc:
                raise ConfigError(
                    f"environment variable {name} starts with {raw[0]!r}, so it is read as YAML, and its value "
                    f"is not valid YAML: {describe_yaml_error(exc)}"
                ) from None
        try:
            _set_path(tree, parts, value)
        except ConfigError as exc:
            problem = exc.message.removeprefix("environment override: ")
            raise ConfigError(f"environment variable {name}: {problem}") from None
        if sources is not None:
            sources[tuple(parts)] = name
    return tree


def config_path(
    config: str | None, command: str, environ: Mapping[str, str] | None = None, hint: str = ""
) -> Path | None:
    """``--config``'s file; ``None`` when the environment alone configures (some ``ANODE_…`` setting is
    set); else a ``ConfigError`` saying ``pass --config FILE`` for ``command`` (``anode ops list``)."""
    if config:
        return Path(config)
    if setting_variables(os.environ if environ is None else environ):
        return None
    raise ConfigError(f"{command} needs a configuration: pass --config FILE (see config.example.yaml){hint}")


def load_tree(path: Path | None = None, environ: Mapping[str, str] | None = None) -> tuple[dict[str, Any], Sources]:
    """The YAML file at ``path`` (if any) with the environment's overrides, and which variable set what."""
    env = os.environ if environ is None else environ
    tree = read_yaml_file(path) if path is not None else {}
    sources: Sources = {}
    apply_env_overrides(tree, env, sources)
    return tree, sources


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read ``path`` (YAML), apply environment overrides and validate; ``ConfigError`` on problems."""
    tree, sources = load_tree(path, environ)
    return validate_settings(tree, sources)


class SignerOnly(BaseModel):
    """The ``signer:`` section alone (``anode keys address``): the rest of the file is not read."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    signer: ManagedSignerConfig


def load_signer_settings(
    path: Path | None = None, environ: Mapping[str, str] | None = None
) -> SignerSettingsBase | ManagerSettings:
    """Only the ``signer:`` settings of ``path`` and the environment; other sections may be absent."""
    tree, sources = load_tree(path, environ)
    return validate_model(SignerOnly, {"signer": tree.get("signer")} if "signer" in tree else {}, sources).signer


_M = TypeVar("_M", bound=BaseModel)

#: which environment variable set which path of the tree
Sources = dict[tuple[str, ...], str]


def _origin(loc: tuple[str | int, ...], sources: Sources) -> str:
    """``environment variable ANODE_… : `` when a variable set ``loc`` or a section holding it."""
    path = tuple(str(part) for part in loc)
    for length in range(len(path), 0, -1):
        name = sources.get(path[:length])
        if name is not None:
            return f"environment variable {name}: "
    return ""


def validate_model(
    model: type[_M], tree: dict[str, Any], sources: Sources | None = None, what: str = "configuration"
) -> _M:
    """``tree`` as ``model``; else a ``ConfigError`` listing every problem by its path (and variable, if one set it)."""
    try:
        return model.model_validate(tree)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "(top level)"
            message = error_message(error)
            if message.startswith(f"{where}.") or message.startswith(f"{where}:"):
                where, _, message = message.partition(": ")  # a backend's own message already names the field
            elif message.endswith(f": {HEX_NEEDS_QUOTES}"):  # a nested model's field: signer.primary.private_key
                where = f"{where}.{message.removesuffix(f': {HEX_NEEDS_QUOTES}')}"
                message = HEX_NEEDS_QUOTES
            lines.append(f"  {_origin(error['loc'], sources or {})}{where}: {message}")
        raise ConfigError(f"invalid {what}:\n" + "\n".join(lines)) from None


def validate_settings(tree: dict[str, Any], sources: Sources | None = None) -> Settings:
    return validate_model(Settings, tree, sources)
