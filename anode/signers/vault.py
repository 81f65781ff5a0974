"""``signer: {type: hashicorp_vault}``: a key kept in HashiCorp Vault (or OpenBao), read at start-up.

Vault's transit engine has no secp256k1 key type, so Vault cannot sign for Ethereum itself: the
key is kept in a KV v2 secret (``GET /v1/{mount}/data/{path}``, field ``field``), optionally
stored transit-encrypted (the field holds ``vault:v1:…`` and ``POST
/v1/{transit_mount}/decrypt/{transit_key}`` turns it back), read once at start-up, and signs in
process like ``local``. Vault remains the one place the key is kept, access-controlled and audited
by Vault; aNode holds it only in memory.

Authentication: a token (``token``, or the ``VAULT_TOKEN`` environment variable), or AppRole
(``role_id`` + ``secret_id`` → ``POST /v1/auth/{approle_mount}/login``; that short-lived token is
revoked once the key is read). ``namespace`` sets ``X-Vault-Namespace`` (Vault Enterprise / HCP).
The key may be stored as 64 hex digits (``0x`` optional) or, after transit, as 32 raw bytes.
Every failure is a :class:`ConfigError` that says what to check and never shows a token or key:
the status, the call that failed and, of Vault's own ``errors``, only those on a short list of
Vault's fixed messages (``permission denied``, ``invalid role or secret ID``); any other text is
left out, since a proxy in front of Vault may echo a token or a key there.
"""

from __future__ import annotations

import base64
import contextlib
import os
import ssl
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import httpx
import orjson
from pydantic import Field, SecretStr, field_validator, model_validator

from anode.errors import ConfigError
from anode.redact import CredentialUrl, quiet_loggers, redacted
from anode.signers.local import LocalKeySigner
from anode.signers.registry import SignerSettingsBase


class Settings(SignerSettingsBase):
    address: CredentialUrl  # https://vault.example:8200
    auth: Literal["token", "approle"] = "token"
    token: SecretStr | None = None
    role_id: str | None = None
    secret_id: SecretStr | None = None
    approle_mount: str = "approle"
    mount: str = "secret"
    path: str
    field: str = "private_key"
    #: pin a KV v2 version (default: the current one)
    version: int | None = Field(default=None, ge=1)
    #: the stored value is transit ciphertext (``vault:v1:…``) under this key
    transit_key: str | None = None
    transit_mount: str = "transit"
    namespace: str | None = None
    timeout_seconds: float = Field(default=5.0, gt=0)
    verify_tls: bool = True
    ca_file: Path | None = None

    @field_validator("address")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("mount", "path", "approle_mount", "transit_mount")
    @classmethod
    def _no_slashes_at_ends(cls, value: str) -> str:
        return value.strip("/")

    @model_validator(mode="after")
    def _credentials(self) -> Settings:
        if self.auth == "approle" and (self.role_id is None or self.secret_id is None):
            raise ValueError("auth: approle needs role_id and secret_id")
        return self


#: Vault's own messages that an error may repeat (lower case); any other ``errors`` text is dropped
VAULT_MESSAGES = frozenset(
    {
        "permission denied",
        "invalid role or secret id",
        "invalid role id",
        "invalid secret id",
        "missing client token",
        "invalid token",
        "vault is sealed",
        "unsupported path",
        "no handler for route",
        "invalid ciphertext: unable to decrypt",
        "encryption key not found",
    }
)


def _errors(response: httpx.Response) -> str:
    """Those of Vault's ``errors`` (``1 error occurred: * permission denied``) on :data:`VAULT_MESSAGES`."""
    try:
        errors = orjson.loads(response.content).get("errors") or []
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    if not isinstance(errors, list):
        return ""
    known: list[str] = []
    for error in errors:
        # a multi-error is "N errors occurred:\n\t* first\n\t* second"
        for item in str(error).split("\n"):
            text = item.strip().removeprefix("* ").strip()
            if text.lower() in VAULT_MESSAGES and text not in known:
                known.append(text)
    return "; ".join(known)


class VaultKeySigner(LocalKeySigner):
    """A key read from Vault at start-up, held in process memory like ``local``."""

    backend = "hashicorp_vault"

    def __init__(self, private_key: bytes, where: str = "") -> None:
        super().__init__(private_key)
        self._where = where

    def __repr__(self) -> str:
        return f"{type(self).__name__}(secret={self._where}, address={self.address})"


