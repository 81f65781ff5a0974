"""``signer: {type: remote}``: the key stays on a key server; aNode asks it for each signature over HTTP.

Two protocols (``mode``):

- ``anode`` (default) — aNode's own key server (``anode keyserver serve``, :mod:`anode.keyserver`)
  and the Cloudflare Worker in ``deploy/cloudflare/``. With ``Authorization: Bearer <token>``:
  ``GET {url}/keys/{key_id}`` → ``{key_id, address}`` (at start-up);
  ``POST {url}/sign`` ``{algorithm: "secp256k1-ecdsa-digest", data: 0x<32-byte digest>, key_id}``
  → ``{signature: 0x<r ‖ s ‖ v>, address, key_id}``, the digest signed exactly as given (no hash,
  no prefix: aNode sends the EIP-191 digest the paymaster contract recovers from);
  ``POST {url}/health`` → ``{status, keys: [{key_id, address}]}``.
- ``web3signer`` — Consensys Web3Signer's eth1 API: ``GET /api/v1/eth1/publicKeys`` (uncompressed
  public keys), ``POST /api/v1/eth1/sign/{public key}`` ``{"data": 0x…}`` → ``0x<r ‖ s ‖ v>`` as
  text. Web3Signer signs ``keccak256(data)``, never a bare digest, so this mode cannot implement
  ``unsafe_sign_hash``; it implements :meth:`RemoteSigner.sign_eip191` instead, sending
  ``data = "\\x19Ethereum Signed Message:\\n32" ‖ hash`` so that Web3Signer's keccak256 of it is
  exactly ``toEthSignedMessageHash(hash)``, the digest the paymaster contract recovers from.

The address is learned once at start-up (and may be pinned with ``address``); every signature
that comes back is checked to recover to it: a key server that signs with another key, or hashes
the digest once more, is an error (``ANODE_SIGNER_BAD_SIGNATURE``), never a signature handed on.
A signature with high ``s`` is brought to low ``s``. Requests share one keep-alive connection
pool; a request that fails on a connection the server dropped is sent once more (signing the same
digest twice is harmless). Errors name the status, the protocol's error code (``unknown_key``)
and what to check; never the token, never the server's own error text (a server or a proxy may
echo a secret there: the key server's log has the detail), and show the URL as
``scheme://host:port`` only.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx
import orjson
from eth_utils.address import to_checksum_address
from pydantic import Field, SecretStr, field_validator, model_validator

from anode.errors import ConfigError, SignerUnavailable
from anode.outbound import HttpClient, OutboundError, OutboundTimeout, Reply
from anode.redact import CredentialUrl, known_code, quiet_loggers, redacted
from anode.signers.base import EIP191_PREFIX, SignedDigest, eip191_digest
from anode.signers.ecdsa import BAD_SIGNATURE, address_of_point, checked_signature, uncompressed_point
from anode.signers.registry import SignerSettingsBase

ALGORITHM = "secp256k1-ecdsa-digest"
#: the error codes of the ``anode`` protocol (``{error: {code, message}}``), the only part of an
#: error answer aNode repeats
PROTOCOL_CODES = frozenset(
    {
        "bad_request",
        "unsupported_algorithm",
        "unauthorized",
        "forbidden",
        "unknown_key",
        "not_found",
        "too_large",
        "signer_unavailable",
        "audit_unavailable",
    }
)
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_SIGNATURE = re.compile(r"^(0x)?[0-9a-fA-F]{130}$")
_JSON = {"content-type": "application/json"}


class Settings(SignerSettingsBase):
    url: CredentialUrl
    mode: Literal["anode", "web3signer"] = "anode"
    #: the bearer token (required in ``anode`` mode; Web3Signer itself takes none, a proxy in front may)
    token: SecretStr | None = None
    #: the key's name on the key server; for ``web3signer`` a public key or an address (optional
    #: when the server holds one key)
    key_id: str | None = None
    #: the address the key must have; start-up stops if the server reports another
    address: str | None = None
    timeout_seconds: float = Field(default=5.0, gt=0)
    verify_tls: bool = True
    #: a CA bundle (PEM) for a key server with a private certificate authority
    ca_file: Path | None = None
    max_connections: int = Field(default=32, ge=1, le=1024)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("address")
    @classmethod
    def _checksummed(cls, value: str | None) -> str | None:
        if value is not None and not _ADDRESS.match(value):
            raise ValueError("must be a 0x-prefixed 20-byte address")
        return None if value is None else to_checksum_address(value)

    @model_validator(mode="after")
    def _anode_mode_needs(self) -> Settings:
        if self.mode == "anode" and (self.token is None or self.key_id is None):
            raise ValueError("the anode key-server protocol needs token and key_id")
        if self.ca_file is not None and not self.verify_tls:
            raise ValueError("ca_file is set but verify_tls is false")
        return self


def _verify(settings: Settings) -> ssl.SSLContext | bool:
    if settings.ca_file is None:
        return settings.verify_tls
    try:
        return ssl.create_default_context(cafile=str(settings.ca_file))
    except (OSError, ssl.SSLError):
        raise ConfigError(f"signer.ca_file: cannot read a CA bundle from {settings.ca_file}") from None


def _headers(settings: Settings) -> dict[str, str]:
    headers = {"user-agent": "anode-remote-signer"}
    if settings.token is not None:
        headers["authorization"] = f"Bearer {settings.token.get_secret_value()}"
    return headers


def _client_options(settings: Settings) -> dict[str, Any]:
    """For the synchronous ``httpx.Client`` of start-up."""
    return {
        "base_url": settings.url,
        "headers": _headers(settings),
        "timeout": settings.timeout_seconds,
        "verify": _verify(settings),
    }


def _server_code(content: bytes) -> str | None:
    """The protocol's error code in an error answer (``{error: {code}}``); never its message."""
    try:
        error = orjson.loads(content)["error"]
        return known_code(error["code"], PROTOCOL_CODES) if isinstance(error, dict) else None
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


