"""aNode's own key server (``anode keyserver serve``) as a real process, and ``signer: {type: remote}`` on it.

"Keys stay on our own server", end to end with two processes: the key server holds a keystore key
(its password reaches only the key server's environment), ``anode serve`` runs with
``signer: {type: remote, url, token, key_id}``, and the operation it sponsors is executed by the
real EntryPoint on anvil (the ``SignerContract`` suite's on-chain test, the key server's address
added to the SingletonPaymaster V7 with ``addSigner``). Around it: tokens (401, 403), unknown keys,
the audit log and its hash chain, a key server that signs with the wrong key, and a token revoked
while aNode runs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account
from eth_utils.crypto import keccak

from anode.devchain.anvil import Anvil
from anode.devchain.deploy import Deployment
from anode.devchain.rpc import DevRpc, encode_call
from anode.errors import ConfigError, SignerUnavailable
from anode.keyserver.audit import head_path, verify_audit
from anode.keyserver.cli import main as keyserver_main
from anode.keyserver.config import load_keyserver_settings
from anode.signers.health import PROBE_DIGEST
from anode.signers.registry import build_signer, signer_settings
from anode.signers.remote import RemoteSigner
from tests.signers.keyserver_process import KeyserverProcess, write_keystore
from tests.support.server import rpc, running_server
from tests.support.signer_contract import SignerContract, assert_valid
from tests.support.wallet import Client, rpc_op, server_config

TOKEN = "ks-token-anode-main-5b1c0e"
OTHER_TOKEN = "ks-token-other-caller-93f2aa"
PAYMASTER_KEY = "0x" + "7e57ab1e" * 8
OTHER_KEY = "0x" + "0ddba11c" * 8
PASSWORD = "keyserver-keystore-password"
SIGN = {"algorithm": "secp256k1-ecdsa-digest", "data": "0x" + "42" * 32, "key_id": "paymaster"}


def keyserver_config(directory: Path, keystore: Path, tokens: list[dict[str, str]] | None = None) -> dict[str, Any]:
    signer = {"type": "keystore", "keystore_path": str(keystore), "password_env": "KS_PASSWORD"}
    return {
        "keys": [
            {"id": "paymaster", "signer": signer, "allowed_callers": ["anode-main"]},
            {"id": "other", "signer": {"type": "local", "private_key": OTHER_KEY}, "allowed_callers": ["other"]},
        ],
        "tokens": tokens
        or [
            {"id": "anode-main", "token": TOKEN},
            {"id": "other", "token_sha256": hashlib.sha256(OTHER_TOKEN.encode()).hexdigest()},
        ],
        "audit_log": str(directory / "audit.jsonl"),
    }


@pytest.fixture(scope="module")
def keyserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyserverProcess]:
    directory = tmp_path_factory.mktemp("keyserver")
    keystore = write_keystore(directory, "paymaster", PAYMASTER_KEY, PASSWORD)
    process = KeyserverProcess(directory, keyserver_config(directory, keystore), {"KS_PASSWORD": PASSWORD})
    yield process.start()
    process.stop()


def remote(keyserver: KeyserverProcess, **changes: Any) -> dict[str, Any]:
    return {"type": "remote", "url": keyserver.url, "token": TOKEN, "key_id": "paymaster", **changes}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


class TestRemoteSigner(SignerContract):
    backend = "remote"

    @pytest.fixture
    def signer_config(self, keyserver: KeyserverProcess) -> dict[str, Any]:
        return remote(keyserver)

    @pytest.fixture
    def signer_env(self) -> dict[str, str]:
        return {}

    @pytest.fixture
    def signer_secrets(self) -> list[str]:
        return [TOKEN, PAYMASTER_KEY[2:], PASSWORD]


def test_the_key_servers_address_is_the_keystores(keyserver: KeyserverProcess) -> None:
    info = httpx.get(f"{keyserver.url}/keys/paymaster", headers=bearer(TOKEN)).json()
    assert info == {"key_id": "paymaster", "address": Account.from_key(PAYMASTER_KEY).address}


def test_a_wrong_token_is_401_and_stops_start_up_without_being_echoed(keyserver: KeyserverProcess) -> None:
    wrong = "not-the-token-d00d"
    for headers in (bearer(wrong), {}, {"authorization": TOKEN}):  # wrong, missing, not "Bearer …"
        reply = httpx.post(f"{keyserver.url}/sign", headers=headers, json=SIGN)
        assert reply.status_code == 401
        assert reply.json()["error"]["code"] == "unauthorized"
        assert reply.headers["www-authenticate"].startswith("Bearer")
    assert httpx.post(f"{keyserver.url}/health", headers=bearer(wrong)).status_code == 401
    with pytest.raises(ConfigError, match=r"refused the token \(401\): check signer.token") as caught:
        build_signer(signer_settings(remote(keyserver, token=wrong)))
    assert wrong not in caught.value.message


async def test_a_token_not_allowed_for_the_key_is_403(keyserver: KeyserverProcess) -> None:
    reply = httpx.post(f"{keyserver.url}/sign", headers=bearer(OTHER_TOKEN), json=SIGN)
    assert reply.status_code == 403
    assert reply.json()["error"] == {"code": "forbidden", "message": "this token may not use key 'paymaster'"}
    assert httpx.get(f"{keyserver.url}/keys/paymaster", headers=bearer(OTHER_TOKEN)).status_code == 403
    with pytest.raises(ConfigError, match=r"does not allow this token to use key 'paymaster' \(403\)"):
        build_signer(signer_settings(remote(keyserver, token=OTHER_TOKEN)))

    # the same token is good for its own key, and /health shows that caller its keys only
    health = httpx.post(f"{keyserver.url}/health", headers=bearer(OTHER_TOKEN)).json()
    assert health == {"status": "ok", "keys": [{"key_id": "other", "address": Account.from_key(OTHER_KEY).address}]}
    other = build_signer(signer_settings(remote(keyserver, token=OTHER_TOKEN, key_id="other")))
    try:
        digest = os.urandom(32)
        assert_valid(await other.unsafe_sign_hash(digest), digest, Account.from_key(OTHER_KEY).address)
    finally:
        await other.aclose()


def test_an_unknown_key_and_bad_requests_are_refused(keyserver: KeyserverProcess) -> None:
    with pytest.raises(ConfigError, match=r"has no key 'nope' \(404\)"):
        build_signer(signer_settings(remote(keyserver, key_id="nope")))
    cases = [
        ({**SIGN, "key_id": "nope"}, 404, "unknown_key"),
        ({**SIGN, "algorithm": "keccak256"}, 400, "unsupported_algorithm"),
        ({**SIGN, "data": "0x" + "42" * 31}, 400, "bad_request"),
        ({**SIGN, "data": "42" * 32}, 400, "bad_request"),
        ({**SIGN, "key_id": 7}, 400, "bad_request"),
    ]
    for body, status, code in cases:
        reply = httpx.post(f"{keyserver.url}/sign", headers=bearer(TOKEN), json=body)
        assert (reply.status_code, reply.json()["error"]["code"]) == (status, code), body
    not_json = httpx.post(f"{keyserver.url}/sign", headers=bearer(TOKEN), content=b"[1, 2")
    assert not_json.status_code == 400
    huge = httpx.post(f"{keyserver.url}/sign", headers=bearer(TOKEN), content=b"{" + b" " * 20_000 + b"}")
    assert huge.status_code == 413


async def test_every_signature_is_audited_in_a_hash_chain(keyserver: KeyserverProcess, tmp_path: Path) -> None:
    signer = build_signer(signer_settings(remote(keyserver)))
    digests = [os.urandom(32) for _ in range(5)]
    try:
        for digest in digests:
            await signer.unsafe_sign_hash(digest)
    finally:
        await signer.aclose()
    log = keyserver.directory / "audit.jsonl"
    lines = log.read_text().splitlines()
    records = {record["digest"]: record for record in map(json.loads, lines)}
    for digest in digests:
        record = records["0x" + digest.hex()]
        assert record["caller"] == "anode-main" and record["key_id"] == "paymaster"
        assert record["address"] == signer.address and record["algorithm"] == "secp256k1-ecdsa-digest"
        assert record["client"] == "127.0.0.1" and record["time"].endswith("+00:00")
    assert TOKEN not in log.read_text() and PAYMASTER_KEY[2:] not in log.read_text()
    assert verify_audit(log) == len(lines)

    head = head_path(log).read_bytes()  # the key server's head file: count, length, last line's hash
    middle, last = len(lines) // 2, len(lines) - 1
    changed = lines.copy()
    changed[middle] = changed[middle].replace('"caller":"anode-main"', '"caller":"someone-else"')
    removed = lines[:middle] + lines[middle + 1 :]
    reordered = lines.copy()
    reordered[middle], reordered[middle + 1] = reordered[middle + 1], reordered[middle]
    last_changed = [*lines[:last], lines[last].replace('"caller":"anode-main"', '"caller":"someone-else"')]
    # a changed record breaks the link to the next line; a removed or moved one, its own; the last
    # record has no next line: the head file is what it is checked against
    cases = (
        ("changed", changed, f"line {middle + 2}: the chain is broken"),
        ("removed", removed, f"line {middle + 1}: the chain is broken"),
        ("reordered", reordered, f"line {middle + 1}: the chain is broken"),
        ("last-changed", last_changed, f"line {last + 1}: record {last + 1}, the last one the head file names"),
        ("last-removed", lines[:last], "records were removed from the end"),
    )
    for name, tampered, problem in cases:
        copy = tmp_path / f"{name}.jsonl"
        copy.write_text("\n".join(tampered) + "\n")
        head_path(copy).write_bytes(head)
        with pytest.raises(ValueError, match=problem):
            verify_audit(copy)
        assert keyserver_main(["verify-audit", "--log", str(copy)]) == 2
    assert keyserver_main(["verify-audit", "--log", str(log)]) == 0


async def test_a_signature_by_another_key_is_an_error_not_a_signature(keyserver: KeyserverProcess) -> None:
    """The client checks every signature against the key's address: a server signing with another key fails."""
    with pytest.raises(ConfigError, match="reports key address"):
        build_signer(signer_settings(remote(keyserver, address=Account.from_key(OTHER_KEY).address)))
    # a client that expects OTHER_KEY's address; the server signs with the paymaster key
    liar = RemoteSigner(signer_settings(remote(keyserver)), Account.from_key(OTHER_KEY).address)  # type: ignore[arg-type]
    try:
        with pytest.raises(SignerUnavailable, match="does not recover to") as caught:
            await liar.unsafe_sign_hash(keccak(b"x"))
        assert caught.value.code == "ANODE_SIGNER_BAD_SIGNATURE"
    finally:
        await liar.aclose()


