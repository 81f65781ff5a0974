"""``GET /api/v1/operations``: the sponsorship ledger, newest first."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from anode.api.auth import CallerKeyId
from anode.api.rest.schemas import ErrorReply
from anode.errors import InvalidRequest
from anode.userop.codec import checksum, parse_address

router = APIRouter(prefix="/api/v1", tags=["operations"])


@router.get("/operations", responses={400: {"model": ErrorReply}, 401: {"model": ErrorReply}})
async def list_operations(
    request: Request,
    _caller: CallerKeyId,
    sender: Annotated[str | None, Query(description="Only operations of this account.")] = None,
    since: Annotated[datetime | None, Query(description="ISO-8601 time, inclusive.")] = None,
    until: Annotated[datetime | None, Query(description="ISO-8601 time, exclusive.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    anode = request.app.state.anode
    if sender is not None:
        try:
            sender = checksum(parse_address(sender))
        except ValueError as exc:
            raise InvalidRequest(f"sender: {exc}", field="sender") from None
    rows = await anode.ledger.find(sender=sender, since=since, until=until, limit=limit)
    for row in rows:
        row["nonce"] = hex(row["nonce"])
        row["max_gas_cost_wei"] = str(row["max_gas_cost_wei"])
    return {"operations": rows, "count": len(rows)}