def _refusal(status: int, where: str, key_id: str | None, code: str | None) -> str:
    """What a refusal means and what to check, by status (the server's own text is never repeated)."""
    if status == 401:
        return f"{where} refused the token (401): check signer.token"
    if status == 403:
        return f"{where} does not allow this token to use key {key_id!r} (403): check the key's allowed callers"
    if status == 404:
        return f"{where} has no key {key_id!r} (404): check signer.key_id"
    return f"{where} answered {status}" + (f" ({code})" if code else "") + ": the key server's log says why"


def public_key_address(public_key: str) -> str:
    """Address of a hex public key as Web3Signer lists it: 64 bytes ``x ‖ y`` (or 65 with ``04``, or 33)."""
    raw = bytes.fromhex(public_key.removeprefix("0x"))
    if len(raw) == 64:
        raw = b"\x04" + raw
    return address_of_point(uncompressed_point(raw))  # DerError is a ValueError


def _bare(key: str) -> str:
    """A public key or address as lower-case hex without ``0x`` (and without the ``04`` point prefix)."""
    body = key.lower().removeprefix("0x")
    return body[2:] if len(body) == 130 and body.startswith("04") else body


def _choose_web3signer_key(keys: list[str], wanted: str | None, where: str) -> tuple[str, str]:
    """``(identifier, address)`` of the listed public key that ``wanted`` names."""
    listed: list[tuple[str, str]] = []
    for key in keys:
        try:
            listed.append((key, public_key_address(key)))
        except (ValueError, TypeError):
            raise ConfigError(f"signer: {where} listed {key!r}, which is not a secp256k1 public key") from None
    if wanted is None:
        if len(listed) != 1:
            raise ConfigError(f"signer.key_id: {where} holds {len(listed)} keys; name one (public key or address)")
        return listed[0]
    needle = _bare(wanted)
    for identifier, address in listed:
        if needle in (_bare(identifier), address.lower()[2:]):
            return identifier, address
    raise ConfigError(f"signer.key_id: {where} holds no key {wanted!r} (it lists {len(listed)})")


