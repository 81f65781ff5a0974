"""Every secret a config can hold, configured at once, and every log line of a start-up and a
request cycle: none of the secrets appears.

Real services where the secret must work: PostgreSQL with a role that has a password, a Redis of
its own started with ``--requirepass`` (the security filter's cache and the policy engine's
counters use it), anvil with the real paymasters, a SoftHSM2 token (its PIN) whose key signs as a
backup. Where a secret need not work it is configured anyway and fails on the way, which is where
leaks hide: a mnemonic and a remote key server (its token) as backup signers, the key server
(``anode keyserver serve``, its key in a keystore whose password comes from the environment)
running; a webhook policy whose hook is unreachable (its secret, and a token in its URL).
Captured: every record at DEBUG through the root logger (``anode``, uvicorn, alembic, httpx, …),
this process's stdout and stderr, and, for a real ``anode serve`` process run with the same config
at ``log_level: DEBUG``, all it writes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import sqlalchemy as sa
import yaml

from anode.config import validate_settings
from anode.devchain.anvil import Anvil, free_port
from anode.devchain.deploy import Deployment
from anode.redact import configure_logging
from anode.signers import pkcs11
from anode.wiring import build
from tests.signers.keyserver_process import KeyserverProcess, write_keystore
from tests.signers.softhsm import PIN, softhsm_token
from tests.support.asgi import client_of
from tests.support.postgres import ADMIN_URL
from tests.support.server import _wait_ready

MNEMONIC = "legal winner thank year wave sausage worth useful legal winner thank yellow"
SECRETS = {
    "mnemonic": MNEMONIC,
    "mnemonic passphrase": "mnemonic-passphrase-" + secrets.token_hex(6),
    "remote token": "remote-token-" + secrets.token_hex(8),
    "key server's key": "0x" + secrets.token_hex(32),
    "keystore password": "keystore-password-" + secrets.token_hex(6),
    "project API key": "project-key-" + secrets.token_hex(8),
    "admin API key": "admin-key-" + secrets.token_hex(8),
    "webhook secret": "webhook-secret-" + secrets.token_hex(8),
    "webhook URL token": "hook-token-" + secrets.token_hex(8),
    "database password": "pg-password-" + secrets.token_hex(8),
    "Redis password": "redis-password-" + secrets.token_hex(8),
    "HSM PIN": PIN,
}


def dead_port() -> int:
    """A port nothing listens on (bound a moment ago, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def keyserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyserverProcess]:
    """The remote backup's key server: its key in a keystore, the keystore's password from the environment."""
    directory = tmp_path_factory.mktemp("keyserver")
    password = SECRETS["keystore password"]
    keystore = write_keystore(directory, "paymaster", SECRETS["key server's key"], password)
    signer = {"type": "keystore", "keystore_path": str(keystore), "password_env": "KS_PASSWORD"}
    settings = {
        "keys": [{"id": "paymaster", "signer": signer, "allowed_callers": ["anode"]}],
        "tokens": [{"id": "anode", "token_sha256": hashlib.sha256(SECRETS["remote token"].encode()).hexdigest()}],
        "audit_log": str(directory / "audit.jsonl"),
        "log_level": "DEBUG",
    }
    process = KeyserverProcess(directory, settings, {"KS_PASSWORD": password})
    yield process.start()
    process.stop()
    assert leaks(process.log_path.read_text(), "") == [], process.log()


