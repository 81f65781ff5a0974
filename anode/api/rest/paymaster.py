"""``POST /api/v1/paymaster/sponsor``: sign paymaster data for an operation, REST style.

An operation that already carries its gas fields is signed as it is; one without them is first
estimated through the chain's bundler (when configured), as ``pm_sponsorUserOperation`` does.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from anode.api.auth import CallerKeyId
from anode.api.jsonrpc.results import gas_fields, paymaster_fields, signed_extras
from anode.api.rest.schemas import ErrorReply, SponsorBody, SponsorReply
from anode.sponsorship import SponsorRequest, SponsorshipService

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
