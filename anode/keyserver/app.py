"""The key server's HTTP API. Every route but ``/upcheck`` needs ``Authorization: Bearer <token>``.

    POST /sign          {algorithm: "secp256k1-ecdsa-digest", data: 0x<32 bytes>, key_id}
                        → {signature: 0x<r ‖ s ‖ v>, address, key_id}; the digest is signed as given
    GET|POST /health    → {status: "ok", keys: [{key_id, address}]} (the keys this caller may use)
    GET /keys/{key_id}  → {key_id, address}
    GET /api/v1/eth1/publicKeys           Web3Signer: the caller's keys as 64-byte public keys
    POST /api/v1/eth1/sign/{public key}   Web3Signer: {"data": 0x…} → 0x<r ‖ s ‖ v> (text) over keccak256(data)
    GET /upcheck        → OK (no token; for load balancers)

Refusals are JSON ``{error: {code, message}}``: 400 ``bad_request``/``unsupported_algorithm``,
401 ``unauthorized`` (no or unknown token), 403 ``forbidden`` (the token may not use that key),
404 ``unknown_key``, 413 ``too_large``, 503 ``signer_unavailable``/``audit_unavailable``. A
signature is returned only after its audit record is written; if the log cannot be written the
signature is withheld.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from eth_utils.crypto import keccak
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from anode.errors import AnodeError
from anode.keyserver.store import AuditLog, Key, KeyRing, Tokens
from anode.signers.base import SignedDigest

log = logging.getLogger("anode.keyserver")

ALGORITHM = "secp256k1-ecdsa-digest"
WEB3SIGNER_ALGORITHM = "eth1-keccak256"
MAX_BODY = 16_384
_DIGEST = re.compile(r"^0x[0-9a-fA-F]{64}$")
_HEX = re.compile(r"^0x(?:[0-9a-fA-F]{2})*$")


class Refusal(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Keyserver:
    keys: KeyRing
    tokens: Tokens
    audit: AuditLog


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def _server(request: Request) -> Keyserver:
    server: Keyserver = request.app.state.keyserver
    return server


def _caller(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    caller = _server(request).tokens.caller(token.strip() if scheme.lower() == "bearer" else None)
    if caller is None:
        raise Refusal(401, "unauthorized", "a valid bearer token is required (Authorization: Bearer …)")
    return caller


def _allowed(key: Key | None, caller: str, name: str) -> Key:
    if key is None:
        raise Refusal(404, "unknown_key", f"no key {name!r}")
    if caller not in key.allowed:
        raise Refusal(403, "forbidden", f"this token may not use key {key.id!r}")
    return key


async def _body(request: Request) -> dict[str, Any]:
    declared = request.headers.get("content-length", "0")
    if not declared.isdigit():
        raise Refusal(400, "bad_request", "content-length must be a number")
    if int(declared) > MAX_BODY:
        raise Refusal(413, "too_large", f"the body is over {MAX_BODY} bytes")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise Refusal(413, "too_large", f"the body is over {MAX_BODY} bytes")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise Refusal(400, "bad_request", "the body must be a JSON object")
    return body


async def _sign(request: Request, key: Key, caller: str, digest: bytes, algorithm: str) -> SignedDigest:
    """Sign with ``key``, write the audit record, and only then hand the signature back."""
    try:
        signed = await key.signer.unsafe_sign_hash(digest)
    except AnodeError as exc:
        log.error("key %r: signing failed: %s", key.id, exc.message)
        raise Refusal(503, "signer_unavailable", f"key {key.id!r}: its signer failed ({exc.code})") from None
    except Exception as exc:
        log.error("key %r: signing failed (%s)", key.id, type(exc).__name__)
        raise Refusal(503, "signer_unavailable", f"key {key.id!r}: its signer failed") from None
    try:
        _server(request).audit.append(
            caller=caller,
            key_id=key.id,
            address=key.address,
            algorithm=algorithm,
            digest="0x" + digest.hex(),
            client=request.client.host if request.client else None,
        )
    except OSError as exc:
        log.error("audit log: cannot write (%s); signature withheld", exc.strerror)
        raise Refusal(503, "audit_unavailable", "the audit log cannot be written; nothing was signed") from None
    return signed


async def sign(request: Request) -> Response:
    caller = _caller(request)
    body = await _body(request)
    if body.get("algorithm") != ALGORITHM:
        raise Refusal(400, "unsupported_algorithm", f"algorithm must be {ALGORITHM!r}")
    data = body.get("data")
    if not isinstance(data, str) or not _DIGEST.match(data):
        raise Refusal(400, "bad_request", "data must be a 32-byte digest as 0x-prefixed hex")
    key_id = body.get("key_id")
    if not isinstance(key_id, str):
        raise Refusal(400, "bad_request", "key_id must be a string")
    key = _allowed(_server(request).keys.get(key_id), caller, key_id)
    signed = await _sign(request, key, caller, bytes.fromhex(data[2:]), ALGORITHM)
    return _json({"signature": "0x" + signed.signature.hex(), "address": key.address, "key_id": key.id})


async def health(request: Request) -> Response:
    caller = _caller(request)
    keys = [{"key_id": key.id, "address": key.address} for key in _server(request).keys.usable_by(caller)]
    return _json({"status": "ok", "keys": keys})


async def key_info(request: Request) -> Response:
    caller = _caller(request)
    key_id = request.path_params["key_id"]
    key = _allowed(_server(request).keys.get(key_id), caller, key_id)
    return _json({"key_id": key.id, "address": key.address})


async def eth1_public_keys(request: Request) -> Response:
    caller = _caller(request)
    return _json(["0x" + key.public_key.hex() for key in _server(request).keys.usable_by(caller)])


async def eth1_sign(request: Request) -> Response:
    caller = _caller(request)
    identifier = request.path_params["identifier"]
    key = _allowed(_server(request).keys.by_public_key(identifier), caller, identifier)
    data = (await _body(request)).get("data")
    if not isinstance(data, str) or not _HEX.match(data):
        raise Refusal(400, "bad_request", "data must be 0x-prefixed hex")
    signed = await _sign(request, key, caller, keccak(bytes.fromhex(data[2:])), WEB3SIGNER_ALGORITHM)
    return PlainTextResponse("0x" + signed.signature.hex())


async def upcheck(request: Request) -> Response:
    return PlainTextResponse("OK")


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refusal)
    headers = {"www-authenticate": 'Bearer realm="anode-keyserver"'} if exc.status == 401 else None
    return _json({"error": {"code": exc.code, "message": exc.message}}, exc.status, headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = "not_found" if exc.status_code == 404 else "bad_request"
    return _json({"error": {"code": code, "message": str(exc.detail)}}, exc.status_code)


def create_app(server: Keyserver) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await server.keys.probe()
        try:
            yield
        finally:
            await server.keys.aclose()
            server.audit.close()

    routes = [
        Route("/sign", sign, methods=["POST"]),
        Route("/health", health, methods=["GET", "POST"]),
        Route("/keys/{key_id}", key_info, methods=["GET"]),
        Route("/api/v1/eth1/publicKeys", eth1_public_keys, methods=["GET"]),
        Route("/api/v1/eth1/sign/{identifier}", eth1_sign, methods=["POST"]),
        Route("/upcheck", upcheck, methods=["GET"]),
    ]
    handlers = {Refusal: _refused, HTTPException: _http_error}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.state.keyserver = server
    return app
