"""``signer: {type: remote}``: the client's own behaviour, and its Web3Signer mode.

Web3Signer itself (a Java service) cannot be installed on this machine, so the ``web3signer``
mode runs against the Web3Signer-compatible routes of aNode's key server, written from
Web3Signer's source: ``POST /api/v1/eth1/sign/{public key}`` signs ``keccak256(data)`` (web3j's
``Sign.signMessage(data, key, needToHash=true)``), no EIP-191 prefix added, and answers
``0x<r ‖ s ‖ v>`` as text; ``GET /api/v1/eth1/publicKeys`` lists 64-byte public keys. What aNode
sends is checked byte for byte against a wallet's EIP-191 signature, and on chain.

The rest run a local HTTP server (aiohttp) that answers what a real key server will not do on
request: 500, hang, drop a connection, return a high-s or another key's signature. The TLS test runs the
key server over HTTPS with a private CA made by ``cryptography``.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from coincurve import PrivateKey, PublicKey
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils.crypto import keccak

from anode.devchain.anvil import Anvil
from anode.devchain.deploy import Deployment
from anode.devchain.rpc import DevRpc, encode_call
from anode.errors import ConfigError, SignerUnavailable
from anode.signers import cloudflare_secrets, remote
from anode.signers.base import SECP256K1_N, eip191_digest
from anode.signers.manager import ManagedSigner
from anode.signers.manager_settings import BackendEntry, ManagerSettings
from anode.signers.registry import build_signer, signer_settings
from anode.signers.remote import RemoteSigner
from tests.signers.keyserver_process import KeyserverProcess
from tests.support.onchain import call_contract, user_op_type
from tests.support.server import running_server
from tests.support.signer_contract import assert_valid
from tests.support.wallet import Client, server_config

KEY = "0x" + "3b" * 32
ADDRESS = Account.from_key(KEY).address
TOKEN = "remote-test-token-8841"


def keyserver_config(directory: Path, **extra: Any) -> dict[str, Any]:
    return {
        "keys": [{"id": "paymaster", "signer": {"type": "local", "private_key": KEY}, "allowed_callers": ["anode"]}],
        "tokens": [{"id": "anode", "token": TOKEN}],
        "audit_log": str(directory / "audit.jsonl"),
        **extra,
    }


@pytest.fixture(scope="module")
def keyserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyserverProcess]:
    directory = tmp_path_factory.mktemp("remote")
    process = KeyserverProcess(directory, keyserver_config(directory)).start()
    yield process
    process.stop()


def web3signer(keyserver: KeyserverProcess, **changes: Any) -> dict[str, Any]:
    return {"type": "remote", "mode": "web3signer", "url": keyserver.url, "token": TOKEN, **changes}


# ----------------------------------------------------------------------------- Web3Signer mode


async def test_web3signer_mode_finds_the_key_by_address_or_public_key_or_alone(keyserver: KeyserverProcess) -> None:
    (public_key,) = httpx.get(
        f"{keyserver.url}/api/v1/eth1/publicKeys", headers={"authorization": f"Bearer {TOKEN}"}
    ).json()
    assert len(bytes.fromhex(public_key[2:])) == 64  # as Web3Signer lists them: x ‖ y, no 04 prefix
    for key_id in (None, ADDRESS, ADDRESS.lower(), public_key, "0x04" + public_key[2:]):
        signer = build_signer(signer_settings(web3signer(keyserver, key_id=key_id)))
        assert signer.address == ADDRESS
        await signer.aclose()
    with pytest.raises(ConfigError, match="holds no key"):
        build_signer(signer_settings(web3signer(keyserver, key_id="0x" + "00" * 20)))


async def test_web3signer_mode_signs_the_eip191_form_byte_for_byte_like_a_wallet(keyserver: KeyserverProcess) -> None:
    signer = build_signer(signer_settings(web3signer(keyserver)))
    assert isinstance(signer, RemoteSigner)
    try:
        for _ in range(5):
            message_hash = os.urandom(32)
            signed = await signer.sign_eip191(message_hash)
            wallet = Account.sign_message(encode_defunct(primitive=message_hash), KEY)
            assert signed.signature == bytes(wallet.signature)  # RFC 6979 on both sides: identical bytes
            assert_valid(signed, eip191_digest(message_hash), ADDRESS)
        with pytest.raises(SignerUnavailable, match="cannot sign a bare digest") as caught:
            await signer.unsafe_sign_hash(message_hash)
        assert caught.value.code == "ANODE_SIGNER_DIGEST_UNSUPPORTED"
        await signer.health()
    finally:
        await signer.aclose()
    last = orjson.loads((keyserver.directory / "audit.jsonl").read_text().splitlines()[-1])
    assert last["algorithm"] == "eth1-keccak256" and last["digest"] == "0x" + eip191_digest(message_hash).hex()


def test_the_web3signer_route_signs_keccak256_of_the_data_as_given(keyserver: KeyserverProcess) -> None:
    headers = {"authorization": f"Bearer {TOKEN}"}
    (public_key,) = httpx.get(f"{keyserver.url}/api/v1/eth1/publicKeys", headers=headers).json()
    reply = httpx.post(f"{keyserver.url}/api/v1/eth1/sign/{public_key}", headers=headers, json={"data": "0xdeadbeef"})
    assert reply.headers["content-type"].startswith("text/plain")
    signature = bytes.fromhex(reply.text[2:])
    assert Account._recover_hash(keccak(bytes.fromhex("deadbeef")), signature=signature) == ADDRESS
    unknown = httpx.post(f"{keyserver.url}/api/v1/eth1/sign/0x{'11' * 64}", headers=headers, json={"data": "0x"})
    assert unknown.status_code == 404
    assert httpx.post(f"{keyserver.url}/api/v1/eth1/sign/{public_key}", json={"data": "0x"}).status_code == 401


async def test_a_web3signer_key_signs_a_sponsored_operation_on_chain(
    keyserver: KeyserverProcess, anvil: Anvil, deployment: Deployment
) -> None:
    """The contract's own getHash, signed through Web3Signer's API; the EntryPoint accepts the operation."""
    version = "v0.7"
    paymaster = deployment.singleton_paymasters[version]
    with DevRpc(anvil.rpc_url) as chain:
        chain.transact(deployment.owner, paymaster, encode_call("addSigner(address)", ["address"], [ADDRESS]))
    client = Client("unused", anvil, deployment, version)
    now = int(time.time())
    header = bytes([1]) + (now + 600).to_bytes(6, "big") + (now - 60).to_bytes(6, "big")  # verifying, any bundler
    op = replace(client.new_op(), paymaster=paymaster, paymaster_data=header + b"\x00" * 65)
    tuple_type = user_op_type(version)
    (paymaster_hash,) = call_contract(
        anvil.rpc_url, paymaster, f"getHash(uint8,{tuple_type})", ["uint8", tuple_type], [0, op.to_tuple(version)],
        ["bytes32"],
    )  # fmt: skip
    signer = build_signer(signer_settings(web3signer(keyserver)))
    assert isinstance(signer, RemoteSigner)
    try:
        signed = await signer.sign_eip191(bytes(paymaster_hash))
    finally:
        await signer.aclose()
    outcome = client.submit(replace(op, paymaster_data=header + signed.signature))
    assert outcome.success, outcome.reason
    assert outcome.events[0].paymaster == paymaster


def test_anode_serve_sponsors_through_web3signer(
    keyserver: KeyserverProcess, anvil: Anvil, deployment: Deployment
) -> None:
    """``anode serve`` with a Web3Signer key: the pipeline signs through ``sign_eip191``, the EntryPoint accepts."""
    paymaster = deployment.singleton_paymasters["v0.7"]
    with DevRpc(anvil.rpc_url) as chain:
        chain.transact(deployment.owner, paymaster, encode_call("addSigner(address)", ["address"], [ADDRESS]))
    config = server_config(anvil, deployment, "0x" + "11" * 32, [("singleton", "v0.7")])
    config["signer"] = web3signer(keyserver)
    with running_server(config) as url:
        assert httpx.get(f"{url}/health").json()["signer"] == {"address": ADDRESS, "backend": "remote"}
        client = Client(url, anvil, deployment, "v0.7")
        op, _, _ = client.sponsor()
        outcome = client.submit(op)
    assert outcome.success, outcome.reason


# ----------------------------------------------------------------------------- the client, against fakes

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def fake_keyserver() -> AsyncIterator[Callable[..., Awaitable[RemoteSigner]]]:
    """``await fake_keyserver(handler, **settings)``: a RemoteSigner talking over real HTTP to a
    local server whose every answer ``handler`` writes (what a real key server will not do on
    request: answer 500, hang, drop the connection, return a high-s or another key's signature)."""
    started: list[tuple[TestServer, RemoteSigner]] = []

    async def make(handler: Handler, **changes: Any) -> RemoteSigner:
        app = web.Application()
        app.router.add_route("*", "/base-secret-1/{tail:.*}", handler)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        url = f"http://127.0.0.1:{server.port}/base-secret-1"
        settings = remote.Settings.model_validate(
            {"type": "remote", "url": url, "token": TOKEN, "key_id": "pm", **changes}
        )
        signer = RemoteSigner(settings, ADDRESS)
        started.append((server, signer))
        return signer

    yield make
    for server, signer in started:
        await signer.aclose()
        await server.close()


def answer(status: int = 200, json: Any = None, body: bytes | None = None) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        if body is not None:
            return web.Response(status=status, body=body)
        return web.json_response(json, status=status)

    return handler


def signing(mangle: Callable[[bytes], bytes] = lambda sig: sig, key: str = KEY) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        assert request.path == "/base-secret-1/sign"
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        assert body["algorithm"] == "secp256k1-ecdsa-digest" and body["key_id"] == "pm"
        raw = PrivateKey(bytes.fromhex(key[2:])).sign_recoverable(bytes.fromhex(body["data"][2:]), hasher=None)
        signature = raw[:64] + bytes([raw[64] + 27])
        return web.json_response({"signature": "0x" + mangle(signature).hex(), "address": ADDRESS})

    return handler


def high_s(signature: bytes) -> bytes:
    s = SECP256K1_N - int.from_bytes(signature[32:64], "big")
    return signature[:32] + s.to_bytes(32, "big") + bytes([55 - signature[64]])


FakeKeyserver = Callable[..., Awaitable[RemoteSigner]]


async def test_a_high_s_signature_or_v_0_1_comes_back_canonical(fake_keyserver: FakeKeyserver) -> None:
    for mangle in (high_s, lambda sig: sig[:64] + bytes([sig[64] - 27])):
        signer = await fake_keyserver(signing(mangle))
        digest = os.urandom(32)
        assert_valid(await signer.unsafe_sign_hash(digest), digest, ADDRESS)


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (signing(key="0x" + "3c" * 32), "does not recover to"),
        (signing(lambda sig: sig[:64] + b"\x05"), "out-of-range signature"),
        (signing(lambda sig: sig[:40]), "malformed signature"),
        (answer(json={"sig": "0x"}), "answered no signature"),
        (answer(body=b"<html>"), "answered no signature"),
    ],
    ids=["another-key", "bad-v", "short", "no-field", "not-json"],
)
async def test_a_bad_signature_is_an_error(fake_keyserver: FakeKeyserver, handler: Handler, message: str) -> None:
    signer = await fake_keyserver(handler)
    with pytest.raises(SignerUnavailable, match=message) as caught:
        await signer.unsafe_sign_hash(os.urandom(32))
    assert caught.value.code == "ANODE_SIGNER_BAD_SIGNATURE"


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (401, r"refused the token \(401\): check signer.token"),
        (403, r"does not allow this token to use key 'pm' \(403\)"),
        (404, r"has no key 'pm' \(404\)"),
        (500, r"answered 500 \(signer_unavailable\): the key server's log says why"),
    ],
)
async def test_refusals_say_what_to_check_and_never_show_the_token_or_url_path(
    fake_keyserver: FakeKeyserver, status: int, message: str
) -> None:
    """The status and the protocol's error code, never the server's own text (see test_leaks.py)."""
    refusal = {"error": {"code": "signer_unavailable", "message": "the HSM is on fire"}}
    signer = await fake_keyserver(answer(status, json=refusal))
    with pytest.raises(SignerUnavailable, match=message) as caught:
        await signer.unsafe_sign_hash(os.urandom(32))
    assert caught.value.code == "ANODE_SIGNER_UNAVAILABLE"
    for text in (caught.value.message, repr(signer)):
        assert TOKEN not in text and "secret" not in text and "/base" not in text and "on fire" not in text
        assert re.search(r"http://127\.0\.0\.1:\d+\b", text)


