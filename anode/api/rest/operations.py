"""``GET /api/v1/operations``: the sponsorship ledger, newest first, as far as the caller may see it.

A project key sees only the operations it sponsored (the ledger records the key's id with each
row). An admin key sees every tenant's, and may narrow them to one key with ``?apiKeyId=``. A
server with no keys configured (development only) answers everything, as it does for every
endpoint.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from anode.api.rest.schemas import ErrorReply
from anode.errors import Forbidden, InvalidRequest
from anode.store.api_keys import KeyKind
from anode.userop.codec import checksum, parse_address

router = APIRouter(prefix="/api/v1", tags=["operations"])
#: uint256 columns answered as decimal strings (JSON numbers lose digits past 2**53 in JavaScript)
_DECIMAL_TEXT = ("exchange_rate", "max_token_amount", "actual_gas_cost_wei", "actual_gas_used", "token_amount_paid")


@router.get("/operations", responses={code: {"model": ErrorReply} for code in (400, 401, 403)}, summary="The ledger")
async def list_operations(
    request: Request,
    sender: Annotated[str | None, Query(description="Only operations of this account.")] = None,
    since: Annotated[datetime | None, Query(description="ISO-8601 time, inclusive.")] = None,
    until: Annotated[datetime | None, Query(description="ISO-8601 time, exclusive.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    api_key_id: Annotated[
        str | None,
        Query(alias="apiKeyId", description="Admin keys: only operations sponsored by this key (its id)."),
    ] = None,
) -> dict[str, Any]:
    anode = request.app.state.anode
    keys = anode.api_keys
    caller = await keys.caller(request)
    if not keys.open and caller.kind is not KeyKind.ADMIN:
        if api_key_id is not None and api_key_id != caller.key_id:
            raise Forbidden("a project key sees only its own operations: leave out apiKeyId (admin keys may set it)")
        api_key_id = caller.key_id
    if sender is not None:
        try:
            sender = checksum(parse_address(sender))
        except ValueError as exc:
            raise InvalidRequest(f"sender: {exc}", field="sender") from None
    rows = await anode.ledger.find(sender=sender, since=since, until=until, limit=limit, api_key_id=api_key_id)
    for row in rows:
        row["nonce"] = hex(row["nonce"])
        row["max_gas_cost_wei"] = str(row["max_gas_cost_wei"])
        # ERC-20 mode's signed rate and most it may charge (null in verifying mode), and the outcome on
        # chain (the EntryPoint follower, watch.enabled): status signed, included or expired
        for name in _DECIMAL_TEXT:
            if row.get(name) is not None:
                row[name] = str(row[name])
    return {"operations": rows, "count": len(rows)}
