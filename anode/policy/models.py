"""What a sponsorship policy is, validated once at the edge (settings, REST, the database).

    Policy
      id, name, description, type (project | contract | wallet | custom), target, enabled,
      priority, start_time, end_time, chain_ids, mode (verifying | erc20), tokens
      conditions   [{field: function|target|value|sender|chain_id, operator: in|not_in|eq|…, value}]
      rate_limits  amount (wei per window), request (count per window), gas_price (wei), per_transaction (wei)
      webhook      custom policies: url, secret, timeout, fail_mode

Amounts are wei: an integer, a decimal string, a ``0x`` quantity, or a string with a unit
(``"0.5 ether"``, ``"30 gwei"``). They serialise as decimal strings in JSON so that no client
rounds them. A webhook secret is a ``SecretStr``: it never prints, and ``public()`` masks it.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from decimal import Context, Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from anode.userop.codec import checksum, parse_address

UINT256_MAX = (1 << 256) - 1
MASK = "********"
#: a window may be at most a year long; ``window`` omitted (null) means "never resets"
MAX_WINDOW_SECONDS = 366 * 86_400
_UNITS = {"wei": 0, "gwei": 9, "ether": 18, "eth": 18}
_DECIMAL = re.compile(r"^\d{1,100}(\.\d{1,100})?(e[+-]?\d{1,3})?$")
_HEX = re.compile(r"^0x[0-9a-f]+$")
_SELECTOR = re.compile(r"^0x[0-9a-f]{8}$")
POLICY_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
#: wide enough for any uint256 in any unit: Decimal's default context rounds to 28 digits
EXACT = Context(prec=200)


def parse_wei(value: Any) -> int:
    """An amount of wei from an int, ``"123"``, ``"0x7b"``, ``"0.5 ether"`` or ``"30 gwei"``."""
    if isinstance(value, bool):
        raise ValueError("expected an amount in wei, got a boolean")
    if isinstance(value, int):
        amount = value
    elif isinstance(value, str):
        amount = _parse_wei_text(value)
    elif isinstance(value, float):
        raise ValueError('amounts must be exact: write wei as an integer or a string (1000000000000000000, "1 ether")')
    else:
        raise ValueError(f"expected an amount in wei, got {type(value).__name__}")
    if not 0 <= amount <= UINT256_MAX:
        raise ValueError("an amount must be between 0 and 2**256-1 wei")
    return amount


def _parse_wei_text(value: str) -> int:
    text = value.strip().lower()
    parts = text.split()
    unit = "wei"
    if len(parts) == 2 and parts[1] in _UNITS:
        text, unit = parts
    if _HEX.match(text) and unit == "wei":
        return int(text, 16)
    if not _DECIMAL.match(text):
        raise ValueError(f'not an amount: {value[:60]!r} (write "1000000000000000000", "1 ether" or "30 gwei")')
    if text.isdigit() and unit == "wei":
        return int(text)
    try:
        scaled = Decimal(text).scaleb(_UNITS[unit], EXACT)
    except ArithmeticError:
        raise ValueError(f"not an amount: {value[:60]!r}") from None
    if scaled != scaled.to_integral_value(context=EXACT):
        raise ValueError(f"{value[:60]!r} is not a whole number of wei")
    return int(scaled)


def _parse_time(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    elif isinstance(value, int) and not isinstance(value, bool):
        moment = datetime.fromtimestamp(value, UTC)
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"expected an ISO-8601 time such as 2026-12-01T00:00:00Z, got {value[:60]!r}") from None
    else:
        raise ValueError("expected an ISO-8601 time or a Unix timestamp")
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def iso(moment: datetime | int | float) -> str:
    """``2026-11-22T00:00:00Z``."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_checksum(value: Any) -> str:
    try:
        return checksum(parse_address(value))
    except ValueError as exc:
        raise ValueError(f"{str(value)[:60]!r} is not an address: {exc}") from None


def parse_selector(value: Any) -> str:
    text = str(value).strip().lower() if isinstance(value, str) else ""
    if not _SELECTOR.match(text):
        raise ValueError(f"a function is a 4-byte selector such as 0xa9059cbb, got {str(value)[:60]!r}")
    return text


