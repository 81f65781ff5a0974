"""The KMS's ``/passkey`` page in a real browser, and the operation it approves executed on chain.

Debian's ``chromium`` (headless, through ``chromium-driver``) with a virtual authenticator (CTAP2,
internal, resident keys, user verification) opens the page of a real ``anode kms serve``
(PKCS#11 custody on SoftHSM2) at ``http://localhost:<port>`` (rp id ``localhost``), registers a
passkey for an account and approves an operation that aNode's paymaster (a real ``anode serve``)
sponsored. The page's assertion, with the test paymaster's approval, gets the owner's signature
from the KMS, and the real EntryPoint on anvil executes the operation (v0.6 and v0.7).
``scripts/setup --for-tests`` installs the browser.
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.virtual_authenticator import Protocol, Transport, VirtualAuthenticatorOptions
from selenium.webdriver.support.ui import WebDriverWait

from anode.devchain.anvil import DEFAULT_ACCOUNT_KEYS, Anvil
from anode.devchain.deploy import Deployment
from tests.kms.harness import ADMIN_HEADERS, PAYMASTER, KmsProcess, Wallet, approval, full_rpc_op, kms_config
from tests.signers.softhsm import SoftHsm
from tests.support.onchain import handle_ops
from tests.support.server import running_server
from tests.support.wallet import Client, server_config, with_paymaster

PAIRS = [("verifying", "v0.6"), ("verifying", "v0.7")]


@pytest.fixture(scope="module")
def anode_url(anvil: Anvil, deployment: Deployment) -> Iterator[str]:
    with running_server(server_config(anvil, deployment, DEFAULT_ACCOUNT_KEYS[9], PAIRS)) as url:
        yield url


@pytest.fixture
def kms_process(tmp_path: Path, anvil: Anvil, deployment: Deployment, softhsm: SoftHsm) -> Iterator[KmsProcess]:
    def config(port: int) -> dict[str, object]:
        tree = kms_config(tmp_path, anvil, deployment, f"sqlite:///{tmp_path / 'kms.db'}", softhsm)
        return {**tree, "webauthn": {"rp_id": "localhost", "origins": [f"http://localhost:{port}"]}}

    process = KmsProcess(tmp_path, config, softhsm.env).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    service = Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    driver = webdriver.Chrome(options=options, service=service)
    driver.add_virtual_authenticator(
        VirtualAuthenticatorOptions(
            protocol=Protocol.CTAP2, transport=Transport.INTERNAL, has_resident_key=True,
            has_user_verification=True, is_user_verified=True,
        )
    )  # fmt: skip
    try:
        yield driver
    finally:
        driver.quit()


def _status(driver: webdriver.Chrome, starts: str) -> str:
    def seen(_: object) -> str | bool:
        text = str(driver.find_element(By.ID, "status").text)
        assert "ANODE_" not in text, text
        return text if text.startswith(starts) else False

    return str(WebDriverWait(driver, 30).until(seen))


@pytest.mark.parametrize(("contract", "version"), PAIRS)
async def test_the_page_registers_a_passkey_and_approves_an_operation_that_executes(
    browser: webdriver.Chrome, kms_process: KmsProcess, anvil: Anvil, deployment: Deployment, anode_url: str,
    contract: str, version: str,
) -> None:  # fmt: skip
    page = f"http://localhost:{kms_process.port}"
    async with httpx.AsyncClient(base_url=kms_process.url, timeout=30) as client:
        added = await client.post("/admin/authorized-signers", json={"address": PAYMASTER}, headers=ADMIN_HEADERS)
        assert added.status_code == 200, added.text
        wallet = Wallet(client, anvil, deployment, version, f"browser-{version}")
        account = await wallet.create()

        browser.get(f"{page}/passkey?accountId={wallet.account_id}")
        browser.find_element(By.ID, "register").click()
        assert wallet.account_id in _status(browser, "registered passkey")
        assert len(browser.get_credentials()) == 1  # the virtual authenticator holds the passkey

        op = wallet.new_op()
        op = with_paymaster(op, version, Client(anode_url, anvil, deployment, version).call("pm_getPaymasterData", op))
        op_hash = wallet.op_hash(op)
        field = browser.find_element(By.ID, "userOpHash")
        field.clear()
        field.send_keys("0x" + op_hash.hex())
        browser.find_element(By.ID, "approve").click()
        _status(browser, "approved")
        assertion = json.loads(browser.find_element(By.ID, "assertion").get_attribute("value") or "{}")

        nonce, moment = secrets.token_bytes(32), int(time.time())
        body = {
            "userOperation": full_rpc_op(op, version), "entryPoint": wallet.entry_point,
            "chainId": deployment.chain_id, "accountId": wallet.account_id, "userSignature": assertion,
            "nonce": "0x" + nonce.hex(), "timestamp": moment,
        }  # fmt: skip
        headers = {
            "x-paymaster-address": PAYMASTER,
            "x-paymaster-signature": approval(
                deployment.chain_id, op_hash, wallet.account_id, assertion, nonce, moment
            ),
        }
        reply = await client.post("/kms/sign-user-operation", json=body, headers=headers)
        assert reply.status_code == 200, reply.text

    signed = replace(op, signature=bytes.fromhex(reply.json()["signature"][2:]))
    result = handle_ops(anvil.rpc_url, wallet.entry_point, version, [signed.to_tuple(version)])
    assert result.success, result.reason
    assert (result.events[0].sender, result.events[0].paymaster) == (account["address"], op.paymaster)
