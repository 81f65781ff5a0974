"""``POST /api/v1/paymaster/sponsor`` and ``/erc20``: sign paymaster data for an operation, REST
style; ``/estimate``: its gas, fees and maximum cost (in wei, and in a token), nothing signed.

An operation that already carries its gas fields is signed as it is; one without them is first
estimated through the chain's bundler (when configured), as ``pm_sponsorUserOperation`` does.
``/erc20`` is ERC-20 mode (docs/erc20.md): the sender pays the sponsor in ``context.token``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from anode.api.auth import CallerKeyId
from anode.api.jsonrpc.results import gas_fields, paymaster_fields, signed_extras
from anode.api.rest.schemas import (
    Erc20Body,
    Erc20Reply,
    ErrorReply,
    EstimateBody,
    EstimateReply,
    SponsorBody,
    SponsorReply,
)
from anode.sponsorship import SponsorRequest, SponsorshipService
from anode.userop.models import UserOperationV06

router = APIRouter(prefix="/api/v1/paymaster", tags=["paymaster"])

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorReply} for code in (400, 401, 403, 422, 503)}


@router.post("/sponsor", response_model=SponsorReply, responses=_ERRORS)
async def sponsor(api_key_id: CallerKeyId, body: SponsorBody, request: Request) -> dict[str, Any]:
    service: SponsorshipService = request.app.state.anode.service
    sponsor_request = SponsorRequest(
        body.user_operation,
        body.entry_point,
        body.chain_id,
        body.context,
        "rest.sponsor",
        api_key_id,
        request.state.request_id,
    )
    result = await service.sign_or_estimate(sponsor_request)
    return {**gas_fields(result), **paymaster_fields(result), **signed_extras(result)}


@router.post("/erc20", response_model=Erc20Reply, responses=_ERRORS)
async def erc20(api_key_id: CallerKeyId, body: Erc20Body, request: Request) -> dict[str, Any]:
    service: SponsorshipService = request.app.state.anode.service
    sponsor_request = SponsorRequest(
        body.user_operation,
        body.entry_point,
        body.chain_id,
        body.context.for_service(),
        "rest.erc20",
        api_key_id,
        request.state.request_id,
    )
    result = await service.sign_or_estimate(sponsor_request)
    payment = result.payment
    assert payment is not None  # context.token is required here
    return {
        **gas_fields(result),
        **paymaster_fields(result),
        **signed_extras(result),
        "token": payment.token,
        "exchangeRate": hex(payment.terms.exchange_rate),
        "maxTokenAmount": str(result.max_token_cost),
    }


@router.post("/estimate", response_model=EstimateReply, responses=_ERRORS)
async def estimate(api_key_id: CallerKeyId, body: EstimateBody, request: Request) -> dict[str, Any]:
    service: SponsorshipService = request.app.state.anode.service
    context = None if body.token is None else {"token": body.token}
    sponsor_request = SponsorRequest(
        body.user_operation,
        body.entry_point,
        body.chain_id,
        context,
        "rest.estimate",
        api_key_id,
        request.state.request_id,
    )
    result = await service.estimate(sponsor_request)
    op = result.op
    gas = {
        **gas_fields(result),
        "maxFeePerGas": hex(op.max_fee_per_gas),
        "maxPriorityFeePerGas": hex(op.max_priority_fee_per_gas),
    }
    if not isinstance(op, UserOperationV06):
        gas["paymasterVerificationGasLimit"] = hex(op.paymaster_verification_gas_limit or 0)
        gas["paymasterPostOpGasLimit"] = hex(op.paymaster_post_op_gas_limit or 0)
    reply: dict[str, Any] = {"gasEstimate": gas, "totalGasCost": str(op.max_gas_cost())}
    if result.payment is not None:
        reply["tokenAmount"] = str(result.max_token_cost)
        reply["token"] = result.payment.token
        reply["exchangeRate"] = hex(result.payment.terms.exchange_rate)
    return reply
