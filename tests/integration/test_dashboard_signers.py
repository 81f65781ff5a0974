"""Signer failovers reach ``signer_events`` and the dashboard's data, from a real failure.

The primary signer is a key server process (``anode keyserver serve``), the backup the same key
in process; the app runs in this process on anvil. While the key server answers, signing writes
no signer event at all; once it is killed (SIGKILL), every operation fails over exactly once,
and ``/dashboard/api/signer-events`` counts exactly those. The same operations' reservations in a
policy with two amount limits come back once per operation from ``/dashboard/api/policy-spend``.

The key server restarted on the same port (same key) closes the circuit again, and that is
recorded too: by the half-open trial of a request (no health probes), or by the health probe
(``unhealthy`` / ``circuit_open`` while it is down, then ``healthy`` / ``circuit_closed``).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import sqlalchemy as sa

from anode.devchain.anvil import Anvil
from anode.devchain.deploy import Deployment
from anode.store.database import create_engine
from anode.store.tables import signer_events, sponsorships
from tests.integration.test_dashboard_browser import (
    KEYSERVER_TOKEN,
    counter,
    keyserver_process,
    remote_primary,
    until,
)
from tests.keys.support import Wallet, app_config, running_app

VERSION = "v0.7"
ADMIN_KEY = "dashboard-admin-key-0123456789"
BEFORE, AFTER = 3, 4


def _rows(url: str, table: sa.Table) -> list[sa.RowMapping]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(sa.select(table).order_by(table.c.id)).mappings().all())
    finally:
        engine.dispose()


async def test_a_dead_key_server_fails_over_and_the_dashboard_counts_each_failover(
    anvil: Anvil, deployment: Deployment, paymaster_key: str, tmp_path: Path
) -> None:
    (tmp_path / "keyserver").mkdir()
    with keyserver_process(paymaster_key, tmp_path / "keyserver") as (url, process):
        signer = remote_primary(
            url,
            paymaster_key,
            retry={"attempts": 2, "backoff_ms": 1},
            circuit={"failures": 3, "reset_after_s": 600},
            health_interval_s=0,  # one probe at start-up, none later: the events are the requests'
        )
        tree = app_config(anvil, deployment, signer, tmp_path, [("singleton", VERSION)])
        tree["auth"]["admin_keys"] = [ADMIN_KEY]
        tree["pipeline"] = {"modules": [{"name": "policy_engine"}, {"name": "paymaster_signer"}]}
        tree["policies"] = [{
            "id": "cap", "name": "two caps", "type": "project",
            "rate_limits": [{"type": "amount", "limit": "1 ether", "window": 86400},
                            {"type": "amount", "limit": "1 ether", "window": 3600}],
        }]  # fmt: skip
        database = tree["database_url"]
        wallet = Wallet(anvil, deployment, VERSION)
        admin = {"authorization": f"Bearer {ADMIN_KEY}"}
        async with running_app(tree) as app:
            for _ in range(BEFORE):
                await wallet.sponsor(app, wallet.new_op())
            app.anode.signer_events.flush()  # type: ignore[union-attr]
            assert _rows(database, signer_events) == []  # signing as usual writes nothing
            process.send_signal(signal.SIGKILL)
            assert process.wait(timeout=10) == -signal.SIGKILL
            for _ in range(AFTER):
                _, answer = await wallet.sponsor(app, wallet.new_op())
                assert answer["paymasterData"]
            events = (await app.http.get("/dashboard/api/signer-events", headers=admin)).json()
            spend = (await app.http.get("/dashboard/api/policy-spend?bucket=hour", headers=admin)).json()
            metrics = (await app.http.get("/metrics", headers=admin)).text

    rows = _rows(database, signer_events)
    kinds: Counter[str] = Counter()
    for row in rows:
        kinds[row["kind"]] += row["count"]
    assert kinds == {"failover": AFTER, "circuit_open": 1}, rows
    failover = next(row for row in rows if row["kind"] == "failover")
    assert (failover["backend"], failover["to_backend"]) == ("primary:remote", "backup1:local")
    assert failover["address"] == failover["to_address"]  # the same key elsewhere
    assert "unreachable" in failover["detail"] and "keyserver-token" not in failover["detail"]
    hours = {row["at"].replace(minute=0, second=0, microsecond=0) for row in rows if row["kind"] == "failover"}
    assert sum(f["count"] for f in events["failovers"]) == AFTER and len(events["failovers"]) == len(hours)
    assert {(f["backend"], f["toBackend"]) for f in events["failovers"]} == {("primary:remote", "backup1:local")}
    assert 'anode_signer_failovers_total{backend="primary:remote"} 4.0' in metrics
    assert [e["kind"] for e in events["events"]] == [row["kind"] for row in reversed(rows)]

    ledger = _rows(database, sponsorships)
    assert len(ledger) == BEFORE + AFTER
    by_hour: dict[str, tuple[int, int]] = {}
    for row in ledger:
        hour = row["created_at"].replace(minute=0, second=0, microsecond=0, tzinfo=None).isoformat() + "+00:00"
        count, wei = by_hour.get(hour, (0, 0))
        by_hour[hour] = (count + 1, wei + row["max_gas_cost_wei"])
    assert spend["names"] == {"cap": "two caps"}
    assert spend["rows"] == [
        {"bucket": hour, "chainId": deployment.chain_id, "policyId": "cap", "operations": count, "included": 0,
         "reservedWei": str(wei), "actualWei": "0"}
        for hour, (count, wei) in sorted(by_hour.items())
    ]  # fmt: skip


@contextmanager
def restarted_keyserver(url: str, directory: Path) -> Iterator[None]:
    """``anode keyserver serve`` again, on ``url``'s port with the configuration ``keyserver_process`` wrote."""
    port = urlsplit(url).port
    assert port is not None
    with open(directory / "keyserver-again.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "anode.keyserver", "serve", "--config", str(directory / "keyserver.yaml"),
             "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:

        def answers() -> bool:
            assert process.poll() is None, (directory / "keyserver-again.log").read_text()[-2000:]
            try:
                headers = {"authorization": f"Bearer {KEYSERVER_TOKEN}"}
                return httpx.get(f"{url}/keys/paymaster", headers=headers, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        until("the restarted key server", answers, within=30)
        yield
    finally:
        process.terminate()
        process.wait(timeout=10)


async def _eventually(what: str, condition: Any, within: float = 30.0) -> None:
    """Poll ``condition`` without blocking the app's event loop (its health task runs on it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        assert loop.time() < deadline, f"{what} did not happen within {within} s"
        await asyncio.sleep(0.05)


def _primary(app: Any) -> dict[str, Any]:
    backends: list[dict[str, Any]] = app.anode.signer.health()["backends"]
    return next(b for b in backends if b["name"] == "primary:remote")


async def test_a_restarted_key_server_closes_the_circuit_on_a_requests_trial_and_that_is_recorded(
    anvil: Anvil, deployment: Deployment, paymaster_key: str, tmp_path: Path
) -> None:
    directory = tmp_path / "keyserver"
    directory.mkdir()
    with keyserver_process(paymaster_key, directory) as (url, process):
        signer = remote_primary(
            url,
            paymaster_key,
            retry={"attempts": 2, "backoff_ms": 1},
            circuit={"failures": 3, "reset_after_s": 1},
            health_interval_s=0,  # no probes after start-up: a request's trial closes the circuit
        )
        tree = app_config(anvil, deployment, signer, tmp_path, [("singleton", VERSION)])
        tree["auth"]["admin_keys"] = [ADMIN_KEY]
        database = tree["database_url"]
        wallet = Wallet(anvil, deployment, VERSION)
        admin = {"authorization": f"Bearer {ADMIN_KEY}"}
        async with running_app(tree) as app:
            process.send_signal(signal.SIGKILL)
            assert process.wait(timeout=10) == -signal.SIGKILL
            for _ in range(2):  # 2 attempts each: the third failure opens the circuit
                await wallet.sponsor(app, wallet.new_op())
            assert _primary(app)["circuit"] == "open"
            with restarted_keyserver(url, directory):
                await _eventually("the half-open state", lambda: _primary(app)["circuit"] == "half_open")
                before = counter((await app.http.get("/metrics", headers=admin)).text,
                                 "anode_signer_signatures_total", backend="primary:remote")  # fmt: skip
                _, answer = await wallet.sponsor(app, wallet.new_op())  # the trial: signed by the key server
                assert answer["paymasterData"]
                metrics = (await app.http.get("/metrics", headers=admin)).text
                assert counter(metrics, "anode_signer_signatures_total", backend="primary:remote") == before + 1
                assert _primary(app)["circuit"] == "closed"
                events = (await app.http.get("/dashboard/api/signer-events", headers=admin)).json()

    rows = _rows(database, signer_events)
    # the failover once the circuit is open has another reason ("circuit open"): a row of its own
    assert [(row["kind"], row["count"], row["detail"]) for row in rows][2] == (
        "failover", 1, "primary:remote: circuit open"
    ), rows  # fmt: skip
    assert [(row["kind"], row["count"]) for row in rows] == [
        ("failover", 1), ("circuit_open", 1), ("failover", 1), ("circuit_closed", 1)
    ], rows  # fmt: skip
    closed = rows[-1]
    assert (closed["backend"], closed["detail"], closed["to_backend"]) == ("primary:remote", None, None)
    assert [e["kind"] for e in events["events"]] == ["circuit_closed", "failover", "circuit_open", "failover"]


async def test_a_restarted_key_server_is_healthy_again_by_the_health_probe_and_that_is_recorded(
    anvil: Anvil, deployment: Deployment, paymaster_key: str, tmp_path: Path
) -> None:
    directory = tmp_path / "keyserver"
    directory.mkdir()
    with keyserver_process(paymaster_key, directory) as (url, process):
        signer = remote_primary(
            url,
            paymaster_key,
            circuit={"failures": 3, "reset_after_s": 600},  # no half-open trial: only the probe closes it
            health_interval_s=0.2,
        )
        tree = app_config(anvil, deployment, signer, tmp_path, [("singleton", VERSION)])
        tree["auth"]["admin_keys"] = [ADMIN_KEY]
        database = tree["database_url"]
        admin = {"authorization": f"Bearer {ADMIN_KEY}"}
        async with running_app(tree) as app:
            assert _primary(app)["healthy"] is True
            process.send_signal(signal.SIGKILL)
            assert process.wait(timeout=10) == -signal.SIGKILL
            await _eventually("three failed probes", lambda: _primary(app)["circuit"] == "open")
            assert _primary(app)["healthy"] is False
            with restarted_keyserver(url, directory):
                await _eventually("a good probe", lambda: _primary(app)["healthy"] is True)
                assert _primary(app)["circuit"] == "closed"
                events = (await app.http.get("/dashboard/api/signer-events", headers=admin)).json()

    # after these, the key server stopped again before the app did: a last "unhealthy" may follow
    rows = _rows(database, signer_events)[:4]
    assert [(row["kind"], row["count"]) for row in rows] == [
        ("unhealthy", 1), ("circuit_open", 1), ("healthy", 1), ("circuit_closed", 1)
    ], rows  # fmt: skip
    assert all(row["backend"] == "primary:remote" for row in rows)
    assert rows[1]["detail"].startswith("health probe: ") and "keyserver-token" not in rows[1]["detail"]
    assert [e["kind"] for e in events["events"]] == ["circuit_closed", "healthy", "circuit_open", "unhealthy"]
