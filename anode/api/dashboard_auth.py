"""Who may see the dashboard: an admin key, in a header or through a login session.

A session is a cookie ``anode_dashboard`` holding ``KEY_ID.EXPIRES.MAC``: the key's id (a digest
prefix, as in the ledger), a Unix expiry and an HMAC-SHA256 over both, keyed with the SHA-256
digest of the admin key itself. The key never travels in the cookie; any process of the server
(and a restarted one) can check a session, since each knows the digests of its keys; revoking
the key ends its sessions at once. The cookie is ``HttpOnly``, ``SameSite=Strict``, ``Path=/dashboard``
and ``Secure`` when the request came over HTTPS.

A key in the URL (``?apikey=``) is refused outright: URLs stay in history, proxies and logs.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response

from anode.api.auth import ApiKeys
from anode.errors import Forbidden, KeyInUrl, Unauthorized
from anode.store.api_keys import KeyKind

COOKIE = "anode_dashboard"
COOKIE_PATH = "/dashboard"
SESSION_SECONDS = 8 * 3600
_CONTEXT = b"anode dashboard session v1"


class Sessions:
    """Opens and checks dashboard sessions for the server's admin keys."""

    def __init__(self, keys: ApiKeys, clock: Callable[[], float] | None = None) -> None:
        self._keys = keys
        self._clock = clock if clock is not None else lambda: time.time()

    async def open(self, key: str) -> str:
        """A session cookie's value for admin key ``key``; ``Unauthorized`` / ``Forbidden`` otherwise."""
        caller = await self._keys.identify(key)
        if caller is None:
            raise Unauthorized("the API key is not valid")
        if caller.kind is not KeyKind.ADMIN or caller.key_id is None:
            raise Forbidden("the dashboard needs an admin key (anode keys create --admin)")
        expires = int(self._clock()) + SESSION_SECONDS
        hashed = hashlib.sha256(key.encode()).digest()
        return f"{caller.key_id}.{expires}.{_mac(hashed, caller.key_id, expires)}"

    async def admin(self, request: Request) -> str:
        """The admin key id behind ``request`` (header or session), or the matching error."""
        if "apikey" in request.query_params:
            raise KeyInUrl(
                "the dashboard takes no key in the URL (it would stay in history and logs): "
                "log in at /dashboard or send the header 'Authorization: Bearer KEY'"
            )
        if self._keys.open:
            return "open"
        if request.headers.get("authorization"):
            caller = await self._keys.caller(request)
            if caller.kind is not KeyKind.ADMIN or caller.key_id is None:
                raise Forbidden("the dashboard needs an admin key (anode keys create --admin)")
            return caller.key_id
        ident = await self._session(request.cookies.get(COOKIE))
        if ident is None:
            raise Unauthorized("log in to the dashboard with an admin key (or send 'Authorization: Bearer KEY')")
        return ident

    async def _session(self, value: str | None) -> str | None:
        if not value or value.count(".") != 2:
            return None
        ident, expires_text, mac = value.split(".")
        if not expires_text.isdigit() or int(expires_text) <= self._clock():
            return None
        found = await self._keys.digest_of(ident)
        if found is None or found[0] is not KeyKind.ADMIN:
            return None
        if not hmac.compare_digest(mac, _mac(found[1], ident, int(expires_text))):
            return None
        return ident


def set_cookie(response: Response, request: Request, value: str) -> None:
    response.set_cookie(
        COOKIE,
        value,
        max_age=SESSION_SECONDS,
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=_https(request),
    )


def clear_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict", secure=_https(request))


def _https(request: Request) -> bool:
    return request.url.scheme == "https"


def _mac(hashed: bytes, ident: str, expires: int) -> str:
    message = b"\x00".join((_CONTEXT, ident.encode(), str(expires).encode()))
    return hmac.new(hashed, message, hashlib.sha256).hexdigest()