async def test_health_reports_the_key(keyserver: KeyserverProcess) -> None:
    signer = build_signer(signer_settings(remote(keyserver)))
    try:
        assert isinstance(signer, RemoteSigner)
        await signer.health()
    finally:
        await signer.aclose()


def test_the_token_command_prints_a_token_and_its_digest(capsys: pytest.CaptureFixture[str]) -> None:
    assert keyserver_main(["token", "--id", "anode-eu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    token = lines[1]
    assert lines[3:] == ["  - id: anode-eu", f"    token_sha256: {hashlib.sha256(token.encode()).hexdigest()}"]


def test_an_invalid_config_names_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "keys: [{id: k, signer: {type: local, private_key: '0x01'}, allowed_callers: [ghost]}]\n"
        "tokens: [{id: t, token: secret-abc, token_sha256: '" + "0" * 64 + "'}]\n"
        "audit_log: audit.jsonl\n"
    )
    assert keyserver_main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "tokens.0: give exactly one of token and token_sha256" in err
    assert "secret-abc" not in err


def test_a_yaml_error_on_a_key_line_gives_its_position_not_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """PyYAML's message quotes the offending line; the key server says where and what, never the key."""
    config = tmp_path / "bad.yaml"
    config.write_text(
        "keys:\n"
        "  - id: paymaster\n"
        f"    signer: {{type: local, private_key: {PAYMASTER_KEY}: oops}}\n"
        "    allowed_callers: [anode-main]\n"
    )
    with pytest.raises(ConfigError, match=r"not valid YAML: .* at line 3, column \d+") as caught:
        load_keyserver_settings(config)
    assert PAYMASTER_KEY[2:10] not in caught.value.message and "private_key" not in caught.value.message
    assert keyserver_main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "line 3, column" in err and PAYMASTER_KEY[2:10] not in err


def test_a_token_revoked_while_anode_runs_makes_it_report_signer_unavailable(
    tmp_path: Path, anvil: Anvil, deployment: Deployment
) -> None:
    """Two processes on anvil: sponsored through the key server; then the token is revoked, then the server stops."""
    key = "0x" + "5a1e5a1e" * 8
    address = Account.from_key(key).address
    paymaster = deployment.singleton_paymasters["v0.7"]
    with DevRpc(anvil.rpc_url) as chain:
        chain.transact(deployment.owner, paymaster, encode_call("addSigner(address)", ["address"], [address]))
    keystore = write_keystore(tmp_path, "revoked", key, PASSWORD)
    config = keyserver_config(tmp_path, keystore)
    process = KeyserverProcess(tmp_path, config, {"KS_PASSWORD": PASSWORD}).start()
    try:
        anode_config = server_config(anvil, deployment, "0x" + "11" * 32, [("singleton", "v0.7")])
        anode_config["signer"] = {"type": "remote", "url": process.url, "token": TOKEN, "key_id": "paymaster"}
        with running_server(anode_config) as url:
            client = Client(url, anvil, deployment, "v0.7")
            op, _, _ = client.sponsor()
            outcome = client.submit(op)
            assert outcome.success, outcome.reason

            rotated = [{"id": "anode-main", "token": "rotated-1"}, {"id": "other", "token": OTHER_TOKEN}]
            process.restart(keyserver_config(tmp_path, keystore, tokens=rotated))
            params = [rpc_op(client.new_op(), "v0.7"), client.entry_point, hex(deployment.chain_id), {}]
            error = rpc(url, "pm_getPaymasterData", params)["error"]
            assert error["code"] == -32603 and error["data"]["anodeCode"] == "ANODE_SIGNER_UNAVAILABLE"
            assert "refused the token (401)" in error["message"]
            assert TOKEN not in json.dumps(error)

            process.stop()
            error = rpc(url, "pm_getPaymasterData", params)["error"]
            assert error["data"]["anodeCode"] == "ANODE_SIGNER_UNAVAILABLE"
            assert "unreachable" in error["message"]
    finally:
        process.stop()
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    probe = "0x" + PROBE_DIGEST.hex()  # the signer manager's health probes: not sponsorships
    assert [r["address"] for r in records if r["digest"] != probe] == [address]  # the refused ones signed nothing


SOFTHSM = Path("/usr/lib/softhsm/libsofthsm2.so")


@pytest.mark.skipif(
    not SOFTHSM.exists() or shutil.which("softhsm2-util") is None or importlib.util.find_spec("pkcs11") is None,
    reason="SoftHSM2 or python-pkcs11 is not installed",
)
async def test_a_key_server_holding_a_pkcs11_key(tmp_path: Path) -> None:
    """The key server's key in a SoftHSM2 token (generated inside it): the HSM machine signs for aNode."""
    (tmp_path / "tokens").mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tmp_path / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    pin = "246813579024"
    init = ["softhsm2-util", "--init-token", "--free", "--label", "ks", "--pin", pin, "--so-pin", "so-pin-1234"]
    subprocess.run(init, check=True, capture_output=True, env=env)
    hsm = {"type": "pkcs11", "module": str(SOFTHSM), "token_label": "ks", "pin": pin, "key_label": "paymaster"}
    generate = f"from anode.signers.pkcs11 import Settings, generate_key; print(generate_key(Settings(**{hsm!r})))"
    address = subprocess.run(
        [sys.executable, "-c", generate], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()  # in its own process: SoftHSM2 reads SOFTHSM2_CONF once per process
    config = {
        "keys": [{"id": "paymaster", "signer": hsm, "allowed_callers": ["anode-main"]}],
        "tokens": [{"id": "anode-main", "token": TOKEN}],
        "audit_log": str(tmp_path / "audit.jsonl"),
    }
    process = KeyserverProcess(tmp_path, config, {"SOFTHSM2_CONF": str(conf)}).start()
    try:
        signer = build_signer(signer_settings(remote(process)))
        try:
            assert signer.address == address
            digest = os.urandom(32)
            assert_valid(await signer.unsafe_sign_hash(digest), digest, address)
        finally:
            await signer.aclose()
    finally:
        process.stop()
    assert pin not in process.log()
