"""``/api/v1/security/blacklist``: the security filter's contract blacklist, managed at run time (admin keys).

    GET    /api/v1/security/blacklist                      every entry, and the settings file's list
    POST   /api/v1/security/blacklist                      {address, chainId?, reason?}     201 / 200
    DELETE /api/v1/security/blacklist/{address}?chainId=   take one entry off                200 / 404

An entry is an address on one chain (``chainId``) or on every chain (``chainId`` left out or
null). The filter blocks a call to (or an approval for) an address in an entry or in
``blacklist_contracts``. Adding an entry that exists is not an error: the answer is 200 with the
entry kept (its first reason and author) and ``"created": false``; a new one is 201 with
``"created": true``. An entry takes effect on this server at its next request, on other servers
sharing the database within the filter's ``blacklist_refresh_seconds``.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from anode.api.auth import AdminKeyId
from anode.api.rest.schemas import ErrorReply
from anode.errors import AnodeError, InvalidRequest, ModuleNotConfigured, UnsupportedChain
from anode.pipeline.modules.security import NAME, SecurityFilter
from anode.store.blacklist import MAX_REASON, BlacklistEntry, SqlBlacklist, entry_id
from anode.userop.codec import checksum, parse_quantity

router = APIRouter(prefix="/api/v1/security/blacklist", tags=["security"])
log = logging.getLogger("anode.security")

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorReply} for code in (400, 401, 403, 404, 503)}
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


class BlacklistEntryNotFound(AnodeError):
    code = "ANODE_BLACKLIST_ENTRY_NOT_FOUND"
    rpc_code = -32602
    http_status = 404


class NewEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str = Field(description="The contract (or spender) to refuse: 0x followed by 40 hex digits.")
    chainId: int | None = Field(None, description="Only on this chain (integer or hex); null: every chain.")
    reason: str | None = Field(None, max_length=MAX_REASON, description="Why (shown to admins, not to wallets).")

    @field_validator("chainId", mode="before")
    @classmethod
    def _chain_id(cls, value: Any) -> Any:
        return _parse_chain_id(value)  # before pydantic's coercion: JSON true is not chain 1

    @field_validator("reason")
    @classmethod
    def _printable(cls, value: str | None) -> str | None:
        if value is not None and any(ord(c) < 32 and c not in "\t\n" for c in value):
            raise ValueError("must not contain control characters (other than tabs and new lines)")
        return value


def _filter(request: Request) -> tuple[SecurityFilter, SqlBlacklist]:
    for module in request.app.state.anode.service.pipeline.checks:
        if isinstance(module, SecurityFilter) and module.blacklist is not None:
            return module, module.blacklist
    raise ModuleNotConfigured(
        f"the security filter is not enabled on this server, so no blacklist is read: add {{name: {NAME}}} "
        "to pipeline.modules"
    )


def contract_address(value: Any, field: str) -> str:
    """``value`` as lower-case hex, or a 400 that says what an address looks like."""
    shown = repr(value)[:60]
    if not isinstance(value, str) or not _ADDRESS.fullmatch(value):
        raise InvalidRequest(
            f"{field}: expected a contract address, 0x followed by 40 hex digits; got {shown}", field=field
        )
    digits = value[2:]
    if digits != digits.lower() and digits != digits.upper():
        expected = checksum(bytes.fromhex(digits))
        if expected != value:
            raise InvalidRequest(
                f"{field}: {value} has mixed case that fails its EIP-55 checksum (a mistyped digit?); "
                f"check it, or send it all lower-case",
                field=field,
            )
    return value.lower()


def _parse_chain_id(value: Any) -> int | None:
    if value is None:
        return None
    try:
        if isinstance(value, str) and value.isascii() and value.isdigit():
            value = int(value)
        if isinstance(value, bool):
            raise ValueError("a boolean is not a chain id")
        return parse_quantity(value, bits=64)
    except ValueError:
        raise ValueError(
            f"expected an integer or a 0x-hex chain id (null: every chain), got {repr(value)[:40]}"
        ) from None


def _chain_id(value: Any) -> int | None:
    try:
        return _parse_chain_id(value)
    except ValueError as exc:
        raise InvalidRequest(f"chainId: {exc}", field="chainId") from None


def _public(entry: BlacklistEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "address": checksum(bytes.fromhex(entry.address[2:])),
        "chainId": entry.chain_id,
        "reason": entry.reason,
        "createdAt": entry.created_at.isoformat(),
        "createdBy": entry.created_by,
    }


@router.get("", responses=_ERRORS, summary="The contract blacklist")
async def list_entries(request: Request, _admin: AdminKeyId) -> dict[str, Any]:
    module, store = _filter(request)
    entries = await store.entries()
    settings = [checksum(bytes.fromhex(a[2:])) for a in sorted({a.lower() for a in module.config.blacklist_contracts})]
    return {
        "entries": [_public(entry) for entry in entries],
        "count": len(entries),
        "fromSettings": settings,
        "refreshSeconds": store.refresh_seconds,
    }


@router.post("", status_code=201, responses=_ERRORS, summary="Blacklist a contract")
async def add_entry(request: Request, response: Response, admin: AdminKeyId, body: NewEntry) -> dict[str, Any]:
    address = contract_address(body.address, "address")
    chain_id = body.chainId  # parsed by its validator
    _, store = _filter(request)
    if chain_id is not None:
        served = sorted({route.chain_id for route in request.app.state.anode.routes})
        if chain_id not in served:
            raise UnsupportedChain(
                f"chainId {chain_id} is not served here (served: {', '.join(map(str, served))}); "
                "leave chainId out to blacklist the address on every chain",
                field="chainId",
                data={"supportedChainIds": served},
            )
    reason = body.reason.strip() if body.reason and body.reason.strip() else None
    entry, created = await store.add(address, chain_id, reason, admin)
    if created:
        log.info("blacklist: %s added by key %s", entry.id, admin)
    else:
        response.status_code = 200
    return {**_public(entry), "created": created}


@router.delete("/{address}", responses=_ERRORS, summary="Take a contract off the blacklist")
async def remove_entry(
    request: Request,
    admin: AdminKeyId,
    address: str,
    chain_id: Annotated[
        str | None, Query(alias="chainId", description="The entry's chain; left out: the every-chain entry.")
    ] = None,
) -> dict[str, Any]:
    lower = contract_address(address, "address")
    number = _chain_id(chain_id)
    module, store = _filter(request)
    in_settings = lower in {a.lower() for a in module.config.blacklist_contracts}
    if not await store.remove(lower, number):
        scope = "every chain" if number is None else f"chain {number}"
        hint = (
            "; it is blacklisted in the settings file (security_filter.config.blacklist_contracts): remove it there"
            if in_settings
            else ""
        )
        raise BlacklistEntryNotFound(
            f"{checksum(bytes.fromhex(lower[2:]))} has no blacklist entry for {scope}{hint}",
            data={"id": entry_id(lower, number), "inSettings": in_settings},
        )
    log.info("blacklist: %s removed by key %s", entry_id(lower, number), admin)
    return {"removed": entry_id(lower, number), "blacklistedInSettings": in_settings}
