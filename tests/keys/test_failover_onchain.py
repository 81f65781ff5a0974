"""Losing the primary signer under load, with the whole server, on anvil: no request fails, and
the paymaster data every backend produced is accepted by the real EntryPoint.

Two ways to lose it: an in-process backend (``tests/keys/fakes.py``) that starts hanging and
then its same-key replica starts failing; and aNode's own key server (``anode keyserver serve``)
running as a separate process that is killed (SIGKILL) mid-load.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from anode.devchain.anvil import Anvil, free_port
from anode.devchain.deploy import Deployment
from tests.keys import fakes
from tests.keys.conftest import ADDRESS_8, ADDRESS_9, KEY_8, KEY_9
from tests.keys.support import App, Wallet, app_config, running_app
from tests.support.onchain import UserOp

VERSION = "v0.7"


async def load(
    app: App,
    wallet: Wallet,
    paymaster: str,
    *,
    total: int,
    concurrency: int,
    events: dict[int, Callable[[], None]],
    sample_every: int,
) -> list[tuple[str, str]]:
    """``total`` pm_getPaymasterData calls; ``events[n]`` runs after the n-th answer. Every
    ``sample_every``-th answer is a fresh account's op, submitted on chain at once. Returns the
    samples' (paymaster signer, outcome) pairs."""
    base = wallet.new_op()
    done = 0
    samples: list[tuple[str, str]] = []
    pending: list[Awaitable[None]] = []
    queue = list(range(total))

    async def sample(op: UserOp) -> None:
        signer = wallet.paymaster_signer(op, paymaster)
        outcome = await wallet.submit(op)
        samples.append((signer, "ok" if outcome.success else str(outcome.reason)))

    async def worker() -> None:
        nonlocal done
        while queue:
            index = queue.pop()
            fresh = index % sample_every == 0
            op = await asyncio.to_thread(wallet.new_op) if fresh else base
            signed, _ = await wallet.sponsor(app, op)
            done += 1
            if done in events:
                events[done]()
            if fresh:
                pending.append(sample(signed))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await asyncio.gather(*pending)
    return samples


def backends_in_audit(app: App) -> dict[str, int]:
    import sqlalchemy as sa

    from anode.store.audit import audit_log

    engine = sa.create_engine(app.anode.settings.database_url.get_secret_value())
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.select(audit_log.c.backend, sa.func.count()).group_by(audit_log.c.backend)
            ).all()
    finally:
        engine.dispose()
    return {str(backend): int(n) for backend, n in rows}


async def test_an_in_process_primary_dies_under_load_and_no_request_fails(
    anvil: Anvil, deployment: Deployment, tmp_path: Path
) -> None:
    paymaster = deployment.singleton_paymasters[VERSION]
    signer = {
        "primary": {"type": "flaky", "private_key": KEY_9, "control": "p"},
        "backups": [
            {"type": "flaky", "private_key": KEY_9, "control": "replica"},  # the same key elsewhere
            {"type": "local", "private_key": KEY_8, "paymasters": [paymaster]},  # another signer of the paymaster
        ],
        "timeout_ms": 200,
        "retry": {"attempts": 2, "backoff_ms": 10},
        "circuit": {"failures": 3, "reset_after_s": 60},
        "health_interval_s": 0.5,
    }
    tree = app_config(anvil, deployment, signer, tmp_path, [("singleton", VERSION), ("verifying", "v0.6")])
    wallet = Wallet(anvil, deployment, VERSION)

    def kill(name: str, mode: fakes.Mode) -> Callable[[], None]:
        def act() -> None:
            fakes.control(name).mode = mode

        return act

    async with running_app(tree) as app:
        samples = await load(
            app, wallet, paymaster, total=450, concurrency=30, sample_every=15,
            events={150: kill("p", "hang"), 300: kill("replica", "fail")},
        )  # fmt: skip
        health = (await app.http.get("/health")).json()
        metrics = (await app.http.get("/metrics")).text
    assert all(outcome == "ok" for _, outcome in samples), samples
    assert {signer for signer, _ in samples} == {ADDRESS_9, ADDRESS_8}
    by_backend = backends_in_audit(app)
    assert sum(by_backend.values()) == 450
    assert by_backend["primary:flaky"] >= 150 and by_backend["backup1:flaky"] > 0 and by_backend["backup2:local"] > 0
    # the SingletonPaymaster is served by its other signer; the VerifyingPaymaster accepts only the dead key
    signing = health["signing"]
    assert signing["status"] == "down" and health["status"] == "degraded"
    assert [b["healthy"] for b in signing["backends"]] == [False, False, True]
    assert [(p["contract"], p["signingWith"]) for p in signing["paymasters"]] == [
        ("singleton", "backup2:local"),
        ("verifying", None),
    ]
    assert 'anode_signer_failovers_total{backend="primary:flaky"}' in metrics
    assert 'anode_signer_errors_total{backend="primary:flaky",kind="timeout",type="flaky"}' in metrics


# -- a key server process, killed ---------------------------------------------------------------


@pytest.fixture
def keyserver(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``anode keyserver serve`` holding account 9's key; yields its URL and process."""
    port = free_port()
    config = tmp_path / "keyserver.yaml"
    config.write_text(yaml.safe_dump({
        "keys": [{"id": "paymaster", "signer": {"type": "local", "private_key": KEY_9}, "allowed_callers": ["anode"]}],
        "tokens": [{"id": "anode", "token": "keys-test-token"}],
        "audit_log": str(tmp_path / "keyserver-audit.jsonl"),
    }))  # fmt: skip
    log = open(tmp_path / "keyserver.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "anode.keyserver", "serve", "--config", str(config), "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError((tmp_path / "keyserver.log").read_text()[-2000:])
            try:
                headers = {"authorization": "Bearer keys-test-token"}
                if httpx.get(f"{url}/keys/paymaster", headers=headers, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the key server did not start")
            time.sleep(0.1)
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)
        log.close()


async def test_a_key_server_process_killed_under_load_loses_no_request(
    anvil: Anvil, deployment: Deployment, tmp_path: Path, keyserver: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, process = keyserver
    paymaster = deployment.singleton_paymasters[VERSION]
    signer: dict[str, Any] = {
        "primary": {"type": "remote", "url": url, "token": "keys-test-token", "key_id": "paymaster",
                    "timeout_seconds": 1.0},
        "backups": [{"type": "local", "private_key": KEY_9}],
        "timeout_ms": 1500,
        "retry": {"attempts": 2, "backoff_ms": 10},
        "circuit": {"failures": 3, "reset_after_s": 60},
        "health_interval_s": 0.5,
    }  # fmt: skip
    tree = app_config(anvil, deployment, signer, tmp_path, [("singleton", VERSION)])
    wallet = Wallet(anvil, deployment, VERSION)

    def kill() -> None:
        os.kill(process.pid, signal.SIGKILL)

    async with running_app(tree) as app:
        samples = await load(app, wallet, paymaster, total=300, concurrency=20, sample_every=20, events={100: kill})
        health = (await app.http.get("/health")).json()
    assert process.wait(timeout=5) == -signal.SIGKILL
    assert all(outcome == "ok" for _, outcome in samples), samples
    by_backend = backends_in_audit(app)
    assert sum(by_backend.values()) == 300
    assert by_backend["primary:remote"] >= 100 and by_backend["backup1:local"] > 0
    assert health["signing"]["backends"][0]["healthy"] is False
