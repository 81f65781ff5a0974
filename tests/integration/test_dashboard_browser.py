"""The dashboard in a real browser: Debian's ``chromium`` (headless) through ``chromium-driver``.

A real ``anode serve`` on anvil (the follower and the deposit monitor on) sponsors operations,
two of them are included on chain, some requests are refused; its primary signer is a key server
process (``anode keyserver serve``), killed after the first operation, so the other two fail over
to the backup. Then the browser logs in with the admin key and the test reads back what the page
plotted (uPlot's own data arrays) and compares it with the ledger, the reservations reconciliation
settled, the EntryPoint's events, the signer events and the server's Prometheus counters.
``scripts/setup --for-tests`` installs the browser.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import yaml
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from anode.devchain.anvil import Anvil, free_port
from anode.devchain.deploy import Deployment
from anode.store.database import create_engine
from anode.store.deposits import deposit_samples
from anode.store.reconcile import limit_reservations
from anode.store.tables import signer_events, sponsorships
from tests.support.onchain import UserOp
from tests.support.server import rpc, running_server
from tests.support.wallet import Client, rpc_op, server_config

CONTRACT, VERSION = "singleton", "v0.7"
ADMIN_KEY = "dashboard-admin-key-0123456789"
PROJECT_KEY = "dashboard-project-key-0123456789"
LOW_BALANCE_WEI = 999_995 * 10**14  # 99.9995 ETH: the sandbox's 100 ETH deposits cross it
#: where the screenshot for docs/dashboard.md is written when set (else the test's own directory)
SCREENSHOT_ENV = "ANODE_DASHBOARD_SCREENSHOT"
KEYSERVER_TOKEN = "dashboard-keyserver-token"


class ProjectClient(Client):
    """The wallet of ``tests/support/wallet.py``, calling with a project key."""

    def reply(self, method: str, op: UserOp, chain_id: int | None = None) -> Any:
        chain = self.deployment.chain_id if chain_id is None else chain_id
        params = [rpc_op(op, self.version), self.entry_point, hex(chain), {}]
        return rpc(self.url, method, params, api_key=PROJECT_KEY)

    def call(self, method: str, op: UserOp, context: dict[str, Any] | None = None) -> dict[str, Any]:
        answer = self.reply(method, op)
        assert "result" in answer, answer
        result: dict[str, Any] = answer["result"]
        return result


def browser() -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,2000"):
        options.add_argument(flag)
    service = Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    return webdriver.Chrome(options=options, service=service)


def until(what: str, condition: Any, within: float = 60.0) -> Any:
    """Poll ``condition`` (the follower and the sampler run in the server) until it is truthy."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} did not happen within {within} s"
        time.sleep(0.1)