@pytest.fixture
def hsm_backup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A SoftHSM2 token (its PIN is a secret of the config) holding a key the pkcs11 backup signs with."""
    with softhsm_token(tmp_path_factory.mktemp("softhsm")) as hsm:  # SOFTHSM2_CONF for anode serve too
        backup = hsm.signer_config("leak-backup")
        pkcs11.generate_key(pkcs11.Settings.model_validate(backup))
        yield backup


@pytest.fixture
def pg_url_with_password() -> Iterator[str]:
    """A database owned by a role that logs in with a password."""
    role = f"anode_leak_{secrets.token_hex(4)}"
    password = SECRETS["database password"]
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
        connection.execute(sa.text(f'CREATE DATABASE "{role}" OWNER {role}'))
    host = sa.make_url(ADMIN_URL)
    try:
        yield f"postgresql://{role}:{password}@{host.host}:{host.port or 5432}/{role}"
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{role}" WITH (FORCE)'))
            connection.execute(sa.text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()


@pytest.fixture
def redis_url_with_password(tmp_path: Path) -> Iterator[str]:
    """A Redis server of this test's own that refuses clients without the password."""
    executable = shutil.which("redis-server")
    assert executable is not None, "redis-server is needed (apt-get install redis-server)"
    port = free_port()
    password = SECRETS["Redis password"]
    command = [executable, "--port", str(port), "--bind", "127.0.0.1", "--requirepass", password]
    command += ["--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def config(
    anvil: Anvil,
    deployment: Deployment,
    paymaster_key: str,
    database_url: str,
    redis_url: str,
    keyserver: str,
    hsm_backup: dict[str, Any],
) -> dict[str, Any]:
    s = SECRETS
    singleton = deployment.singleton_paymasters["v0.8"]  # the backups may sign for it (not for the verifying one)
    hook = f"http://127.0.0.1:{dead_port()}/hook?token={s['webhook URL token']}"
    return {
        "database_url": database_url,
        "redis_url": redis_url,
        "log_level": "DEBUG",
        "signer": {
            "primary": {"type": "local", "private_key": paymaster_key},
            "backups": [
                {"type": "mnemonic", "mnemonic": s["mnemonic"], "passphrase": s["mnemonic passphrase"],
                 "paymasters": [singleton]},
                {"type": "remote", "url": keyserver, "token": s["remote token"], "key_id": "paymaster",
                 "paymasters": [singleton]},
                {**hsm_backup, "paymasters": [singleton]},
            ],
            "health_interval_s": 0,
        },
        "auth": {"api_keys": [s["project API key"]], "admin_keys": [s["admin API key"]]},
        "chains": [{
            "chain_id": deployment.chain_id,
            "rpc_url": anvil.rpc_url,
            "paymasters": [
                {"entry_point": deployment.entry_points["v0.7"], "address": deployment.verifying_paymasters["v0.7"],
                 "contract": "verifying"},
                {"entry_point": deployment.entry_points["v0.8"], "address": singleton, "contract": "singleton"},
            ],
        }],
        "pipeline": {"modules": [
            {"name": "security_filter"},
            {"name": "policy_engine", "config": {"limiter": "redis", "redis_prefix": f"leak:{secrets.token_hex(4)}:"}},
            {"name": "paymaster_signer"},
        ]},
        "policies": [{
            "id": "hooked", "name": "asks a hook", "type": "custom",
            "webhook": {"url": hook, "secret": s["webhook secret"], "fail_mode": "open", "timeout": 1},
        }],
    }  # fmt: skip


def every_form(secret: str) -> list[str]:
    """``secret`` and the pieces of it that would give it away (a key without its 0x, a phrase's words)."""
    forms = [secret, secret.removeprefix("0x")]
    if secret == MNEMONIC:
        forms += [" ".join(secret.split()[i : i + 3]) for i in range(0, 12, 3)]
    return forms


def leaks(text: str, paymaster_key: str) -> list[str]:
    found = [name for name, secret in SECRETS.items() if any(form in text for form in every_form(secret))]
    if paymaster_key and any(form in text for form in every_form(paymaster_key)):
        found.append("private key")
    return found


def user_op(nonce: int) -> dict[str, Any]:
    return {
        "sender": "0x" + "a1" * 20,
        "nonce": hex(nonce),
        "callData": "0x",
        "callGasLimit": "0x186a0",
        "verificationGasLimit": "0x30d40",
        "preVerificationGas": "0xc350",
        "maxFeePerGas": "0x3b9aca00",
        "maxPriorityFeePerGas": "0x3b9aca00",
    }


