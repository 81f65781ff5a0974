"""The Cloudflare signing Worker (``deploy/cloudflare/``) and ``signer: {type: cloudflare_secrets}``.

``wrangler dev`` runs offline on this machine, so the Worker runs in Cloudflare's own runtime:
wrangler (from ``deploy/cloudflare/node_modules``) starts workerd locally with the shipped
``wrangler.toml``, and its two Secrets Store bindings read secrets created in a local store with
``wrangler secrets-store secret create`` (no ``--remote``; ``--persist-to`` a temporary
directory). The one network call wrangler tries, for the ``Request.cf`` object at
workers.cloudflare.com, fails and it falls back to a placeholder. aNode's signer then sponsors an
operation on anvil through the Worker (the ``SignerContract`` suite, ``anode serve`` included).
What cannot be tested here is Cloudflare's deployed side (account, store ids, scopes, routes).

The protocol tests also run the same fetch handler under plain Node 20
(``tests/js/cloudflare_worker_server.mjs``, ``env.PAYMASTER_KEY = {get: async () => key}``),
so the Worker's logic is checked where workerd is not installed. Either runner is skipped, with
the reason, when its npm packages are missing (``npm install --prefix deploy/cloudflare``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from eth_account import Account

from anode.devchain.anvil import free_port
from anode.signers.local import LocalKeySigner
from tests.support.signer_contract import SignerContract

ROOT = Path(__file__).resolve().parents[2]
CLOUDFLARE = ROOT / "deploy" / "cloudflare"
WRANGLER = CLOUDFLARE / "node_modules" / ".bin" / "wrangler"
HARNESS = ROOT / "tests" / "js" / "cloudflare_worker_server.mjs"
KEY = "0x" + "c10dfa7e" * 8
TOKEN = "worker-bearer-token-61ac"
SIGN = {"algorithm": "secp256k1-ecdsa-digest", "data": "0x" + "ab" * 32, "key_id": "paymaster"}


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a runner and its children (wrangler starts workerd), which share its new session."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass
    if process.stdout is not None:
        process.stdout.close()


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the Worker runner exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", headers={"authorization": f"Bearer {TOKEN}"}, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the Worker did not become healthy:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def wrangler_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``wrangler dev`` on the shipped wrangler.toml, its Secrets Store secrets in a local store."""
    if not WRANGLER.exists():
        pytest.skip("wrangler is not installed: npm install --prefix deploy/cloudflare")
    state = tmp_path_factory.mktemp("wrangler")
    env = {
        **os.environ,
        "WRANGLER_SEND_METRICS": "false",
        "CI": "1",
        "NO_COLOR": "1",
        "WRANGLER_LOG_PATH": str(state / "logs"),
    }
    bindings = tomllib.loads((CLOUDFLARE / "wrangler.toml").read_text())["secrets_store_secrets"]
    values = {"PAYMASTER_KEY": KEY, "SIGNER_TOKEN": TOKEN}
    for binding in bindings:
        command = [str(WRANGLER), "secrets-store", "secret", "create", binding["store_id"]]
        command += ["--name", binding["secret_name"], "--value", values[binding["binding"]], "--scopes", "workers"]
        subprocess.run([*command, "--persist-to", str(state)], cwd=CLOUDFLARE, env=env, check=True, capture_output=True)
    port = free_port()
    log = state / "dev.log"
    command = [str(WRANGLER), "dev", "--ip", "127.0.0.1", "--port", str(port), "--persist-to", str(state)]
    command += ["--inspector-port", str(free_port())]
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command, cwd=CLOUDFLARE, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, log, 60)
        yield url
    finally:
        _stop(process)


def _node_worker(state: Path, key: str) -> tuple[str, subprocess.Popen[bytes]]:
    if shutil.which("node") is None or not (CLOUDFLARE / "node_modules" / "@noble" / "curves").exists():
        pytest.skip("node or @noble/curves is missing: npm install --prefix deploy/cloudflare")
    env = {**os.environ, "WORKER_PAYMASTER_KEY": key, "WORKER_SIGNER_TOKEN": TOKEN}
    log = state / "node.log"
    with open(log, "wb") as errors:
        process = subprocess.Popen(
            ["node", str(HARNESS)], env=env, stdout=subprocess.PIPE, stderr=errors, start_new_session=True
        )
    assert process.stdout is not None
    line = process.stdout.readline().decode().split()
    if line[:1] != ["listening"]:
        _stop(process)
        raise RuntimeError(f"the Node harness did not start:\n{log.read_text()}")
    return f"http://127.0.0.1:{line[1]}", process


