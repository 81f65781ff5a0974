"""Request and response models of the REST API (they also make the OpenAPI document)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from anode.api.jsonrpc.params import json_type


def _strict_chain_id(value: Any) -> Any:
    """A chain id is an integer or a hex string: JSON ``true`` is not chain 1, ``1.0`` is not chain 1."""
    if value is None or (isinstance(value, int | str) and not isinstance(value, bool)):
        return value
    raise ValueError(f'must be a hex string like "0x7a69" or an integer, got {json_type(value)}')


#: ``chainId`` of a REST body: an integer or a hex string (checked against the served chains later)
ChainId = Annotated[int | str | None, BeforeValidator(_strict_chain_id)]


class SponsorBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    user_operation: dict[str, Any] = Field(
        alias="userOperation",
        description="The unsigned UserOperation in its RPC form (v0.7+: unpacked factory/paymaster fields).",
    )
    entry_point: str = Field(alias="entryPoint", description="EntryPoint address.")
    chain_id: ChainId = Field(None, alias="chainId", description='Chain id: an integer or a hex string ("0x7a69").')
    context: dict[str, Any] | None = Field(None, description="Optional: {validForSeconds}.")


def _one_version() -> Any:
    """A field of one EntryPoint version only: left out of the other's answers, never ``null``."""
    return Field(None, exclude_if=lambda value: value is None)


class SponsorReply(BaseModel):
    """v0.6 answers paymasterAndData; v0.7 and v0.8 answer paymaster, paymasterData and the two gas limits."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    paymaster: str | None = _one_version()
    paymasterData: str | None = _one_version()
    paymasterAndData: str | None = _one_version()
    paymasterVerificationGasLimit: str | None = _one_version()
    paymasterPostOpGasLimit: str | None = _one_version()
    callGasLimit: str
    verificationGasLimit: str
    preVerificationGas: str
    userOpHash: str
    validUntil: str
    validAfter: str


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] | None = None


class ErrorReply(BaseModel):
    error: ErrorBody


class Erc20Context(BaseModel):
    """ERC-20 mode: the sender pays the sponsor in ``token``, at most ``maxTokenAmount`` base units."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: Literal["erc20"] = "erc20"
    token: str = Field(description="The ERC-20 token the sender pays in (one the paymaster accepts).")
    max_token_amount: int | str | None = Field(
        None,
        alias="maxTokenAmount",
        description="Optional: refuse when the operation can cost more than this many token base units "
        "(an integer, a decimal string or a 0x quantity).",
    )
    valid_for_seconds: int | None = Field(None, alias="validForSeconds", description="Optional: a shorter window.")

    def for_service(self) -> dict[str, Any]:
        context: dict[str, Any] = {"token": self.token}
        if self.max_token_amount is not None:
            context["maxTokenAmount"] = self.max_token_amount
        if self.valid_for_seconds is not None:
            context["validForSeconds"] = self.valid_for_seconds
        return context


class Erc20Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    user_operation: dict[str, Any] = Field(
        alias="userOperation",
        description="The unsigned UserOperation in its RPC form (v0.7+: unpacked factory/paymaster fields).",
    )
    entry_point: str = Field(alias="entryPoint", description="EntryPoint address.")
    chain_id: ChainId = Field(None, alias="chainId", description='Chain id: an integer or a hex string ("0x7a69").')
    context: Erc20Context


class Erc20Reply(SponsorReply):
    """The signed paymaster fields, and what the sender will pay at most, in the token."""

    token: str
    exchangeRate: str = Field(description="Token base units per 1e18 wei, as signed (hex).")
    maxTokenAmount: str = Field(description="The most postOp can charge, in token base units (decimal).")


class EstimateBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    user_operation: dict[str, Any] = Field(
        alias="userOperation",
        description="The UserOperation in its RPC form; gas limits and fees may be left out.",
    )
    entry_point: str = Field(alias="entryPoint", description="EntryPoint address.")
    chain_id: ChainId = Field(None, alias="chainId", description='Chain id: an integer or a hex string ("0x7a69").')
    token: str | None = Field(None, description="Optional: estimate the cost in this ERC-20 token (ERC-20 mode).")


class GasEstimate(BaseModel):
    model_config = ConfigDict(extra="allow")

    callGasLimit: str
    verificationGasLimit: str
    preVerificationGas: str
    maxFeePerGas: str
    maxPriorityFeePerGas: str
    paymasterVerificationGasLimit: str | None = _one_version()
    paymasterPostOpGasLimit: str | None = _one_version()


class EstimateReply(BaseModel):
    gasEstimate: GasEstimate
    totalGasCost: str = Field(description="The operation's maximum gas cost in wei (decimal).")
    tokenAmount: str | None = Field(
        None,
        description="With a token: the most the operation can be charged, in token base units (decimal).",
        exclude_if=lambda value: value is None,
    )
    token: str | None = Field(None, exclude_if=lambda value: value is None)
    exchangeRate: str | None = Field(None, exclude_if=lambda value: value is None)
