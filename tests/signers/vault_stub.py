"""A stand-in for HashiCorp Vault: the few HTTP calls ``signer: {type: hashicorp_vault}`` makes.

No Vault (or OpenBao) server can be installed on this machine. This one runs in a thread of the
test process and answers, with Vault's response shapes and status codes:

- ``GET /v1/{mount}/data/{path}[?version=N]`` (KV v2 read, ``X-Vault-Token``) → ``{data: {data, metadata}}``;
  403 ``permission denied`` when the token's policy does not cover the path, 404 when there is no secret;
- ``POST /v1/auth/approle/login`` ``{role_id, secret_id}`` → ``{auth: {client_token, policies, …}}``;
  400 ``invalid role or secret ID``;
- ``POST /v1/transit/decrypt/{key}`` ``{ciphertext}`` → ``{data: {plaintext: base64}}``;
- ``POST /v1/auth/token/revoke-self`` → 204;
- every call: 503 ``Vault is sealed`` when sealed; with ``namespace`` set, a request without that
  ``X-Vault-Namespace`` is refused (403).

Policies are sets of exact API paths (``secret/data/anode/paymaster``, ``transit/decrypt/anode``).
Transit ciphertext is opaque random text mapped to its plaintext. It proves aNode's side of the
protocol; that Vault answers so is taken from Vault's API documentation.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


class VaultStub:
    def __init__(self, *, namespace: str | None = None) -> None:
        self.namespace = namespace
        self.sealed = False
        self.kv: dict[str, list[dict[str, Any]]] = {}  # "mount/path" → versions (1-based)
        self.tokens: dict[str, set[str]] = {}  # token → paths its policy allows
        self.approles: dict[tuple[str, str], set[str]] = {}
        self.ciphertexts: dict[str, tuple[str, bytes]] = {}  # ciphertext → (transit key, plaintext)
        self.revoked: set[str] = set()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> VaultStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def put(self, mount: str, path: str, data: dict[str, Any]) -> int:
        versions = self.kv.setdefault(f"{mount}/{path}", [])
        versions.append(data)
        return len(versions)

    def token(self, *paths: str) -> str:
        token = "hvs." + secrets.token_urlsafe(18)
        self.tokens[token] = set(paths)
        return token

    def approle(self, *paths: str) -> tuple[str, str]:
        role_id, secret_id = str(uuid.uuid4()), str(uuid.uuid4())
        self.approles[(role_id, secret_id)] = set(paths)
        return role_id, secret_id

    def encrypt(self, key: str, plaintext: bytes) -> str:
        ciphertext = "vault:v1:" + base64.b64encode(secrets.token_bytes(48)).decode()
        self.ciphertexts[ciphertext] = (key, plaintext)
        return ciphertext


def _handler(vault: VaultStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def _reply(self, status: int, body: dict[str, Any] | None = None) -> None:
            payload = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            if body is not None:
                self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _errors(self, status: int, *errors: str) -> None:
            self._reply(status, {"errors": list(errors)})

        def _allowed(self, path: str) -> bool:
            token = self.headers.get("x-vault-token")
            return token is not None and token not in vault.revoked and path in vault.tokens.get(token, set())

        def _handle(self, method: str) -> None:
            url = urlsplit(self.path)
            vault.requests.append((method, url.path, {k.lower(): v for k, v in self.headers.items()}))
            length = int(self.headers.get("content-length") or 0)
            body = json.loads(self.rfile.read(length)) if length else {}
            if vault.sealed:
                return self._errors(503, "Vault is sealed")
            if vault.namespace is not None and self.headers.get("x-vault-namespace") != vault.namespace:
                return self._errors(403, "permission denied")
            if not url.path.startswith("/v1/"):
                return self._errors(404)
            path = url.path[len("/v1/") :]

            if method == "POST" and path == "auth/approle/login":
                policy = vault.approles.get((body.get("role_id"), body.get("secret_id")))
                if policy is None:
                    return self._errors(400, "invalid role or secret ID")
                token = "hvs." + secrets.token_urlsafe(18)
                vault.tokens[token] = set(policy)
                auth = {"client_token": token, "policies": ["default"], "lease_duration": 3600, "renewable": True}
                return self._reply(200, {"auth": auth, "data": None})
            if method == "POST" and path == "auth/token/revoke-self":
                vault.revoked.add(self.headers.get("x-vault-token", ""))
                return self._reply(204)
            if method == "POST" and "/decrypt/" in path:
                if not self._allowed(path):
                    return self._errors(403, "permission denied")
                key = path.rsplit("/", 1)[1]
                found = vault.ciphertexts.get(body.get("ciphertext", ""))
                if found is None or found[0] != key:
                    return self._errors(400, "invalid ciphertext: unable to decrypt")
                return self._reply(200, {"data": {"plaintext": base64.b64encode(found[1]).decode()}})
            if method == "GET" and "/data/" in path:
                if not self._allowed(path):
                    return self._errors(403, "1 error occurred:\n\t* permission denied\n\n")
                mount, secret = path.split("/data/", 1)
                versions = vault.kv.get(f"{mount}/{secret}")
                if not versions:
                    return self._errors(404)
                number = int(parse_qs(url.query).get("version", [str(len(versions))])[0])
                if not 1 <= number <= len(versions):
                    return self._errors(404)
                metadata = {"created_time": "2026-01-01T00:00:00Z", "deletion_time": "", "destroyed": False}
                data = {"data": versions[number - 1], "metadata": {**metadata, "version": number}}
                return self._reply(200, {"request_id": str(uuid.uuid4()), "lease_id": "", "data": data})
            return self._errors(404)

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

    return Handler
