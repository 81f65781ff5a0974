"""The design's comprehensive call, shared by REST ``/api/v1/paymaster/process`` and JSON-RPC
``anode_processUserOperation``: every module's verdict and timing, then the signed data, or the
confirmation the user must give, or (signing disabled) the decision alone."""

from __future__ import annotations

from typing import Any

from anode.api.jsonrpc.results import gas_fields, paymaster_fields, signed_extras
from anode.errors import ConfirmationRequired
from anode.sponsorship import SponsorRequest, SponsorshipService, processing


async def process(service: SponsorshipService, request: SponsorRequest) -> dict[str, Any]:
    try:
        if not service.signing:
            report = await service.decide(request)
            return {"status": "approved", "processing": processing(report)}
        result = await service.sign_or_estimate(request)
    except ConfirmationRequired as exc:
        return _confirmation(exc)
    assert result.report is not None
    return {
        "status": "sponsored",
        **gas_fields(result),
        **paymaster_fields(result),
        **signed_extras(result),
        "processing": processing(result.report),
    }


def _confirmation(exc: ConfirmationRequired) -> dict[str, Any]:
    data = dict(exc.data or {})
    return {
        "status": "requires_confirmation",
        "requiresConfirmation": True,
        "confirmationToken": data.pop("confirmationToken", None),
        "securityWarning": data.pop("securityWarning", {"message": exc.message}),
        "processing": data.pop("processing", None),
    }