def rpc(method: str, params: list[Any], call_id: int = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": call_id, "method": method, "params": params}


def calls(deployment: Deployment) -> list[dict[str, Any]]:
    """A request cycle: stub data, signed data, a batch, a refused call."""
    ep, chain = deployment.entry_points["v0.7"], hex(deployment.chain_id)
    return [
        rpc("pm_getPaymasterStubData", [user_op(1), ep, chain, {}]),
        rpc("pm_getPaymasterData", [user_op(1), ep, chain, {}]),
        rpc("pm_getPaymasterData", [user_op(2), ep, chain, {"sponsorshipPolicyId": "hooked"}]),
        rpc("pm_getPaymasterData", [{"sender": "0x12"}, ep, chain, {}]),  # refused: a bad op
    ]


async def test_no_secret_in_any_log_line_of_a_start_up_and_a_request_cycle(
    anvil: Anvil,
    deployment: Deployment,
    paymaster_key: str,
    pg_url_with_password: str,
    redis_url_with_password: str,
    keyserver: KeyserverProcess,
    hsm_backup: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    tree = config(
        anvil, deployment, paymaster_key, pg_url_with_password, redis_url_with_password, keyserver.url, hsm_backup
    )
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="anode")
    settings = validate_settings(tree)
    configure_logging(settings.log_level)
    node = build(settings)
    try:
        await node.start()
        project, admin = SECRETS["project API key"], SECRETS["admin API key"]
        async with client_of(node, project) as client, client_of(node, admin) as operator:
            answers = [(await client.post("/api/v1/rpc", json=body)).json() for body in calls(deployment)]
            assert "result" in answers[1], answers[1]  # signed: the cycle went the whole way
            assert "error" in answers[3], answers[3]
            batch = (await client.post("/api/v1/rpc", json=calls(deployment)[:2])).json()
            assert len(batch) == 2
            query = await client.post(f"/api/v1/rpc?apikey={project}", json=calls(deployment)[0], headers={})
            assert query.status_code == 200
            wrong = await client.post("/api/v1/rpc", json=calls(deployment)[0], headers={"authorization": "Bearer x"})
            assert wrong.status_code in (401, 403)
            assert (await client.get("/health")).status_code in (200, 503)
            listed = await operator.get("/api/v1/operations")
            assert listed.status_code == 200 and listed.json()["count"] >= 2
            assert (await operator.get("/api/v1/policies")).status_code == 200
    finally:
        await node.aclose()
    records = caplog.records
    text = "\n".join(f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''}" for r in records)
    out, err = capfd.readouterr()
    # the capture works: start-up, the database and the unreachable webhook did log
    assert any("aNode signing as" in r.getMessage() for r in records), text
    assert any(r.name.startswith("alembic") for r in records), text
    assert leaks(text, paymaster_key) == [], text
    assert leaks(out + err, paymaster_key) == [], out + err
    assert leaks(str(answers) + str(batch), paymaster_key) == []


def test_no_secret_in_what_anode_serve_writes(
    tmp_path: Path,
    anvil: Anvil,
    deployment: Deployment,
    paymaster_key: str,
    pg_url_with_password: str,
    redis_url_with_password: str,
    keyserver: KeyserverProcess,
    hsm_backup: dict[str, Any],
) -> None:
    """The same, for a real ``anode serve`` process; the database URL and the admin key come from the
    environment (``ANODE_DATABASE_URL``, ``ANODE_AUTH__ADMIN_KEYS``)."""
    tree = config(
        anvil, deployment, paymaster_key, pg_url_with_password, redis_url_with_password, keyserver.url, hsm_backup
    )
    env = {
        **os.environ,
        "ANODE_DATABASE_URL": tree.pop("database_url"),
        "ANODE_AUTH__ADMIN_KEYS": f'["{SECRETS["admin API key"]}"]',
    }
    tree["auth"].pop("admin_keys")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tree))
    port = free_port()
    log_path = tmp_path / "server.log"
    command = [sys.executable, "-m", "anode.cli", "serve", "--config", str(path), "--port", str(port)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log_path)
        key = {"authorization": f"Bearer {SECRETS['project API key']}"}
        answers = [httpx.post(f"{url}/api/v1/rpc", json=body, headers=key).json() for body in calls(deployment)]
        assert "result" in answers[1], answers[1]
        httpx.post(f"{url}/api/v1/rpc", params={"apikey": SECRETS["project API key"]}, json=calls(deployment)[0])
        httpx.get(f"{url}/health")
        admin = {"authorization": f"Bearer {SECRETS['admin API key']}"}
        assert httpx.get(f"{url}/api/v1/operations", headers=admin).status_code == 200
    finally:
        process.terminate()
        process.wait(timeout=20)
    text = log_path.read_text()
    assert "aNode signing as" in text and " DEBUG " in text, text  # it logged, at DEBUG
    assert leaks(text, paymaster_key) == [], text
