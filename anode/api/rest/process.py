"""``POST /api/v1/paymaster/process``: the whole pipeline, with each module's verdict and timing."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from anode.api import process as flow
from anode.api.auth import CallerKeyId
from anode.api.rest.schemas import ErrorReply, SponsorBody
from anode.sponsorship import SponsorRequest

router = APIRouter(prefix="/api/v1/paymaster", tags=["paymaster"])


@router.post("/process", responses={code: {"model": ErrorReply} for code in (400, 401, 403, 422, 503)})
async def process(api_key_id: CallerKeyId, body: SponsorBody, request: Request) -> dict[str, Any]:
    """Checks (SBT, PNT, security) → policies → signature. A warning answers ``requiresConfirmation``
    with a ``confirmationToken``; send the same operation again with ``context.confirmationToken``."""
    sponsor_request = SponsorRequest(
        body.user_operation,
        body.entry_point,
        body.chain_id,
        body.context,
        "rest.process",
        api_key_id,
        request.state.request_id,
    )
    return await flow.process(request.app.state.anode.service, sponsor_request)
