"""No secret a peer echoes in an error answer reaches aNode's caller or its log.

The signing backends that talk to a server (the ``remote`` key server in both protocols, Vault,
AWS KMS) are driven here against a server that fails *after* the request was sent: it answers
each call with an error whose body carries secrets (the bearer token, the private key, an API
key, the AWS credentials, Vault's token and AppRole secret), as a buggy key server, a proxy in
front of it or a hostile one would. Every error raised (``str``, ``repr``, ``data``, causes), the
signer's and the manager's ``repr``, the manager's health snapshot, and every log line captured at
DEBUG (the manager logs a backend's failure there before failing over) are searched for them.

The server is a plain ``http.server`` in a thread of this process, so that the synchronous
start-up calls (httpx, boto3) and the asynchronous signing calls (aiohttp) reach it alike. The
AWS answers follow the JSON protocol's error shape (``{"__type", "message"}``) that botocore
parses; that AWS itself answers so is taken from botocore, not from AWS.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
from coincurve import PrivateKey

from anode.errors import ConfigError, SignerUnavailable
from anode.signers.aws_kms import AwsKmsSigner, kms_client
from anode.signers.aws_kms import Settings as KmsSettings
from anode.signers.base import Signer
from anode.signers.circuit import CircuitBreaker
from anode.signers.ecdsa import address_of_point
from anode.signers.local import LocalKeySigner
from anode.signers.manager import ManagedSigner
from anode.signers.manager_settings import BackendEntry, ManagerSettings, RetrySettings
from anode.signers.registry import build_signer, signer_settings
from anode.signers.selection import Backend

KEY = "0x" + "5e" * 31 + "01"
POINT = PrivateKey(bytes.fromhex(KEY[2:])).public_key.format(compressed=False)
ADDRESS = address_of_point(POINT)
TOKEN = "leak-test-bearer-token-5f3a9c"
API_KEY = "sk_live_leak_test_api_key_77d1"
PATH_SECRET = "tenant-secret-path-91"
VAULT_TOKEN = "hvs.leakTestVaultToken0123456789"
SECRET_ID = "approle-secret-id-leak-4e2f"
ACCESS_KEY_ID = "AKIALEAKTEST00000001"
SECRET_ACCESS_KEY = "leakTestSecretAccessKey/0123456789+abcdefXYZ"
SESSION_TOKEN = "leakTestSessionToken//AQoDYXdzEJr+session="
DIGEST = bytes(range(32))

#: what every error answer says: each secret the server could hold or have been sent
ECHO = f"auth {TOKEN} refused; key {KEY} / {KEY[2:]}; upstream api key {API_KEY}; vault {VAULT_TOKEN} {SECRET_ID}"
ECHO += f"; aws {SECRET_ACCESS_KEY} {SESSION_TOKEN}"
SECRETS = [TOKEN, KEY[2:], API_KEY, PATH_SECRET, VAULT_TOKEN, SECRET_ID, SECRET_ACCESS_KEY, SESSION_TOKEN]

Answer = tuple[int, str, bytes]


class LeakyServer:
    """Answers ``routes[(method, path)]``, and every other request with ``leak``."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Answer] = {}
        self.leak: Answer = (500, "application/json", b"{}")
        self.requests: list[tuple[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                path = self.path.split("?")[0]
                server.requests.append((self.command, path))
                status, content_type, body = server.routes.get((self.command, path), server.leak)
                self.send_response(status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = _answer

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"

    def route(self, method: str, path: str, body: Any, status: int = 200) -> None:
        self.routes[(method, path)] = (status, "application/json", orjson.dumps(body))

    def __enter__(self) -> LeakyServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.shutdown()
        self._http.server_close()


@pytest.fixture
def server() -> Iterator[LeakyServer]:
    with LeakyServer() as leaky:
        yield leaky


@pytest.fixture
def debug_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="anode")
    return caplog


def error_texts(error: BaseException) -> list[str]:
    """What a caller can see of an error: ``str``, ``repr``, message and data, of it and of the
    chain a traceback prints (``raise … from None`` hides the error it was raised in)."""
    texts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current), str(getattr(current, "message", ""))]
        texts.append(json.dumps(getattr(current, "data", None), default=str))
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return texts


def assert_clean(texts: list[str], secrets: list[str] = SECRETS) -> None:
    assert texts
    for text in texts:
        for secret in secrets:
            assert secret not in text, f"{secret[:10]}… leaked into: {text[:300]}"


