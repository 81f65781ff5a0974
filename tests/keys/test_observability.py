"""What an operator sees of the signers, on a whole server on anvil: ``GET /metrics`` (one registry
per app, so two apps in a process count apart), ``GET /health``'s signing snapshot, request ids in
the audit log, and no key material anywhere: logs at DEBUG, responses, reprs."""

from __future__ import annotations

import base64
import logging
import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from anode.devchain.anvil import Anvil
from anode.devchain.deploy import Deployment
from anode.store import audit
from tests.keys.conftest import ADDRESS_9, KEY_9
from tests.keys.support import Wallet, app_config, running_app

VERSION = "v0.7"


def audit_records(url: str) -> list[dict[str, Any]]:
    engine = sa.create_engine(url)
    try:
        return audit.records(engine)
    finally:
        engine.dispose()


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from Prometheus text (labels in any order)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if found == labels:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_count_per_app_and_request_ids_reach_the_audit_log(
    anvil: Anvil, deployment: Deployment, tmp_path: Path
) -> None:
    wallet = Wallet(anvil, deployment, VERSION)
    pairs = [("singleton", VERSION)]
    one = app_config(anvil, deployment, {"type": "local", "private_key": KEY_9}, tmp_path / "one", pairs)
    two = app_config(anvil, deployment, {"type": "local", "private_key": KEY_9}, tmp_path / "two", pairs)
    op = wallet.new_op()
    async with running_app(one) as first, running_app(two) as second:
        asked = await first.http.post(
            "/api/v1/rpc",
            json={"jsonrpc": "2.0", "id": 1, "method": "pm_getPaymasterData", "params": wallet.params(op)},
            headers={"x-request-id": "wallet-42"},
        )
        assert asked.headers["x-request-id"] == "wallet-42" and "result" in asked.json()
        unnamed = await first.rpc("pm_getPaymasterData", wallet.params(op))
        assert "result" in unnamed
        await first.rpc("pm_getPaymasterStubData", wallet.params(op))
        bad = await first.rpc("pm_getPaymasterData", [{"sender": "0x12"}, wallet.entry_point, wallet.chain_hex, {}])
        assert bad["error"]["data"]["anodeCode"] == "ANODE_INVALID_PARAMS"
        odd = await first.http.get("/health", headers={"x-request-id": "no spaces allowed"})
        assert re.fullmatch(r"[0-9a-f]{16}", odd.headers["x-request-id"])
        text = (await first.http.get("/metrics")).text
        other = (await second.http.get("/metrics")).text
        records = audit_records(first.anode.settings.database_url.get_secret_value())

    assert metric(text, "anode_sponsorships_total", method="pm_getPaymasterData", result="ok") == 2
    assert metric(text, "anode_sponsorships_total", method="pm_getPaymasterStubData", result="ok") == 1
    assert metric(text, "anode_sponsorships_total", method="pm_getPaymasterData", result="ANODE_INVALID_PARAMS") == 1
    assert metric(text, "anode_signer_signatures_total", backend="primary:local", type="local") == 2
    assert metric(text, "anode_signer_latency_seconds_count", backend="primary:local", type="local") == 2
    assert metric(text, "anode_signer_circuit_state", backend="primary:local") == 0
    assert metric(text, "anode_signer_healthy", backend="primary:local") == 1
    assert metric(text, "anode_http_request_duration_seconds_count", method="POST", route="/api/v1/rpc",
                  status="200") == 4  # fmt: skip
    assert metric(text, "anode_http_request_duration_seconds_count", method="GET", route="/health", status="200") == 1
    assert metric(other, "anode_sponsorships_total", method="pm_getPaymasterData", result="ok") == 0

    signatures = [r for r in records if r["kind"] == "signature"]
    assert len(signatures) == 2 and signatures[0]["request_id"] == "wallet-42"
    assert re.fullmatch(r"[0-9a-f]{16}", signatures[1]["request_id"])
    assert {(r["signer"], r["backend"]) for r in signatures} == {(ADDRESS_9, "primary:local")}


