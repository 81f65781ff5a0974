"""``/api/v1/keys``: API key management (admin keys only). The plaintext of a new key is shown once."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from anode.api.auth import AdminKeyId
from anode.api.rest.schemas import ErrorReply
from anode.errors import InvalidRequest
from anode.store.api_keys import KeyKind, KeyRecord, SqlApiKeys

router = APIRouter(prefix="/api/v1/keys", tags=["keys"])
_ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorReply} for code in (400, 401, 403, 404)}


class NewKey(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    kind: KeyKind = KeyKind.PROJECT


def _public(record: KeyRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "kind": record.kind.value,
        "createdAt": record.created_at.isoformat(),
        "revokedAt": record.revoked_at.isoformat() if record.revoked_at else None,
    }


def _store(request: Request) -> SqlApiKeys:
    store: SqlApiKeys = request.app.state.anode.key_store
    return store


@router.post("", status_code=201, responses=_ERRORS)
async def create_key(_admin: AdminKeyId, body: NewKey, request: Request) -> dict[str, Any]:
    plaintext, record = _store(request).create(body.name, body.kind)
    return {**_public(record), "key": plaintext}


@router.get("", responses=_ERRORS)
async def list_keys(_admin: AdminKeyId, request: Request) -> dict[str, Any]:
    return {"keys": [_public(record) for record in _store(request).list()]}


@router.delete("/{key_id}", responses=_ERRORS)
async def revoke_key(_admin: AdminKeyId, key_id: str, request: Request) -> dict[str, Any]:
    if not _store(request).revoke(key_id):
        raise InvalidRequest(f"no active key with id {key_id!r}", field="key_id")
    return {"revoked": key_id}