class _Vault:
    """The few Vault HTTP calls this backend makes, with errors that say what to check."""

    def __init__(self, settings: Settings) -> None:
        verify: ssl.SSLContext | bool = settings.verify_tls
        if settings.ca_file is not None:
            try:
                verify = ssl.create_default_context(cafile=str(settings.ca_file))
            except (OSError, ssl.SSLError):
                raise ConfigError(f"signer.ca_file: cannot read a CA bundle from {settings.ca_file}") from None
        headers = {"x-vault-request": "true"}
        if settings.namespace:
            headers["x-vault-namespace"] = settings.namespace
        self.where = redacted(settings.address)
        quiet_loggers()  # httpx logs every URL at INFO
        self._timeout = settings.timeout_seconds
        self._http = httpx.Client(
            base_url=settings.address, headers=headers, timeout=settings.timeout_seconds, verify=verify
        )
        self.token: str | None = None

    def call(self, method: str, path: str, what: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {"x-vault-token": self.token} if self.token else {}
        try:
            response = self._http.request(method, f"/v1/{path}", json=body, headers=headers)
        except httpx.TimeoutException:
            raise ConfigError(f"signer.address: vault at {self.where} did not answer within {self._timeout}s") from None
        except httpx.HTTPError as exc:
            raise ConfigError(f"signer.address: cannot reach vault at {self.where} ({type(exc).__name__})") from None
        status, detail = response.status_code, _errors(response)
        suffix = f": {detail}" if detail else ""
        if status in (401, 403):
            raise ConfigError(f"signer: vault refused {what} ({status}{suffix}): check the token/policy for {path}")
        if status == 404:
            raise ConfigError(f"signer: vault has nothing at {path} ({what}, 404): check mount and path")
        if status == 503:
            raise ConfigError(f"signer: vault at {self.where} is sealed or unavailable (503{suffix})")
        if status >= 400:
            raise ConfigError(f"signer: vault answered {status} to {what}{suffix or ' (see its audit log)'}")
        if status == 204 or not response.content:
            return {}
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise ConfigError(f"signer.address: {self.where} did not answer JSON to {what}: is it vault?") from None
        if not isinstance(body, dict):
            raise ConfigError(f"signer: vault answered {what} with no object")
        return body

    def close(self) -> None:
        self._http.close()


def _key_bytes(value: bytes, where: str) -> bytes:
    """32 raw bytes, or 64 hex digits with optional ``0x`` (text, possibly with a trailing newline)."""
    if len(value) == 32:
        return value
    text = value.decode("ascii", "replace").strip()
    text = text[2:] if text.startswith(("0x", "0X")) else text
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"signer: the value at {where} is not a private key (64 hex digits or 32 bytes)")
    return raw


def read_private_key(settings: Settings) -> bytes:
    """Log in if needed, read the KV v2 secret, decrypt it if transit-encrypted; the key's 32 bytes."""
    vault = _Vault(settings)
    where = f"{settings.mount}/data/{settings.path}"
    logged_in = False
    try:
        if settings.auth == "approle":
            assert settings.secret_id is not None
            login = vault.call(
                "POST",
                f"auth/{settings.approle_mount}/login",
                "the AppRole login (check role_id and secret_id)",
                {"role_id": settings.role_id, "secret_id": settings.secret_id.get_secret_value()},
            )
            token = (login.get("auth") or {}).get("client_token")
            if not isinstance(token, str):
                raise ConfigError("signer: vault's AppRole login returned no client token")
            vault.token, logged_in = token, True
        elif settings.token is not None:
            vault.token = settings.token.get_secret_value()
        elif os.environ.get("VAULT_TOKEN"):
            vault.token = os.environ["VAULT_TOKEN"]
        else:
            raise ConfigError("signer.token: set token (or VAULT_TOKEN), or use auth: approle")

        query = f"?version={settings.version}" if settings.version is not None else ""
        secret = vault.call("GET", f"{quote(where)}{query}", f"reading {where}")
        fields = ((secret.get("data") or {}).get("data")) or {}
        if not isinstance(fields, dict):
            raise ConfigError(f"signer: {where} is not a KV v2 secret (check mount: is it KV version 2?)")
        value = fields.get(settings.field)
        if not isinstance(value, str):
            names = ", ".join(sorted(fields)) or "none"
            raise ConfigError(f"signer.field: the secret at {where} has no field {settings.field!r} (fields: {names})")

        if settings.transit_key is None:
            return _key_bytes(value.encode(), where)
        if not value.startswith("vault:"):
            raise ConfigError(f"signer.transit_key: the value at {where} is not transit ciphertext (vault:v…)")
        decrypt = f"{settings.transit_mount}/decrypt/{quote(settings.transit_key)}"
        plain = vault.call(
            "POST", decrypt, f"decrypting with transit key {settings.transit_key!r}", {"ciphertext": value}
        )
        try:
            decoded = base64.b64decode((plain.get("data") or {})["plaintext"], validate=True)
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"signer: vault's transit decrypt of {where} returned no plaintext") from None
        return _key_bytes(decoded, where)
    finally:
        if logged_in:
            with contextlib.suppress(ConfigError):  # best effort: the login token is not needed any more
                vault.call("POST", "auth/token/revoke-self", "revoking the login token")
        vault.close()


def build(settings: Settings) -> VaultKeySigner:
    raw = read_private_key(settings)
    return VaultKeySigner(raw, where=f"{settings.mount}/{settings.path}")