async def test_health_shows_each_backend_and_what_signs_for_each_paymaster(
    anvil: Anvil, deployment: Deployment, tmp_path: Path
) -> None:
    paymaster = deployment.singleton_paymasters[VERSION]
    signer = {
        "primary": {"type": "local", "private_key": KEY_9},
        "backups": [{"type": "local", "private_key": KEY_9, "name": "kms-replica"}],
    }
    tree = app_config(anvil, deployment, signer, tmp_path, [("singleton", VERSION)])
    async with running_app(tree) as app:
        health = (await app.http.get("/health")).json()
    assert health["status"] == "ok"
    assert health["signer"] == {"address": ADDRESS_9, "backend": "local"}
    signing = health["signing"]
    assert signing["status"] == "ok"
    assert [(b["name"], b["role"], b["healthy"], b["circuit"], b["paymasters"]) for b in signing["backends"]] == [
        ("primary:local", "primary", True, "closed", "all"),
        ("kms-replica", "backup", True, "closed", "all"),
    ]
    assert signing["paymasters"] == [
        {"chainId": deployment.chain_id, "paymaster": paymaster, "contract": "singleton",
         "signingWith": "primary:local", "candidates": ["primary:local", "kms-replica"]}
    ]  # fmt: skip


def secret_forms(key: str) -> list[str]:
    raw = bytes.fromhex(key.removeprefix("0x"))
    body = raw.hex()
    return [
        body, "0x" + body, body.upper(),
        base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode(), base64.b64encode(raw).decode()[:40],
    ]  # fmt: skip


async def test_no_key_material_in_logs_responses_or_reprs_across_a_sponsorship(
    anvil: Anvil, deployment: Deployment, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Start-up, health probes, stub and final data (JSON-RPC and REST), a refused request, an
    on-chain submission, /health and /metrics: the key appears in none of it, in any encoding."""
    caplog.set_level(logging.DEBUG)
    signer = {"primary": {"type": "local", "private_key": KEY_9}, "backups": [{"type": "local", "private_key": KEY_9}],
              "health_interval_s": 0.05}  # fmt: skip
    tree = app_config(anvil, deployment, signer, tmp_path, [("singleton", VERSION)])
    wallet = Wallet(anvil, deployment, VERSION)
    seen: list[str] = []
    async with running_app(tree) as app:
        op = wallet.new_op()
        for method in ("pm_getPaymasterStubData", "pm_getPaymasterData"):
            reply = await app.rpc(method, wallet.params(op))
            assert "result" in reply
            seen.append(str(reply))
        signed, _ = await wallet.sponsor(app, op)
        assert (await wallet.submit(signed)).success
        rest = await app.http.post(
            "/api/v1/paymaster/sponsor", json={"userOperation": wallet.params(wallet.new_op())[0],
                                               "entryPoint": wallet.entry_point, "chainId": deployment.chain_id},
        )  # fmt: skip
        assert rest.status_code == 200
        refused = await app.rpc("pm_getPaymasterData", [{"sender": "0x1"}, wallet.entry_point, wallet.chain_hex])
        for path in ("/health", "/metrics", "/openapi.json"):
            seen.append((await app.http.get(path)).text)
        seen += [rest.text, str(refused)]
        seen += [repr(app.anode), repr(app.anode.signer), repr(app.anode.settings), str(app.anode.settings)]
        seen += [repr(app.anode.settings.signer), app.anode.settings.model_dump_json()]
        seen += [str(record) for record in audit_records(app.anode.settings.database_url.get_secret_value())]
    text = caplog.text + "\n".join(seen)
    assert "primary:local" in text and ADDRESS_9 in text  # the haystack is the real one
    assert caplog.records, "nothing was logged: the test would prove nothing"
    for form in secret_forms(KEY_9):
        assert form not in text, f"key material ({form[:6]}…) leaked"


def test_secret_forms_would_be_found() -> None:
    """The grep above is not vacuous: the forms it looks for are the key's."""
    forms: list[Any] = secret_forms(KEY_9)
    assert KEY_9 in forms and KEY_9[2:] in forms
    assert base64.b64decode(forms[3]) == bytes.fromhex(KEY_9[2:])
