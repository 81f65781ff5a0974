"""Request and response models of the REST API (they also make the OpenAPI document)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class SponsorBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    user_operation: dict[str, Any] = Field(
        alias="userOperation",
        description="The unsigned UserOperation in its RPC form (v0.7+: unpacked factory/paymaster fields).",
    )
    entry_point: str = Field(alias="entryPoint", description="EntryPoint address.")
    chain_id: int | str | None = Field(None, alias="chainId", description="Chain id (number or hex).")
    context: dict[str, Any] | None = Field(None, description="Optional: {validForSeconds}.")


class SponsorReply(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")

    paymaster: str | None = None
    paymasterData: str | None = None
    paymasterAndData: str | None = None
    paymasterVerificationGasLimit: str | None = None
    paymasterPostOpGasLimit: str | None = None
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