def counter(metrics: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@contextmanager
def keyserver_process(key: str, directory: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``anode keyserver serve`` holding ``key`` as ``paymaster``; yields its URL and process."""
    port = free_port()
    config = directory / "keyserver.yaml"
    config.write_text(yaml.safe_dump({
        "keys": [{"id": "paymaster", "signer": {"type": "local", "private_key": key}, "allowed_callers": ["anode"]}],
        "tokens": [{"id": "anode", "token": KEYSERVER_TOKEN}],
        "audit_log": str(directory / "audit.jsonl"),
    }))  # fmt: skip
    with open(directory / "keyserver.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "anode.keyserver", "serve", "--config", str(config), "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:

        def answers() -> bool:
            assert process.poll() is None, (directory / "keyserver.log").read_text()[-2000:]
            try:
                headers = {"authorization": f"Bearer {KEYSERVER_TOKEN}"}
                return httpx.get(f"{url}/keys/paymaster", headers=headers, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        until("the key server", answers, within=30)
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)


def remote_primary(url: str, key: str, **settings: Any) -> dict[str, Any]:
    """``signer:``: the key server first, then the same key in process."""
    return {
        "primary": {"type": "remote", "url": url, "token": KEYSERVER_TOKEN, "key_id": "paymaster",
                    "timeout_seconds": 1.0},
        "backups": [{"type": "local", "private_key": key}],
        **settings,
    }  # fmt: skip


@pytest.fixture(scope="module")
def keyserver(
    paymaster_key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    with keyserver_process(paymaster_key, tmp_path_factory.mktemp("keyserver")) as running:
        yield running


@pytest.fixture(scope="module")
def served(
    anvil: Anvil,
    deployment: Deployment,
    paymaster_key: str,
    tmp_path_factory: pytest.TempPathFactory,
    keyserver: tuple[str, subprocess.Popen[bytes]],
) -> Iterator[tuple[str, sa.Engine]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('dashboard') / 'anode.db'}"
    config = server_config(anvil, deployment, paymaster_key, [(CONTRACT, VERSION)])
    config["signer"] = remote_primary(keyserver[0], paymaster_key, health_interval_s=0.5)
    config["chains"][0]["paymasters"][0]["low_balance_wei"] = LOW_BALANCE_WEI
    reply = httpx.post(anvil.rpc_url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber"}).json()
    head = int(reply["result"], 16)
    config.update({
        "database_url": url,
        "auth": {"api_keys": [PROJECT_KEY], "admin_keys": [ADMIN_KEY]},
        "watch": {"enabled": True, "confirmations": 0, "poll_seconds": 0.1, "start_block": head + 1},
        "deposits": {"enabled": True, "poll_seconds": 0.2},
        "pipeline": {"modules": [{"name": "policy_engine"}, {"name": "paymaster_signer"}]},
        "policies": [{
            "id": "daily-cap", "name": "daily cap", "type": "project",
            "rate_limits": [
                {"type": "request", "limit": 100, "window": 86400},
                {"type": "amount", "limit": "1 ether", "window": 86400},
            ],
        }],
    })  # fmt: skip
    with running_server(config) as base:
        ledger = create_engine(url)
        yield base, ledger
        ledger.dispose()


def test_the_dashboard_draws_what_the_ledger_and_the_chain_say(
    served: tuple[str, sa.Engine],
    keyserver: tuple[str, subprocess.Popen[bytes]],
    anvil: Anvil,
    deployment: Deployment,
    tmp_path: Path,
) -> None:
    base, ledger = served
    client = ProjectClient(base, anvil, deployment, VERSION)
    signed = [client.sponsor()[0]]
    keyserver[1].send_signal(signal.SIGKILL)  # the primary signer is gone: the next two fail over
    assert keyserver[1].wait(timeout=10) == -signal.SIGKILL
    signed += [client.sponsor()[0] for _ in range(2)]
    events = []
    for op in signed[:2]:
        result = client.submit(op)
        assert result.success, result.reason
        events.extend(result.events)
    refused = [client.reply("pm_getPaymasterData", client.new_op(), chain_id=999) for _ in range(2)]
    assert all(answer["error"]["data"]["anodeCode"] == "ANODE_UNSUPPORTED_CHAIN" for answer in refused), refused

    def rows() -> list[sa.RowMapping]:
        with ledger.connect() as connection:
            return list(connection.execute(sa.select(sponsorships)).mappings().all())

    until("the follower's reconciliation", lambda: sum(r["status"] == "included" for r in rows()) == 2)
    until("two deposit samples", lambda: _samples(ledger) >= 2)
    until("the primary's failed health probe", lambda: "unhealthy" in _signer_events(ledger))
    ledger_rows = rows()
    with ledger.connect() as connection:
        reservations = list(connection.execute(sa.select(limit_reservations)).mappings().all())
    counted = httpx.get(f"{base}/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"}).text

    driver = browser()
    try:
        driver.get(f"{base}/dashboard")
        assert "log in" in driver.title.lower()
        driver.find_element(By.ID, "key").send_keys(ADMIN_KEY)
        driver.find_element(By.ID, "login").click()
        main = WebDriverWait(driver, 60).until(
            lambda d: (m := d.find_element(By.ID, "dashboard")).get_attribute("data-state") != "loading" and m
        )
        assert main.get_attribute("data-state") == "ready", main.get_attribute("data-error")
        assert driver.get_cookie("anode_dashboard")["httpOnly"] is True
        plotted = driver.execute_script(
            "const out = {}; for (const [id, u] of Object.entries(window.anodeCharts))"
            " out[id] = {labels: u.series.slice(1).map(s => s.label), data: u.data,"
            " inked: (() => { const c = u.ctx.getImageData(0, 0, u.ctx.canvas.width, u.ctx.canvas.height).data;"
            " let n = 0; for (let i = 3; i < c.length; i += 4) if (c[i]) n++; return n; })()}; return out;"
        )
        shot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "dashboard.png")
        height = driver.execute_script("return Math.ceil(document.getElementById('dashboard').offsetHeight) + 60")
        metrics = {"width": 1400, "height": height, "deviceScaleFactor": 1, "mobile": False}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        driver.save_screenshot(str(shot))
        operations_text = driver.find_element(By.ID, "operations").text
        policies_text = driver.find_element(By.ID, "policies").text
        follower_text = driver.find_element(By.ID, "follower").text
        signers_text = driver.find_element(By.ID, "signers").text
        signer_events_text = driver.find_element(By.ID, "signer-events").text
    finally:
        driver.quit()

    chain = deployment.chain_id
    reply = httpx.post(anvil.rpc_url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber"}).json()
    head = int(reply["result"], 16)  # nothing was mined since the follower caught up
    assert f"{chain} {head} {head} 0 " in follower_text, follower_text
    reserved = sum(r["max_gas_cost_wei"] for r in ledger_rows)
    actual = sum(e.actual_gas_cost for e in events)
    for chart in ("spend-hour", "spend-day"):
        series = dict(zip(plotted[chart]["labels"], plotted[chart]["data"][1:], strict=True))
        assert sum(series[f"chain {chain} reserved"]) == pytest.approx(reserved / 1e18, rel=1e-9)
        assert sum(series[f"chain {chain} actual"]) == pytest.approx(actual / 1e18, rel=1e-9)
        assert plotted[chart]["inked"] > 0
    # per policy: one amount limit, so a reservation per operation; actual as reconciliation settled it
    assert {r["counter"] for r in reservations} == {"daily-cap:amount:86400:*"} and len(reservations) == 3
    assert sum(r["amount"] for r in reservations) == reserved
    assert sum(r["spent"] for r in reservations if r["state"] == "settled") == actual
    for chart in ("policy-spend-hour", "policy-spend-day"):
        series = dict(zip(plotted[chart]["labels"], plotted[chart]["data"][1:], strict=True))
        assert set(series) == {"policy daily-cap reserved", "policy daily-cap actual"}
        assert sum(series["policy daily-cap reserved"]) == pytest.approx(reserved / 1e18, rel=1e-9)
        assert sum(series["policy daily-cap actual"]) == pytest.approx(actual / 1e18, rel=1e-9)
        assert plotted[chart]["inked"] > 0
    # failovers: the two operations signed after the key server died, each moved on once
    failovers = dict(zip(plotted["signer-failovers"]["labels"], plotted["signer-failovers"]["data"][1:], strict=True))
    assert list(failovers) == ["primary:remote → backup1:local"]
    written = _signer_events(ledger)["failover"]
    assert sum(failovers["primary:remote → backup1:local"]) == written == 2
    assert counter(counted, "anode_signer_failovers_total", backend="primary:remote") == 2
    assert plotted["signer-failovers"]["inked"] > 0
    # the table counts its failovers over 48 hours; the circuit may be open or half-open by now
    assert re.search(r"^primary:remote remote primary no [a-z_]+ 2 ", signers_text, re.M), signers_text
    assert "unhealthy primary:remote" in signer_events_text, signer_events_text
    assert "failover primary:remote backup1:local" in signer_events_text, signer_events_text
    outcomes = dict(zip(plotted["outcomes"]["labels"], plotted["outcomes"]["data"][1:], strict=True))
    assert sum(outcomes["accepted"]) == counter(counted, "anode_sponsorships_total", result="ok") == 6
    refused_counted = counter(counted, "anode_sponsorships_total", result="ANODE_UNSUPPORTED_CHAIN")
    assert sum(outcomes["refused"]) == refused_counted == 2
    deposits = dict(zip(plotted["deposits"]["labels"], plotted["deposits"]["data"][1:], strict=True))
    (line,) = [label for label in deposits if label.startswith("threshold")]
    assert set(deposits[line]) == {LOW_BALANCE_WEI / 1e18}
    (balance,) = [label for label in deposits if label.startswith(f"chain {chain}")]
    sampled = [v for v in deposits[balance] if v is not None]
    recorded = [wei / 1e18 for wei in _deposits(ledger)]  # the sampler kept going after the page loaded
    assert len(sampled) >= 2 and sampled == pytest.approx(recorded[: len(sampled)], rel=1e-12)
    assert operations_text.count("included") == 2 and operations_text.count("signed") == 1
    assert "daily-cap project request / 86400 s 3 100" in policies_text  # three operations signed under it
    # the amount limit: each maximum cost reserved at signing; the two included now count their actual cost
    held = sum(r["max_gas_cost_wei"] for r in ledger_rows if r["status"] == "signed")
    used = f"{(actual + held) / 1e18:.6f} {actual / 1e18:.6f} {held / 1e18:.6f} 1.000000"
    assert f"daily-cap project amount / 86400 s {used}" in policies_text


def _signer_events(ledger: sa.Engine) -> dict[str, int]:
    """Signer events written so far: kind → how many."""
    with ledger.connect() as connection:
        query = sa.select(signer_events.c.kind, sa.func.sum(signer_events.c["count"])).group_by(signer_events.c.kind)
        return {kind: int(n) for kind, n in connection.execute(query).all()}


def _samples(ledger: sa.Engine) -> int:
    with ledger.connect() as connection:
        return int(connection.execute(sa.select(sa.func.count()).select_from(deposit_samples)).scalar_one())


def _deposits(ledger: sa.Engine) -> list[int]:
    with ledger.connect() as connection:
        query = sa.select(deposit_samples.c.deposit_wei).order_by(deposit_samples.c.sampled_at)
        return [int(wei) for wei in connection.execute(query).scalars()]