@pytest.fixture(scope="module")
def node_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url, process = _node_worker(tmp_path_factory.mktemp("node-worker"), KEY)
    yield url
    _stop(process)


@pytest.fixture(params=["wrangler", "node"])
def worker(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_worker")
    return url


class TestCloudflareSecretsSigner(SignerContract):
    """aNode's ``cloudflare_secrets`` signer on the Worker in workerd, with real Secrets Store bindings."""

    backend = "cloudflare_secrets"

    @pytest.fixture
    def signer_config(self, wrangler_worker: str) -> dict[str, Any]:
        return {"type": "cloudflare_secrets", "url": wrangler_worker, "token": TOKEN}

    @pytest.fixture
    def signer_env(self) -> dict[str, str]:
        return {}

    @pytest.fixture
    def signer_secrets(self) -> list[str]:
        return [KEY[2:], TOKEN]


def sign(url: str, body: dict[str, Any], token: str | None = TOKEN) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{url}/sign", json=body, headers=headers)


def test_signatures_are_byte_for_byte_those_of_libsecp256k1(worker: str) -> None:
    """RFC 6979 nonces on both sides: the Worker's noble-curves signature equals coincurve's."""
    local = LocalKeySigner.from_hex(KEY)
    for digest in (os.urandom(32), b"\x00" * 31 + b"\x01", b"\xff" * 32):
        reply = sign(worker, {**SIGN, "data": "0x" + digest.hex()})
        assert reply.status_code == 200
        body = reply.json()
        assert body["signature"] == "0x" + local.sign_now(digest).signature.hex()
        assert body == {"signature": body["signature"], "address": local.address, "key_id": "paymaster"}


def test_health_and_key_routes(worker: str) -> None:
    headers = {"authorization": f"Bearer {TOKEN}"}
    address = Account.from_key(KEY).address
    for method in ("GET", "POST"):
        reply = httpx.request(method, f"{worker}/health", headers=headers)
        assert reply.json() == {"status": "ok", "keys": [{"key_id": "paymaster", "address": address}]}
    assert httpx.get(f"{worker}/keys/paymaster", headers=headers).json() == {"key_id": "paymaster", "address": address}
    assert httpx.get(f"{worker}/keys/other", headers=headers).status_code == 404


@pytest.mark.parametrize(
    ("body", "token", "status", "code"),
    [
        (SIGN, "wrong-token", 401, "unauthorized"),
        (SIGN, None, 401, "unauthorized"),
        ({**SIGN, "key_id": "other"}, TOKEN, 404, "unknown_key"),
        ({**SIGN, "algorithm": "keccak256"}, TOKEN, 400, "unsupported_algorithm"),
        ({**SIGN, "data": "0x" + "ab" * 33}, TOKEN, 400, "bad_request"),
        ({**SIGN, "data": 12}, TOKEN, 400, "bad_request"),
    ],
    ids=["wrong-token", "no-token", "unknown-key", "algorithm", "long-data", "data-not-text"],
)
def test_refusals(worker: str, body: dict[str, Any], token: str | None, status: int, code: str) -> None:
    reply = sign(worker, body, token)
    assert reply.status_code == status
    assert reply.json()["error"]["code"] == code
    if status == 401:
        assert reply.headers["www-authenticate"].startswith("Bearer")
    assert TOKEN not in reply.text and KEY[2:] not in reply.text


def test_routes_need_the_token_and_unknown_ones_are_404(worker: str) -> None:
    assert httpx.get(f"{worker}/nowhere").status_code == 401
    assert httpx.get(f"{worker}/nowhere", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 404
    not_json = httpx.post(f"{worker}/sign", content=b"{", headers={"authorization": f"Bearer {TOKEN}"})
    assert (not_json.status_code, not_json.json()["error"]["code"]) == (400, "bad_request")


def test_a_secret_that_is_not_a_key_is_503_without_echoing_it(tmp_path: Path) -> None:
    url, process = _node_worker(tmp_path, "0xnot-a-key-but-a-secret")
    try:
        reply = httpx.post(f"{url}/health", headers={"authorization": f"Bearer {TOKEN}"})
        assert reply.status_code == 503
        assert reply.json()["error"] == {"code": "signer_unavailable", "message": "PAYMASTER_KEY is not 64 hex digits"}
        assert "not-a-key-but-a-secret" not in reply.text
    finally:
        _stop(process)
