"""The passkey flow with a real browser: Chromium (headless, ``chromium-driver``) with a virtual
authenticator registers a passkey on the KMS's ``/passkey`` page (a real ``anode kms serve``, PKCS#11
custody on SoftHSM2), aNode (a real ``anode serve``) prepares an operation, the page approves it
with the options aNode answered, and ``pm_sponsor_with_passkey`` returns the operation signed by
the account's HSM key, which the real EntryPoint on anvil executes, paid by aNode's paymaster
(v0.6 and v0.7). ``scripts/setup --for-tests`` installs the browser.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from anode.devchain.anvil import Anvil
from anode.devchain.deploy import Deployment
from tests.kms.test_anode_flow import SIGNER, PasskeyWallet, anode_config, kms_url  # noqa: F401  (the fixture)
from tests.kms.test_browser import _status, browser  # noqa: F401  (the fixture)
from tests.support.server import running_server

VERSIONS = ["v0.6", "v0.7"]


@pytest.fixture(scope="module")
def anode_url(anvil: Anvil, deployment: Deployment, kms_url: str) -> Iterator[str]:  # noqa: F811
    with running_server(anode_config(anvil, deployment, [kms_url])) as url:
        yield url


@pytest.mark.parametrize("version", VERSIONS)
def test_the_browser_approves_an_operation_aNode_prepared_and_it_executes(
    browser: webdriver.Chrome, kms_url: str, anode_url: str, anvil: Anvil, deployment: Deployment, version: str,  # noqa: F811
) -> None:  # fmt: skip
    wallet = PasskeyWallet(kms_url, anode_url, anvil, deployment, version).create(register=False)
    port = kms_url.rsplit(":", 1)[1]
    browser.get(f"http://localhost:{port}/passkey?accountId={wallet.account_id}")
    browser.find_element(By.ID, "register").click()
    assert wallet.account_id in _status(browser, "registered passkey")

    op = wallet.new_op()
    prepared = wallet.prepare(op)
    field = browser.find_element(By.ID, "options")
    field.clear()
    field.send_keys(json.dumps(prepared["options"]))
    browser.find_element(By.ID, "approve").click()
    _status(browser, "approved the prepared operation")
    assertion = json.loads(browser.find_element(By.ID, "assertion").get_attribute("value") or "{}")

    reply = wallet.sponsor(prepared["userOperation"], assertion)
    assert "result" in reply, reply
    assert reply["result"]["verificationProof"]["paymaster"] == SIGNER
    wallet.executed(op, reply["result"]["userOperation"])