async def test_a_dropped_connection_is_retried_once_and_a_dead_server_is_unavailable(
    fake_keyserver: FakeKeyserver,
) -> None:
    calls = 0
    good = signing()

    async def drops_the_first(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            assert request.transport is not None
            request.transport.abort()  # closed without a byte of answer
            raise web.HTTPInternalServerError()
        return await good(request)

    signer = await fake_keyserver(drops_the_first)
    digest = os.urandom(32)
    assert_valid(await signer.unsafe_sign_hash(digest), digest, ADDRESS)
    assert calls == 2

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as closed:  # bound, never listening: refused
        closed.bind(("127.0.0.1", 0))
        settings = remote.Settings.model_validate(
            {"type": "remote", "url": f"http://127.0.0.1:{closed.getsockname()[1]}", "token": TOKEN, "key_id": "pm"}
        )
        dead = RemoteSigner(settings, ADDRESS)
        try:
            with pytest.raises(SignerUnavailable, match=r"unreachable \(connection refused\)"):
                await dead.unsafe_sign_hash(digest)
        finally:
            await dead.aclose()


async def test_a_slow_key_server_times_out(fake_keyserver: FakeKeyserver) -> None:
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(5)
        return web.Response()

    signer = await fake_keyserver(slow, timeout_seconds=0.25)
    with pytest.raises(SignerUnavailable, match=r"did not answer within 0.25s"):
        await signer.unsafe_sign_hash(os.urandom(32))


async def test_sign_eip191_in_anode_mode_signs_the_eip191_digest(fake_keyserver: FakeKeyserver) -> None:
    signer = await fake_keyserver(signing())
    message_hash = os.urandom(32)
    signed = await signer.sign_eip191(message_hash)
    assert signed.signature == bytes(Account.sign_message(encode_defunct(primitive=message_hash), KEY).signature)


async def test_a_key_server_with_only_the_protocols_two_routes_is_enough() -> None:
    """``POST /sign`` and ``POST /health`` (the design's protocol), nothing of aNode's own extras:
    start-up finds the key's address in the health listing, and signatures go through."""
    sign = signing()
    seen: list[str] = []

    async def route(request: web.Request) -> web.StreamResponse:
        seen.append(f"{request.method} {request.path}")
        if request.method == "POST" and request.path == "/health":
            keys = [{"key_id": "other", "address": "0x" + "11" * 20}, {"key_id": "pm", "address": ADDRESS}]
            return web.json_response({"status": "ok", "keys": keys})
        if request.method == "POST" and request.path == "/base-secret-1/sign":
            return await sign(request)
        return web.json_response({"error": {"message": "no such route"}}, status=404)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", route)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        base = f"http://127.0.0.1:{server.port}"
        found = await asyncio.to_thread(
            build_signer, signer_settings({"type": "remote", "url": base, "token": TOKEN, "key_id": "pm"})
        )
        assert found.address == ADDRESS and seen == ["POST /health"]
        await found.aclose()
        missing = {"type": "remote", "url": base, "token": TOKEN, "key_id": "gone"}
        with pytest.raises(ConfigError, match=r"no key 'gone'.*check signer.key_id"):
            await asyncio.to_thread(build_signer, signer_settings(missing))
    finally:
        await server.close()


async def test_concurrent_signatures_share_the_connection_pool(keyserver: KeyserverProcess) -> None:
    signer = build_signer(
        signer_settings({"type": "remote", "url": keyserver.url, "token": TOKEN, "key_id": "paymaster"})
    )
    try:
        digests = [os.urandom(32) for _ in range(200)]
        results = await asyncio.gather(*(signer.unsafe_sign_hash(digest) for digest in digests))
        for digest, signed in zip(digests, results, strict=True):
            assert_valid(signed, digest, ADDRESS)
    finally:
        await signer.aclose()


async def test_a_remote_signature_is_recovered_once_per_request(
    keyserver: KeyserverProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The remote signer recovers the key server's signature to its address; the signer manager,
    which recovers what out-of-process backends return, does not do it a second time."""
    recoveries = 0
    recover = PublicKey.from_signature_and_message

    def counting(*args: Any, **kwargs: Any) -> PublicKey:
        nonlocal recoveries
        recoveries += 1
        return recover(*args, **kwargs)

    config = {"type": "remote", "url": keyserver.url, "token": TOKEN, "key_id": "paymaster"}
    settings = ManagerSettings(primary=BackendEntry(signer=signer_settings(config)), health_interval_s=0)
    assert settings.verify_signatures
    manager = ManagedSigner.from_settings(settings)
    monkeypatch.setattr(PublicKey, "from_signature_and_message", counting)
    try:
        for sign in (manager.unsafe_sign_hash, manager.sign_eip191):
            recoveries = 0
            message = os.urandom(32)
            signed = await sign(message)
            assert signed.signer == ADDRESS and signed.backend == "primary:remote"
            assert recoveries == 1, f"{sign.__name__}: recovered {recoveries} times"
    finally:
        await manager.aclose()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"url": "keys.example:9100"}, "signer.url: must be an http:// or https:// URL"),
        ({"token": None}, "needs token and key_id"),
        ({"key_id": None}, "needs token and key_id"),
        ({"verify_tls": False, "ca_file": "/ca.pem"}, "ca_file is set but verify_tls is false"),
        ({"address": "0x1234"}, "signer.address: must be a 0x-prefixed 20-byte address"),
        ({"mode": "grpc"}, "signer.mode"),
    ],
)
def test_settings_are_checked(fields: dict[str, Any], message: str) -> None:
    base = {"type": "remote", "url": "http://127.0.0.1:1", "token": TOKEN, "key_id": "pm"}
    with pytest.raises(ConfigError, match=message) as caught:
        signer_settings({**base, **fields})
    assert TOKEN not in caught.value.message


def test_an_unreachable_key_server_stops_start_up() -> None:
    with pytest.raises(
        ConfigError, match=r"signer.url: cannot reach the key server at http://127.0.0.1:1 \(ConnectError\)"
    ):
        build_signer(signer_settings({"type": "remote", "url": "http://127.0.0.1:1", "token": TOKEN, "key_id": "pm"}))


def test_cloudflare_secrets_is_the_anode_protocol_with_its_fields_required() -> None:
    settings = signer_settings(
        {"type": "cloudflare_secrets", "url": "https://signer.example.workers.dev", "token": "t"}
    )
    assert isinstance(settings, cloudflare_secrets.Settings)
    assert (settings.mode, settings.key_id) == ("anode", "paymaster")
    with pytest.raises(ConfigError, match=r"signer\.token: Field required"):
        signer_settings({"type": "cloudflare_secrets", "url": "https://signer.example.workers.dev"})
    with pytest.raises(ConfigError, match=r"signer\.mode"):
        signer_settings({"type": "cloudflare_secrets", "url": "https://x.example", "token": "t", "mode": "web3signer"})


# ----------------------------------------------------------------------------- TLS


def _tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """A private CA, and a certificate for 127.0.0.1 it signed: ``(ca, cert, key)``."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(text: str) -> Any:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    now = datetime.datetime.now(datetime.UTC)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("anode test CA")).issuer_name(name("anode test CA"))
        .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    cert = (
        x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
        .public_key(server_key.public_key()).serial_number(2).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


async def test_over_tls_with_a_private_ca(tmp_path: Path) -> None:
    ca, cert, key = _tls_files(tmp_path)
    process = KeyserverProcess(tmp_path, keyserver_config(tmp_path, tls_cert=str(cert), tls_key=str(key)), tls_ca=ca)
    try:
        process.start()
        config = {"type": "remote", "url": process.url, "token": TOKEN, "key_id": "paymaster"}
        with pytest.raises(ConfigError, match="cannot reach the key server"):  # the CA is not a system one
            build_signer(signer_settings(config))
        signer = build_signer(signer_settings({**config, "ca_file": str(ca)}))
        try:
            digest = os.urandom(32)
            assert_valid(await signer.unsafe_sign_hash(digest), digest, ADDRESS)
        finally:
            await signer.aclose()
    finally:
        process.stop()
