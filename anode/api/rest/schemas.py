"""Request and response models of the REST API (they also make the OpenAPI document)."""

from __future__ import annotations

from typing import Annotated, Any

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
