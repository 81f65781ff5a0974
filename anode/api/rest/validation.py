"""``GET /api/v1/validation/sbt/{address}`` and ``GET /api/v1/validation/pnt/{address}``.

What the ``sbt_validator`` and ``pnt_balance_validator`` modules would decide for an address,
with their configured settings (``pipeline.modules``) and through the same cache, so a wallet
can tell its user what is missing before sending an operation. A module that is not configured
(or not enabled) answers 404; a chain that cannot be read answers 503. ``?chainId=`` (decimal or
hex) picks the chain; it may be left out when the server serves one chain.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel

from anode.api.auth import CallerKeyId
from anode.api.rest.schemas import ErrorReply
from anode.chain.client import ChainClient
from anode.errors import InvalidRequest, ModuleNotConfigured, UnsupportedChain
from anode.pipeline.modules import pnt, sbt
from anode.userop.codec import checksum, parse_address, parse_quantity

router = APIRouter(prefix="/api/v1/validation", tags=["validation"])

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorReply} for code in (400, 401, 404, 503)}


# -- response models (the OpenAPI document) ----------------------------------------------------


class Refusal(BaseModel):
    code: str
    message: str


class SbtToken(BaseModel):
    contract: str
    type: str
    balance: str


class SbtValidation(BaseModel):
    isValid: bool
    sbtTokens: list[SbtToken]
    requiredTypes: list[str]
    missingTypes: list[str]
    error: Refusal | None = None


class SbtReply(BaseModel):
    address: str
    chainId: int
    sbtValidation: SbtValidation


class PntAmounts(BaseModel):
    available: str
    staked: str
    locked: str
    total: str


class PntRequirements(BaseModel):
    minBalance: str
    met: bool
    shortfall: str


class PntValidation(BaseModel):
    isValid: bool
    balance: PntAmounts
    requirements: PntRequirements
    error: Refusal | None = None


class PntReply(BaseModel):
    address: str
    chainId: int
    pntValidation: PntValidation


# -- helpers -----------------------------------------------------------------------------------

# the patterns document the formats (OpenAPI); the handlers parse, so errors name the field plainly
AddressPath = Annotated[
    str,
    Path(
        description="The account (smart account address) to check.",
        json_schema_extra={"pattern": "^0x[0-9a-fA-F]{40}$"},
    ),
]
ChainIdQuery = Annotated[
    str | None,
    Query(
        alias="chainId",
        description="Chain id, decimal or 0x-hex; optional when one chain is served.",
        json_schema_extra={"pattern": "^(0x[0-9a-fA-F]{1,16}|[0-9]{1,20})$"},
    ),
]


def _holder(address: str) -> bytes:
    try:
        return parse_address(address)
    except ValueError as exc:
        raise InvalidRequest(f"address: {exc}", field="address") from None


def _chain(request: Request, chain_id: str | None) -> tuple[int, ChainClient]:
    nodes: dict[int, ChainClient] = {route.chain_id: route.chain for route in request.app.state.anode.routes}
    served = ", ".join(str(number) for number in sorted(nodes))
    if chain_id is None:
        if len(nodes) == 1:
            return next(iter(nodes.items()))
        raise InvalidRequest(f"chainId: this server serves several chains ({served}): pass ?chainId=", field="chainId")
    try:
        number = parse_quantity(int(chain_id) if chain_id.isascii() and chain_id.isdigit() else chain_id, bits=64)
    except ValueError:
        raise InvalidRequest(
            f"chainId: expected a decimal or 0x-hex chain id, got {chain_id[:40]!r}", field="chainId"
        ) from None
    if number not in nodes:
        raise UnsupportedChain(
            f"chainId {number} is not served here (served: {served})",
            field="chainId",
            data={"supportedChainIds": sorted(nodes)},
        )
    return number, nodes[number]


def _check(request: Request, name: str) -> Any:
    """The module ``name`` built from its configured settings, once per app, sharing the server's cache."""
    state = request.app.state
    built: dict[str, Any] | None = getattr(state, "validation_checks", None)
    if built is None:
        built = state.validation_checks = {}
    if name in built:
        return built[name]
    anode = request.app.state.anode
    entries = [entry for entry in anode.settings.pipeline.modules if entry.name == name]
    if not entries:
        raise ModuleNotConfigured(f"{name} is not configured in pipeline.modules: this server does not run that check")
    enabled = [entry for entry in entries if entry.enabled]
    if not enabled:
        raise ModuleNotConfigured(f"{name} is disabled in pipeline.modules (enabled: false): it decides nothing")
    factory = sbt.create if name == sbt.NAME else pnt.create
    built[name] = factory(enabled[0].config, anode.deps)
    return built[name]


# -- endpoints ---------------------------------------------------------------------------------


@router.get("/sbt/{address}", response_model=SbtReply, responses=_ERRORS)
async def sbt_validation(
    request: Request, _caller: CallerKeyId, address: AddressPath, chain_id: ChainIdQuery = None
) -> dict[str, Any]:
    """Whether ``address`` holds a soul-bound token of every type ``sbt_validator`` requires."""
    holder = _holder(address)
    check: sbt.SbtCheck = _check(request, sbt.NAME)
    number, chain = _chain(request, chain_id)
    status = await check.status(chain, number, holder)
    validation: dict[str, Any] = {
        "isValid": not status.missing_types,
        "sbtTokens": status.tokens,
        "requiredTypes": list(status.required_types),
        "missingTypes": status.missing_types,
    }
    if status.missing_types:
        validation["error"] = {"code": sbt.NOT_FOUND, "message": check.refusal(status)[0]}
    return {"address": checksum(holder), "chainId": number, "sbtValidation": validation}


@router.get("/pnt/{address}", response_model=PntReply, responses=_ERRORS)
async def pnt_validation(
    request: Request, _caller: CallerKeyId, address: AddressPath, chain_id: ChainIdQuery = None
) -> dict[str, Any]:
    """``address``'s points balance (available, staked, locked) against ``pnt_balance_validator``'s minimum."""
    holder = _holder(address)
    check: pnt.PntCheck = _check(request, pnt.NAME)
    number, chain = _chain(request, chain_id)
    balance = await check.balance(chain, number, holder)
    shortfall = check.shortfall(balance)
    validation: dict[str, Any] = {
        "isValid": shortfall == 0,
        "balance": balance.to_json(),
        "requirements": {
            "minBalance": str(check.config.min_balance),
            "met": shortfall == 0,
            "shortfall": str(shortfall),
        },
    }
    if shortfall:
        validation["error"] = {"code": pnt.INSUFFICIENT, "message": check.refusal(holder, balance)[0]}
    return {"address": checksum(holder), "chainId": number, "pntValidation": validation}
