"""``POST /api/v1/security/assess``: what the security filter thinks of an operation, without deciding.

It scores with the running ``security_filter`` module (its settings and the blacklist admins
manage; the module's defaults when none is enabled) and the server's shared chain cache; it
issues no confirmation token and signs nothing.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from anode.api.auth import CallerKeyId
from anode.api.rest.schemas import ChainId, ErrorReply
from anode.chain.cache import make_cache
from anode.pipeline.modules.security import NAME, Assessor, Config, SecurityFilter, assessment_json
from anode.pipeline.registry import module_config
from anode.userop.models import parse_user_op

router = APIRouter(prefix="/api/v1/security", tags=["security"])


class AssessBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    user_operation: dict[str, Any] = Field(alias="userOperation", description="The UserOperation in its RPC form.")
    entry_point: str = Field(alias="entryPoint", description="EntryPoint address (selects the userOp version).")
    chain_id: ChainId = Field(None, alias="chainId", description='Chain id: an integer or a hex string ("0x7a69").')


class RiskFactorReply(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    severity: str
    description: str
    weight: int


class AssessReply(BaseModel):
    model_config = ConfigDict(extra="allow")

    riskLevel: str = Field(description="low | medium | high | critical")
    riskScore: int = Field(ge=0, le=100)
    decision: str = Field(description="allow | confirm | block: what the pipeline would do")
    targetContract: dict[str, Any] | None
    riskFactors: list[RiskFactorReply]
    recommendations: list[str]


def _assessor(app: FastAPI) -> Assessor:
    """The running security filter's own assessor (settings and the blacklist admins manage), so
    the answer is the pipeline's; with no filter enabled, one with the module's defaults."""
    for module in app.state.anode.service.pipeline.checks:
        if isinstance(module, SecurityFilter):
            return module.assessor
    assessor: Assessor | None = getattr(app.state, "security_assessor", None)
    if assessor is None:
        anode = app.state.anode
        config = Config.model_validate(module_config(anode.settings.pipeline.modules, NAME) or {})
        # no pipeline module enabled: no shared cache either, so one of this endpoint's own
        cache = anode.deps.cache if anode.deps is not None else make_cache(None)
        assessor = app.state.security_assessor = Assessor(config, cache)
    return assessor


@router.post("/assess", response_model=AssessReply, responses={c: {"model": ErrorReply} for c in (400, 401, 503)})
async def assess(api_key_id: CallerKeyId, body: AssessBody, request: Request) -> dict[str, Any]:
    """Risk score (0–100), level, factors and recommendations for an operation's callData."""
    route = request.app.state.anode.routes.resolve(body.entry_point, body.chain_id)
    op = parse_user_op(body.user_operation, route.version)
    result = await _assessor(request.app).assess(route.chain, route.chain_id, op.sender, op.call_data)
    return assessment_json(result)