def _listed_address(content: bytes, key_id: str | None) -> str | None:
    """The address ``POST /health`` lists for ``key_id`` (``{status, keys: [{key_id, address}]}``)."""
    try:
        keys = orjson.loads(content)["keys"]
        for key in keys:
            if key["key_id"] == key_id and isinstance(key["address"], str) and _ADDRESS.match(key["address"]):
                return str(key["address"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return None


class RemoteSigner:
    """One key on a key server. Holds an HTTP connection pool and the key's address, nothing secret."""

    def __init__(
        self,
        settings: Settings,
        address: str,
        *,
        identifier: str | None = None,
        backend: str = "remote",
    ) -> None:
        self._settings = settings
        self._address = to_checksum_address(address)
        self._key_id = settings.key_id
        self._identifier = identifier  # web3signer: the public key as the server lists it
        self.backend = backend
        self.display_url = redacted(settings.url)
        self._http = HttpClient(
            settings.url, timeout=settings.timeout_seconds, max_connections=settings.max_connections,
            headers=_headers(settings), tls=_verify(settings), retry_disconnected=True,
        )  # fmt: skip

    @classmethod
    def connect(cls, settings: Settings, *, backend: str = "remote") -> RemoteSigner:
        """Learn the key's address from the key server; a refusal or a mismatch is a :class:`ConfigError`."""
        where = f"the key server at {redacted(settings.url)}"
        identifier: str | None = None
        quiet_loggers()  # httpx logs every URL at INFO, and the path may name a tenant
        try:
            with httpx.Client(**_client_options(settings)) as http:
                if settings.mode == "anode":
                    # the protocol's own call: the keys this token may use, with their addresses
                    response = http.post("/health")
                    if response.status_code == 200 and _listed_address(response.content, settings.key_id) is None:
                        # not listed: aNode's key server says why (404 no such key, 403 not yours)
                        assert settings.key_id is not None
                        detail = http.get(f"/keys/{quote(settings.key_id, safe='')}")
                        if detail.status_code in (403, 404):
                            response = detail
                else:
                    response = http.get("/api/v1/eth1/publicKeys")
        except httpx.TimeoutException:
            raise ConfigError(f"signer.url: {where} did not answer within {settings.timeout_seconds}s") from None
        except httpx.HTTPError as exc:
            raise ConfigError(f"signer.url: cannot reach {where} ({type(exc).__name__})") from None
        if response.status_code != 200:
            message = _refusal(response.status_code, where, settings.key_id, _server_code(response.content))
            raise ConfigError(f"signer: {message}")
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise ConfigError(f"signer.url: {where} did not answer JSON: is it a key server?") from None
        if settings.mode == "anode":
            address = _listed_address(response.content, settings.key_id)
            if address is None:
                raise ConfigError(
                    f"signer.key_id: {where} does not list key {settings.key_id!r} in POST /health for this "
                    "token: check signer.key_id and the key's allowed callers"
                )
        else:
            if not isinstance(body, list) or not all(isinstance(key, str) for key in body):
                raise ConfigError(f"signer.url: {where} did not list public keys: is it Web3Signer?")
            identifier, address = _choose_web3signer_key(body, settings.key_id, where)
        address = to_checksum_address(address)
        if settings.address is not None and settings.address != address:
            raise ConfigError(f"signer.address: {where} reports key address {address}, not {settings.address}")
        return cls(settings, address, identifier=identifier, backend=backend)

    @property
    def address(self) -> str:
        return self._address

    async def unsafe_sign_hash(self, digest: bytes) -> SignedDigest:
        if len(digest) != 32:
            raise ValueError("unsafe_sign_hash takes a 32-byte digest")
        if self._settings.mode == "web3signer":
            raise SignerUnavailable(
                "a Web3Signer key cannot sign a bare digest (Web3Signer signs keccak256 of what it is sent); "
                "sign through sign_eip191",
                code="ANODE_SIGNER_DIGEST_UNSUPPORTED",
            )
        body = {"algorithm": ALGORITHM, "data": "0x" + digest.hex(), "key_id": self._key_id}
        response = await self._request("POST", "/sign", body)
        try:
            signature = orjson.loads(response.body)["signature"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise SignerUnavailable(f"{self._where()} answered no signature", code=BAD_SIGNATURE) from None
        return self._checked(digest, signature)

    async def sign_eip191(self, message_hash: bytes) -> SignedDigest:
        """Sign ``toEthSignedMessageHash(message_hash)`` (what paymasters recover from), in either mode."""
        if len(message_hash) != 32:
            raise ValueError("sign_eip191 takes a 32-byte hash")
        if self._settings.mode == "anode":
            return await self.unsafe_sign_hash(eip191_digest(message_hash))
        data = "0x" + (EIP191_PREFIX + message_hash).hex()
        response = await self._request("POST", f"/api/v1/eth1/sign/{self._identifier}", {"data": data})
        text = response.text.strip().strip('"')
        return self._checked(eip191_digest(message_hash), text)

    async def health(self) -> None:
        """Raise :class:`SignerUnavailable` unless the key server is up and still serves this key."""
        if self._settings.mode == "web3signer":
            await self._request("GET", "/upcheck", None)
            return
        response = await self._request("POST", "/health", None)
        try:
            body = orjson.loads(response.body)
            served = {(key["key_id"], to_checksum_address(key["address"])) for key in body["keys"]}
            ok = body["status"] == "ok"
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise SignerUnavailable(f"{self._where()} answered /health with no key list") from None
        if not ok or (self._key_id, self._address) not in served:
            raise SignerUnavailable(f"{self._where()} does not report key {self._key_id!r} ({self._address}) healthy")

    async def aclose(self) -> None:
        await self._http.aclose()

    def _where(self) -> str:
        return f"remote signer: the key server at {self.display_url}"

    async def _request(self, method: str, path: str, body: dict[str, Any] | None) -> Reply:
        """One call; a connection the server dropped unanswered is tried once more (signing is
        safe to repeat: the same digest signed twice is the same authorisation)."""
        try:
            if body is None:
                response = await self._http.request(method, path)
            else:
                response = await self._http.request(method, path, body=orjson.dumps(body), headers=_JSON)
        except OutboundTimeout:
            raise SignerUnavailable(
                f"{self._where()} did not answer within {self._settings.timeout_seconds}s"
            ) from None
        except OutboundError as exc:
            raise SignerUnavailable(f"{self._where()} is unreachable ({exc.reason})") from None
        if response.status != 200:
            message = _refusal(response.status, self._where(), self._key_id, _server_code(response.body))
            raise SignerUnavailable(message)
        return response

    def _checked(self, digest: bytes, signature: object) -> SignedDigest:
        """The returned ``r ‖ s ‖ v`` as a canonical signature, if it recovers to this key's address."""
        if not isinstance(signature, str) or not _SIGNATURE.match(signature):
            raise SignerUnavailable(f"{self._where()} answered a malformed signature", code=BAD_SIGNATURE)
        return checked_signature(digest, bytes.fromhex(signature.removeprefix("0x")), self._address, self._where())

    def __repr__(self) -> str:
        key = f"key_id={self._key_id}, " if self._key_id else ""
        return f"{type(self).__name__}(url={self.display_url}, {key}address={self._address})"


def build(settings: Settings) -> RemoteSigner:
    return RemoteSigner.connect(settings)