Wei = Annotated[int, BeforeValidator(parse_wei), PlainSerializer(str, return_type=str, when_used="json")]
UtcTime = Annotated[
    datetime | None, BeforeValidator(_parse_time), PlainSerializer(lambda v: v and iso(v), when_used="json")
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PolicyType(StrEnum):
    PROJECT = "project"
    CONTRACT = "contract"
    WALLET = "wallet"
    CUSTOM = "custom"


ConditionField = Literal["function", "target", "value", "sender", "chain_id"]
Operator = Literal["in", "not_in", "eq", "neq", "gt", "gte", "lt", "lte"]
_ORDERED = frozenset({"gt", "gte", "lt", "lte"})
_SET = frozenset({"in", "not_in"})


class Condition(_Strict):
    """``{field, operator, value}``; how ``function``, ``target`` and ``value`` apply to the calls an
    operation makes (and to one that makes none) is in docs/policies.md, "Conditions"."""

    field: ConditionField
    operator: Operator
    value: Any
    _normal: Any = PrivateAttr(None)

    @field_validator("value")
    @classmethod
    def _value(cls, value: Any, info: ValidationInfo) -> Any:
        field, operator = info.data.get("field"), info.data.get("operator")
        if field is None or operator is None:
            return value  # already reported
        parse = _CONDITION_PARSERS[field]
        if operator in _ORDERED and field not in ("value", "chain_id"):
            raise ValueError(f"operator {operator} compares numbers: use it with value or chain_id")
        if operator in _SET:
            if not isinstance(value, list) or not value:
                raise ValueError(f"operator {operator} takes a non-empty list")
            return [_json_value(field, parse(item)) for item in value]
        if isinstance(value, list):
            raise ValueError(f"operator {operator} takes one value, not a list (use in / not_in)")
        return _json_value(field, parse(value))

    def model_post_init(self, _context: Any) -> None:
        parse = _CONDITION_PARSERS[self.field]
        if self.operator in _SET:
            self._normal = frozenset(parse(item) for item in self.value)
        else:
            self._normal = parse(self.value)

    @property
    def normal(self) -> Any:
        """The value as evaluation compares it: an int, a checksum address, a selector, or a frozenset of them."""
        return self._normal


def _chain_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("a chain id is a positive integer")
    number = int(value, 0) if isinstance(value, str) else value
    if number <= 0:
        raise ValueError("a chain id is a positive integer")
    return number


_CONDITION_PARSERS: dict[str, Any] = {
    "function": parse_selector,
    "target": parse_checksum,
    "sender": parse_checksum,
    "value": parse_wei,
    "chain_id": _chain_id,
}


def _json_value(field: str, value: Any) -> Any:
    return str(value) if field == "value" else value


class AmountLimit(_Strict):
    """At most ``limit`` wei of maximum gas cost per ``window`` seconds (no window: ever)."""

    type: Literal["amount"]
    limit: Wei
    window: int | None = Field(None, ge=1, le=MAX_WINDOW_SECONDS)


class RequestLimit(_Strict):
    """At most ``limit`` sponsored operations per ``window`` seconds (no window: ever)."""

    type: Literal["request"]
    limit: int = Field(ge=0, le=UINT256_MAX)
    window: int | None = Field(None, ge=1, le=MAX_WINDOW_SECONDS)


class GasPriceLimit(_Strict):
    """Sponsor only while the operation's ``maxFeePerGas`` is at most ``limit`` wei."""

    type: Literal["gas_price"]
    limit: Wei


class PerTransactionLimit(_Strict):
    """Sponsor only operations whose maximum gas cost is at most ``limit`` wei."""

    type: Literal["per_transaction"]
    limit: Wei


CountedLimit = AmountLimit | RequestLimit
RateLimit = Annotated[AmountLimit | RequestLimit | GasPriceLimit | PerTransactionLimit, Field(discriminator="type")]


class Webhook(_Strict):
    """Where a custom policy asks, how long it waits, and what a failure means."""

    url: str = Field(repr=False)
    secret: SecretStr = Field(min_length=16)
    #: seconds to wait for the answer
    timeout: float = Field(2.0, gt=0, le=30)
    #: what an unreachable, slow or garbled webhook means: ``closed`` refuses, ``open`` sponsors
    fail_mode: Literal["closed", "open"] = "closed"
    #: passed through to the webhook as ``webhookData`` (Alchemy's name)
    data: dict[str, Any] | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("webhook.url must be an http:// or https:// URL")
        return value


class Policy(_Strict):
    id: str = Field(pattern=POLICY_ID)
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    type: PolicyType
    #: contract: the contract address; wallet: the wallet address or ``"*"`` (each wallet separately)
    target: str | None = None
    enabled: bool = True
    #: higher first: the order policies are checked (and so which refusal is reported) and webhooks called
    priority: int = 0
    start_time: UtcTime = None
    end_time: UtcTime = None
    #: empty: every chain
    chain_ids: list[int] = Field(default_factory=list)
    #: ``verifying`` or ``erc20``: the policy applies to operations of that mode only (none: both)
    mode: Literal["verifying", "erc20"] | None = None
    #: ERC-20 tokens: the policy applies to ERC-20 operations paying in one of them (empty: any)
    tokens: list[str] = Field(default_factory=list)
    conditions: list[Condition] = Field(default_factory=list)
    rate_limits: list[RateLimit] = Field(default_factory=list)
    webhook: Webhook | None = None

    @field_validator("target")
    @classmethod
    def _target(cls, value: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("type")
        if value is None or kind is None:
            return value
        if kind is PolicyType.WALLET and value == "*":
            return value
        if kind in (PolicyType.CONTRACT, PolicyType.WALLET):
            return parse_checksum(value)
        raise ValueError(f"a {kind.value} policy has no target (it applies to every operation)")

    @field_validator("tokens")
    @classmethod
    def _tokens(cls, value: list[str]) -> list[str]:
        return [parse_checksum(token) for token in value]

    @field_validator("chain_ids", mode="before")
    @classmethod
    def _chain_ids(cls, value: Any) -> Any:
        return [_chain_id(v) for v in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        kind = self.type
        if kind is PolicyType.CONTRACT and self.target is None:
            raise ValueError("a contract policy needs target: the contract's address")
        if kind is PolicyType.WALLET and self.target is None:
            raise ValueError('a wallet policy needs target: a wallet address, or "*" for each wallet separately')
        if (kind is PolicyType.CUSTOM) != (self.webhook is not None):
            raise ValueError("a custom policy needs a webhook, and only a custom policy has one")
        if self.tokens and self.mode == "verifying":
            raise ValueError("tokens name what ERC-20 operations pay in: a verifying-mode policy has none")
        if self.start_time and self.end_time and self.start_time >= self.end_time:
            raise ValueError("start_time must be before end_time")
        seen: set[tuple[str, int | None]] = set()
        for limit in self.rate_limits:
            slot = (limit.type, limit.window if isinstance(limit, AmountLimit | RequestLimit) else None)
            if slot in seen:
                what = f"{limit.type} limit" + (f" with window {slot[1]}" if slot[1] else "")
                raise ValueError(f"rate_limits: one {what} per policy")
            seen.add(slot)
        return self

    @property
    def per_wallet(self) -> bool:
        """Limits count for each wallet separately (a wallet policy with target ``"*"``)."""
        return self.type is PolicyType.WALLET and self.target == "*"

    def public(self) -> dict[str, Any]:
        """JSON for API answers and logs: the webhook secret masked."""
        body = self.model_dump(mode="json")
        if body.get("webhook"):
            body["webhook"]["secret"] = MASK
        return body

    def document(self) -> dict[str, Any]:
        """JSON for the database: the secret in clear (it signs webhook bodies)."""
        body = self.model_dump(mode="json")
        if self.webhook is not None:
            body["webhook"]["secret"] = self.webhook.secret.get_secret_value()
        return body
