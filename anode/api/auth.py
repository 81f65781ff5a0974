"""API keys: ``?apikey=`` or ``Authorization: Bearer``. Keys are held only as SHA-256 digests.

Looking a digest up in a dict leaks nothing useful about the key (an attacker cannot steer the
digest), so no key is ever compared byte by byte. The key id recorded with each sponsorship is
a prefix of the digest: it identifies the key without revealing it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Annotated

from fastapi import Depends
from starlette.requests import Request

from anode.errors import Unauthorized


def key_id(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


class ApiKeys:
    def __init__(self, keys: Iterable[str]) -> None:
        self._ids = {hashlib.sha256(key.encode()).digest(): key_id(key) for key in keys}

    @property
    def open(self) -> bool:
        """No keys configured: anyone may call (the server warns loudly at start-up)."""
        return not self._ids

    def authenticate(self, request: Request) -> str | None:
        """The caller's key id, ``None`` on an open server; ``Unauthorized`` otherwise."""
        if self.open:
            return None
        presented = request.query_params.get("apikey")
        if presented is None:
            header = request.headers.get("authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() == "bearer" and token:
                presented = token.strip()
        if not presented:
            raise Unauthorized("an API key is required: pass ?apikey=KEY or the header 'Authorization: Bearer KEY'")
        found = self._ids.get(hashlib.sha256(presented.encode()).digest())
        if found is None:
            raise Unauthorized("the API key is not valid")
        return found


def caller_key_id(request: Request) -> str | None:
    """FastAPI dependency: authenticate before the body is even validated (401 before 400)."""
    keys: ApiKeys = request.app.state.anode.api_keys
    return keys.authenticate(request)


CallerKeyId = Annotated[str | None, Depends(caller_key_id)]
