"""``/api/v1/policies``: manage sponsorship policies at run time (admin keys only).

    POST   /api/v1/policies                 create (``id`` optional: one is made)      201
    GET    /api/v1/policies                 list
    GET    /api/v1/policies/{id}            one
    PUT    /api/v1/policies/{id}            replace (a webhook secret left out or masked is kept)
    DELETE /api/v1/policies/{id}                                                        204
    GET    /api/v1/policies/{id}/status     usage, remaining and reset time per limit (?wallet=&contract=)

Bodies use the same fields as the ``policies:`` list of the settings file. Answers never carry a
webhook secret: it reads ``********``. Without ``policy_engine`` in ``pipeline.modules`` every
call answers 409 ``ANODE_POLICY_ENGINE_OFF`` and stores nothing: a policy kept there would never
be enforced. Policies are server-wide (no policy belongs to a project key), so project keys read
none of them: their status counts every key's spending.
"""

from __future__ import annotations

import logging
import secrets
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from pydantic import ValidationError
from starlette.responses import Response

from anode.api.auth import AdminKeyId
from anode.api.rest.schemas import ErrorReply
from anode.errors import InvalidRequest
from anode.pipeline.modules.policy_engine import engine_of
from anode.policy.engine import PolicyEngine
from anode.policy.errors import PolicyEngineOff
from anode.policy.models import MASK, Policy
from anode.policy.repository import validation_message

router = APIRouter(prefix="/api/v1/policies", tags=["policies"])
log = logging.getLogger("anode.policy")

_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorReply} for code in (400, 401, 403, 404, 409, 503)}
_EXAMPLE = {
    "id": "daily-cap",
    "name": "daily cap",
    "type": "project",
    "rate_limits": [
        {"type": "amount", "limit": "1 ether", "window": 86400},
        {"type": "gas_price", "limit": "50 gwei"},
    ],
}

PolicyJson = Annotated[dict[str, Any], Body(openapi_examples={"project cap": {"value": _EXAMPLE}})]


def _engine(request: Request) -> PolicyEngine:
    engine = engine_of(request.app.state.anode.service.pipeline.policies)
    if engine is None:
        raise PolicyEngineOff()
    return engine


def _validate(body: dict[str, Any]) -> Policy:
    try:
        return Policy.model_validate(body)
    except ValidationError as exc:
        first = ".".join(str(part) for part in exc.errors()[0]["loc"]) or "body"
        raise InvalidRequest(validation_message(exc, ""), field=first) from None


def _without_mask(body: dict[str, Any], kept: str | None) -> dict[str, Any]:
    """Fill a webhook secret that was left out (or sent back masked) with the stored one."""
    hook = body.get("webhook")
    if isinstance(hook, dict) and hook.get("secret") in (None, MASK):
        if kept is None:
            raise InvalidRequest("webhook.secret is required (at least 16 characters)", field="webhook.secret")
        body = {**body, "webhook": {**hook, "secret": kept}}
    return body


@router.post("", status_code=201, responses=_ERRORS, summary="Create a policy")
async def create_policy(request: Request, admin: AdminKeyId, body: PolicyJson) -> dict[str, Any]:
    engine = _engine(request)
    body = {**body}
    body.setdefault("id", "pol_" + secrets.token_hex(6))
    policy = _validate(_without_mask(body, None))
    await engine.repository.create(policy)
    log.info("policy %s created by key %s", policy.id, admin)
    return policy.public()


@router.get("", responses=_ERRORS, summary="List policies")
async def list_policies(request: Request, _admin: AdminKeyId) -> dict[str, Any]:
    policies = await _engine(request).repository.list()
    return {"policies": [policy.public() for policy in policies], "count": len(policies)}


@router.get("/{policy_id}", responses=_ERRORS, summary="One policy")
async def get_policy(request: Request, _admin: AdminKeyId, policy_id: str) -> dict[str, Any]:
    return (await _engine(request).repository.get(policy_id)).public()


@router.put("/{policy_id}", responses=_ERRORS, summary="Replace a policy")
async def replace_policy(request: Request, admin: AdminKeyId, policy_id: str, body: PolicyJson) -> dict[str, Any]:
    engine = _engine(request)
    if body.get("id", policy_id) != policy_id:
        raise InvalidRequest("id in the body must match the id in the path (ids cannot be changed)", field="id")
    kept = await engine.repository.stored_secret(policy_id)
    policy = _validate(_without_mask({**body, "id": policy_id}, kept))
    await engine.repository.replace(policy)
    log.info("policy %s replaced by key %s", policy.id, admin)
    return policy.public()


@router.delete("/{policy_id}", status_code=204, responses=_ERRORS, summary="Delete a policy")
async def delete_policy(request: Request, admin: AdminKeyId, policy_id: str) -> Response:
    await _engine(request).repository.delete(policy_id)
    log.info("policy %s deleted by key %s", policy_id, admin)
    return Response(status_code=204)


@router.get("/{policy_id}/status", responses=_ERRORS, summary="Usage of a policy's limits")
async def policy_status(
    request: Request,
    _admin: AdminKeyId,
    policy_id: str,
    wallet: Annotated[str | None, Query(description="The wallet (needed for a per-wallet policy).")] = None,
    contract: Annotated[str | None, Query(description="A contract: answers whether the policy covers it.")] = None,
) -> dict[str, Any]:
    return await _engine(request).status(policy_id, wallet=wallet, contract=contract)