def log_texts(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [caplog.text, *(record.getMessage() for record in caplog.records)]


def json_error(status: int, code: str = "signer_unavailable") -> Answer:
    return status, "application/json", orjson.dumps({"error": {"code": code, "message": ECHO}})


async def manager_over(primary: Signer, backup: Signer | None = None) -> ManagedSigner:
    """A signer manager over built backends (a backup of the same key takes over when the primary fails)."""
    backends = [Backend("primary:" + primary.backend, "primary", primary, None, CircuitBreaker(5, 30))]
    if backup is not None:
        backends.append(Backend("backup1:local", "backup", backup, None, CircuitBreaker(5, 30)))
    settings = ManagerSettings(
        primary=BackendEntry(signer=signer_settings({"type": "local", "private_key": KEY})),
        retry=RetrySettings(attempts=1, backoff_ms=0),
        health_interval_s=0,
    )
    return ManagedSigner(backends, settings)


async def failures_through_a_manager(signer: Signer, sign: str, caplog: pytest.LogCaptureFixture) -> list[str]:
    """Fail ``signer`` directly, behind a manager alone, and behind one with a backup; the texts seen."""
    texts: list[str] = [repr(signer), str(signer)]
    with pytest.raises(SignerUnavailable) as direct:
        await getattr(signer, sign)(DIGEST)
    texts += error_texts(direct.value)

    alone = await manager_over(signer)
    with pytest.raises(SignerUnavailable) as managed:
        await getattr(alone, sign)(DIGEST)
    texts += error_texts(managed.value)
    await alone.refresh()  # the health probe fails the same way
    texts += [repr(alone), json.dumps(alone.health())]
    assert alone.health()["backends"][0]["healthy"] is False

    backed = await manager_over(signer, LocalKeySigner.from_hex(KEY))
    signed = await getattr(backed, sign)(DIGEST)
    assert signed.backend == "backup1:local"
    assert "; trying backup1:local" in caplog.text, "the primary's failure was not logged"
    return texts + log_texts(caplog)


# -- the remote key server ------------------------------------------------------------------------


def remote_config(server: LeakyServer, **extra: Any) -> dict[str, Any]:
    url = f"{server.url}/{PATH_SECRET}"
    return {"type": "remote", "url": url, "token": TOKEN, "key_id": "pm", "timeout_seconds": 5, **extra}


def serves_the_key(server: LeakyServer) -> None:
    server.route("POST", f"/{PATH_SECRET}/health", {"status": "ok", "keys": [{"key_id": "pm", "address": ADDRESS}]})


@pytest.mark.parametrize(
    "answer",
    [
        json_error(500),
        json_error(503, "audit_unavailable"),
        json_error(400, "bad_request"),
        json_error(401, "unauthorized"),
        json_error(403, "forbidden"),
        json_error(404, "unknown_key"),
        json_error(500, code=TOKEN),  # a "code" that is not one
        (502, "text/html", f"<html>bad gateway: {ECHO}</html>".encode()),
    ],
    ids=["500", "503", "400", "401", "403", "404", "secret-code", "502-html"],
)
async def test_a_key_servers_error_body_reaches_neither_the_caller_nor_the_log(
    server: LeakyServer, answer: Answer, debug_log: pytest.LogCaptureFixture
) -> None:
    serves_the_key(server)
    server.leak = answer
    signer = build_signer(signer_settings(remote_config(server)))
    try:
        texts = await failures_through_a_manager(signer, "unsafe_sign_hash", debug_log)
        server.routes.clear()  # the key server's own health route fails too
        with pytest.raises(SignerUnavailable) as health:
            await signer.health()  # type: ignore[attr-defined]
        texts += error_texts(health.value)
    finally:
        await signer.aclose()
    assert ("POST", f"/{PATH_SECRET}/sign") in server.requests, "the signature request was never sent"
    assert_clean(texts + log_texts(debug_log))
    if answer[0] == 503:
        assert any("answered 503 (audit_unavailable)" in text for text in texts), "the protocol's code is named"


@pytest.mark.parametrize("answer", [json_error(500), json_error(404, "unknown_key"), json_error(403, "forbidden")])
def test_a_key_server_failing_at_start_up_shows_none_of_its_body(
    server: LeakyServer, answer: Answer, debug_log: pytest.LogCaptureFixture
) -> None:
    server.leak = answer  # POST /health itself
    with pytest.raises(ConfigError) as at_health:
        build_signer(signer_settings(remote_config(server)))
    server.route("POST", f"/{PATH_SECRET}/health", {"status": "ok", "keys": []})  # then GET /keys/pm
    with pytest.raises(ConfigError) as at_key:
        build_signer(signer_settings(remote_config(server)))
    assert ("GET", f"/{PATH_SECRET}/keys/pm") in server.requests
    assert_clean(error_texts(at_health.value) + error_texts(at_key.value) + log_texts(debug_log))


async def test_a_web3signer_error_body_reaches_neither_the_caller_nor_the_log(
    server: LeakyServer, debug_log: pytest.LogCaptureFixture
) -> None:
    server.route("GET", f"/{PATH_SECRET}/api/v1/eth1/publicKeys", ["0x" + POINT[1:].hex()])
    server.leak = (500, "text/plain", f"signing failed: {ECHO}".encode())
    signer = build_signer(signer_settings(remote_config(server, mode="web3signer", key_id=None)))
    try:
        texts = await failures_through_a_manager(signer, "sign_eip191", debug_log)
    finally:
        await signer.aclose()
    assert ("POST", f"/{PATH_SECRET}/api/v1/eth1/sign/0x{POINT[1:].hex()}") in server.requests
    assert_clean(texts)


# -- Vault ----------------------------------------------------------------------------------------


def vault_error(status: int, *errors: str) -> Answer:
    return status, "application/json", orjson.dumps({"errors": list(errors)})


@pytest.mark.parametrize(
    ("answer", "kept"),
    [
        (vault_error(403, "1 error occurred:\n\t* permission denied\n\n", ECHO), "permission denied"),
        (vault_error(400, f"invalid role or secret ID {SECRET_ID}"), None),
        (vault_error(500, ECHO), None),
        (vault_error(503, "Vault is sealed", ECHO), "Vault is sealed"),
        ((502, "text/html", ECHO.encode()), None),
    ],
    ids=["403", "400-echo", "500", "503", "502-html"],
)
@pytest.mark.parametrize("auth", ["token", "approle", "transit"])
def test_a_vault_error_body_reaches_neither_the_caller_nor_the_log(
    server: LeakyServer, answer: Answer, kept: str | None, auth: str, debug_log: pytest.LogCaptureFixture
) -> None:
    """Vault is read at start-up: its failures are ``ConfigError``; of its text only Vault's own
    fixed messages are kept."""
    config: dict[str, Any] = {"type": "hashicorp_vault", "address": server.url, "path": "anode/pm"}
    if auth == "approle":
        config |= {"auth": "approle", "role_id": "anode", "secret_id": SECRET_ID}  # the login fails
        failing = ("POST", "/v1/auth/approle/login")
    else:
        config["token"] = VAULT_TOKEN
        failing = ("GET", "/v1/secret/data/anode/pm")
    if auth == "transit":  # the read works; the decrypt fails
        server.route("GET", "/v1/secret/data/anode/pm", {"data": {"data": {"private_key": "vault:v1:abc"}}})
        config["transit_key"] = "anode"
        failing = ("POST", "/v1/transit/decrypt/anode")
    server.leak = answer
    with pytest.raises(ConfigError) as caught:
        build_signer(signer_settings(config))
    assert failing in server.requests
    assert_clean(error_texts(caught.value) + log_texts(debug_log))
    if kept is not None:
        assert kept in caught.value.message


# -- AWS KMS --------------------------------------------------------------------------------------


def aws_error(status: int, code: str) -> Answer:
    body = {"__type": code, "message": ECHO, "Message": ECHO}
    return status, "application/x-amz-json-1.1", orjson.dumps(body)


def kms_settings(server: LeakyServer) -> KmsSettings:
    return KmsSettings(
        type="aws_kms", key_id="alias/anode", region="eu-central-1", endpoint_url=server.url,
        access_key_id=ACCESS_KEY_ID, secret_access_key=SECRET_ACCESS_KEY, session_token=SESSION_TOKEN,
        max_attempts=1, timeout_seconds=5,
    )  # fmt: skip


@pytest.mark.parametrize(
    "answer",
    [
        aws_error(400, "AccessDeniedException"),
        aws_error(400, "KMSInvalidStateException"),
        aws_error(500, "KMSInternalException"),
        aws_error(400, ACCESS_KEY_ID),  # a "code" that is not one
        (502, "text/html", ECHO.encode()),
    ],
    ids=["access-denied", "invalid-state", "internal", "secret-code", "502-html"],
)
async def test_a_kms_error_body_reaches_neither_the_caller_nor_the_log(
    server: LeakyServer, answer: Answer, debug_log: pytest.LogCaptureFixture
) -> None:
    server.leak = answer
    secrets = [*SECRETS, ACCESS_KEY_ID]
    with pytest.raises(ConfigError) as at_start:  # GetPublicKey
        build_signer(kms_settings(server))
    texts = error_texts(at_start.value)

    signer = AwsKmsSigner(kms_client(kms_settings(server)), "alias/anode", POINT)  # as if started earlier
    try:
        texts += await failures_through_a_manager(signer, "unsafe_sign_hash", debug_log)
    finally:
        await signer.aclose()
    assert len(server.requests) >= 3, "the Sign requests were never sent"
    assert_clean(texts + log_texts(debug_log), secrets)
    code = orjson.loads(answer[2])["__type"] if answer[0] != 502 else ACCESS_KEY_ID
    if code != ACCESS_KEY_ID:
        assert any(f"({code})" in text for text in texts), "the AWS error code is named"
