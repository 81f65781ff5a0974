"""UserOperation models for every EntryPoint version, as they travel over JSON-RPC.

v0.6 operations carry every field on its own; v0.7 and v0.8 travel *unpacked* over RPC
(``factory``/``factoryData``, ``paymaster``/``paymasterData`` and the two paymaster gas limits as
separate fields) and are packed only for hashing and for ``handleOps``. One model per wire shape,
one place for the packing rules.

Operations reaching a paymaster service are unsigned and often not yet estimated, so signature
and gas fields default to empty/zero; ``require_gas_fields`` says what a final signature needs.
A JSON ``null`` is the field left out, for every field (SDKs send ``"factoryData": null``,
``"paymasterAndData": null``): an optional one takes its default, a required one "is required".
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from anode.errors import InvalidRequest
from anode.userop.codec import Address, HexBytes, Quantity, Uint128
from anode.userop.versions import EntryPointVersion

_REQUIRED_FOR_SIGNING = ("callGasLimit", "verificationGasLimit", "preVerificationGas", "maxFeePerGas")
#: a bundler estimates gas limits, never fees: the wallet prices its own operation
_FEE_FIELDS = ("maxFeePerGas", "maxPriorityFeePerGas")
_UINT120_MAX = (1 << 120) - 1
_GAS_FIELDS = (
    ("callGasLimit", "call_gas_limit"),
    ("verificationGasLimit", "verification_gas_limit"),
    ("preVerificationGas", "pre_verification_gas"),
    ("maxFeePerGas", "max_fee_per_gas"),
    ("maxPriorityFeePerGas", "max_priority_fee_per_gas"),
    ("paymasterVerificationGasLimit", "paymaster_verification_gas_limit"),
    ("paymasterPostOpGasLimit", "paymaster_post_op_gas_limit"),
)


class _UserOpBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True, strict=False)

    sender: Address
    nonce: Quantity
    call_data: HexBytes = Field(alias="callData")
    call_gas_limit: Quantity = Field(0, alias="callGasLimit")
    verification_gas_limit: Quantity = Field(0, alias="verificationGasLimit")
    pre_verification_gas: Quantity = Field(0, alias="preVerificationGas")
    max_fee_per_gas: Quantity = Field(0, alias="maxFeePerGas")
    max_priority_fee_per_gas: Quantity = Field(0, alias="maxPriorityFeePerGas")
    signature: HexBytes = b""

    version: ClassVar[EntryPointVersion]

    def check_gas_bounds(self) -> None:
        """EntryPoints refuse any gas value above 2**120-1 ("AA94 gas values overflow")."""
        for wire, attribute in _GAS_FIELDS:
            value = getattr(self, attribute, None)
            if value is not None and value > _UINT120_MAX:
                raise InvalidRequest(
                    f"userOp.{wire} is above 2**120-1: the EntryPoint refuses such operations (AA94)",
                    field=f"userOp.{wire}",
                )

    def require_gas_fields(self, raw: dict[str, Any]) -> None:
        """A final paymaster signature covers the gas fields: refuse to sign over guesses."""
        _require(
            raw, _REQUIRED_FOR_SIGNING,
            "to sign paymaster data: estimate gas first (pm_getPaymasterStubData gives the paymaster "
            "fields to estimate with)",
        )  # fmt: skip

    def require_fee_fields(self, raw: dict[str, Any]) -> None:
        """Before gas is estimated and signed over: the fees must come from the wallet.

        ``eth_estimateUserOperationGas`` answers gas limits only, so a missing fee would otherwise
        be signed as 0 (and recorded as a maximum cost of 0 wei).
        """
        _require(
            raw, _FEE_FIELDS,
            "before gas is estimated, because the bundler estimates gas limits, not fees: price the "
            "operation (e.g. from eth_maxPriorityFeePerGas and the base fee) before asking",
        )  # fmt: skip


def _require(raw: dict[str, Any], names: Iterable[str], why: str) -> None:
    missing = next((name for name in names if raw.get(name) is None), None)  # null is left out
    if missing is not None:
        raise InvalidRequest(f"userOp.{missing} is required {why}", field=f"userOp.{missing}")


class UserOperationV06(_UserOpBase):
    """EntryPoint v0.6 ``UserOperation``."""

    version: ClassVar[EntryPointVersion] = EntryPointVersion.V06

    init_code: HexBytes = Field(b"", alias="initCode")
    paymaster_and_data: HexBytes = Field(b"", alias="paymasterAndData")

    def max_gas_cost(self) -> int:
        """The most wei the EntryPoint can take from the paymaster's deposit (v0.6: mul = 3)."""
        gas = self.call_gas_limit + self.verification_gas_limit * 3 + self.pre_verification_gas
        return gas * self.max_fee_per_gas


class UserOperationV07(_UserOpBase):
    """EntryPoint v0.7 / v0.8 operation in its unpacked RPC form."""

    version: ClassVar[EntryPointVersion] = EntryPointVersion.V07

    factory: Address | None = None
    factory_data: HexBytes = Field(b"", alias="factoryData")
    call_gas_limit: Uint128 = Field(0, alias="callGasLimit")
    verification_gas_limit: Uint128 = Field(0, alias="verificationGasLimit")
    max_fee_per_gas: Uint128 = Field(0, alias="maxFeePerGas")
    max_priority_fee_per_gas: Uint128 = Field(0, alias="maxPriorityFeePerGas")
    paymaster: Address | None = None
    paymaster_verification_gas_limit: Uint128 | None = Field(None, alias="paymasterVerificationGasLimit")
    paymaster_post_op_gas_limit: Uint128 | None = Field(None, alias="paymasterPostOpGasLimit")
    paymaster_data: HexBytes = Field(b"", alias="paymasterData")

    @field_validator("factory_data")
    @classmethod
    def _factory_data_needs_factory(cls, value: bytes, info: ValidationInfo) -> bytes:
        if value and info.data.get("factory") is None:
            raise ValueError("factoryData given without factory")
        return value

    @property
    def init_code(self) -> bytes:
        return b"" if self.factory is None else self.factory + self.factory_data

    @property
    def account_gas_limits(self) -> bytes:
        return self.verification_gas_limit.to_bytes(16, "big") + self.call_gas_limit.to_bytes(16, "big")

    @property
    def gas_fees(self) -> bytes:
        return self.max_priority_fee_per_gas.to_bytes(16, "big") + self.max_fee_per_gas.to_bytes(16, "big")

    def max_gas_cost(self) -> int:
        gas = (
            self.verification_gas_limit
            + self.call_gas_limit
            + (self.paymaster_verification_gas_limit or 0)
            + (self.paymaster_post_op_gas_limit or 0)
            + self.pre_verification_gas
        )
        return gas * self.max_fee_per_gas


UserOperation = UserOperationV06 | UserOperationV07


def parse_user_op(raw: Any, version: EntryPointVersion) -> UserOperation:
    """Validate an RPC userOp for ``version``; errors name the offending field."""
    if not isinstance(raw, dict):
        raise InvalidRequest("userOp must be a JSON object", field="userOp")
    if None in raw.values():  # null is the field left out
        raw = {name: value for name, value in raw.items() if value is not None}
    model: type[UserOperationV06] | type[UserOperationV07] = (
        UserOperationV06 if version is EntryPointVersion.V06 else UserOperationV07
    )
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        field = f"userOp.{where}" if where else "userOp"
        reason = first["msg"].removeprefix("Value error, ")
        if first["type"] == "missing":
            reason = "is required"
        raise InvalidRequest(f"{field}: {reason}", field=field) from None
