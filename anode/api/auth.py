"""API keys: ``?apikey=`` or ``Authorization: Bearer``. Keys are held only as SHA-256 digests.

Two kinds: project keys sponsor; admin keys also manage policies, blacklists and keys. Keys come
from the config file (``auth.api_keys`` are project keys, ``auth.admin_keys`` admin keys) and from
the database (``anode keys create [--admin]``). A key not found in memory is looked up in the
database (keys made while the server runs work at once); unknown keys are remembered briefly so a
flood of wrong keys does not become a flood of queries. A presented key is found by its SHA-256
digest (a dictionary or an indexed SQL lookup): what an attacker can time is a search for a
digest they cannot steer, never a comparison with the key itself, so no constant-time compare of
keys is needed; the id recorded with each sponsorship is a digest prefix.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from starlette.requests import Request

from anode.errors import Forbidden, Unauthorized
from anode.store.api_keys import KeyKind, KeyRecord, SqlApiKeys, key_id

_MISS_TTL = 5.0
_MAX_MISSES = 10_000


@dataclass(frozen=True, slots=True)
class Caller:
    key_id: str | None
    kind: KeyKind


_OPEN = Caller(None, KeyKind.PROJECT)


class ApiKeys:
    def __init__(self, project: Iterable[str], admin: Iterable[str] = (), store: SqlApiKeys | None = None) -> None:
        self._known: dict[bytes, Caller] = {}
        for key in project:
            self._known[hashlib.sha256(key.encode()).digest()] = Caller(key_id(key), KeyKind.PROJECT)
        for key in admin:
            self._known[hashlib.sha256(key.encode()).digest()] = Caller(key_id(key), KeyKind.ADMIN)
        self._store = store
        self._misses: dict[bytes, float] = {}

    @property
    def open(self) -> bool:
        """No keys configured and no key store: anyone may call (the server warns loudly at start-up)."""
        return not self._known and self._store is None

    @staticmethod
    def presented(request: Request) -> str | None:
        key = request.query_params.get("apikey")
        if key is None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() == "bearer" and token:
                key = token.strip()
        return key or None

    async def caller(self, request: Request) -> Caller:
        """Who is calling; ``Unauthorized`` for a missing or unknown key (unless the server is open)."""
        if self.open:
            return _OPEN
        key = self.presented(request)
        if key is None:
            raise Unauthorized("an API key is required: pass ?apikey=KEY or the header 'Authorization: Bearer KEY'")
        found = await self.identify(key)
        if found is None:
            raise Unauthorized("the API key is not valid")
        return found

    async def identify(self, key: str) -> Caller | None:
        """Whose key ``key`` is, or ``None`` for a key that is unknown or revoked."""
        hashed = hashlib.sha256(key.encode()).digest()
        found = self._known.get(hashed)
        if found is None:
            found = await self._lookup(hashed)
        return found

    async def digest_of(self, ident: str) -> tuple[KeyKind, bytes] | None:
        """The kind and SHA-256 digest of the live key known as ``ident`` (dashboard sessions are
        signed with it: revoking the key ends them)."""
        for hashed, known in self._known.items():
            if known.key_id == ident:
                return known.kind, hashed
        if self._store is None:
            return None
        found: tuple[KeyKind, str] | None = await asyncio.get_running_loop().run_in_executor(
            None, self._store.digest_of, ident
        )
        return None if found is None else (found[0], bytes.fromhex(found[1]))

    async def authenticate(self, request: Request) -> str | None:
        return (await self.caller(request)).key_id

    async def _lookup(self, hashed: bytes) -> Caller | None:
        if self._store is None:
            return None
        now = time.monotonic()
        missed = self._misses.get(hashed)
        if missed is not None and now - missed < _MISS_TTL:
            return None
        record: KeyRecord | None = await asyncio.get_running_loop().run_in_executor(
            None, self._store.find, hashed.hex()
        )
        if record is None or not hmac.compare_digest(key_digest_prefix(hashed), record.id):
            if len(self._misses) > _MAX_MISSES:
                self._misses.clear()
            self._misses[hashed] = now
            return None
        return Caller(record.id, record.kind)  # not cached: a revoked key stops working at once


def key_digest_prefix(hashed: bytes) -> str:
    return hashed.hex()[:16]


async def caller_key_id(request: Request) -> str | None:
    """FastAPI dependency: authenticate before the body is even validated (401 before 400)."""
    keys: ApiKeys = request.app.state.anode.api_keys
    return await keys.authenticate(request)


async def require_admin(request: Request) -> str:
    """FastAPI dependency for management endpoints: an admin key (or an open development server)."""
    keys: ApiKeys = request.app.state.anode.api_keys
    caller = await keys.caller(request)
    if keys.open:
        return "open"
    if caller.kind is not KeyKind.ADMIN:
        raise Forbidden("this endpoint needs an admin key (anode keys create --admin)")
    assert caller.key_id is not None
    return caller.key_id


CallerKeyId = Annotated[str | None, Depends(caller_key_id)]
AdminKeyId = Annotated[str, Depends(require_admin)]
