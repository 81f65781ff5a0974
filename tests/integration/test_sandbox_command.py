"""``anode sandbox``, the README's first command, run as a user runs it (a subprocess, here with a
temporary workdir and free ports): it prints its URL and an example request, the request gets a
real answer, ``GET /health`` reports each paymaster's deposit as the EntryPoint holds it, and
Ctrl-C stops aNode and anvil.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from anode.devchain.anvil import _port_is_free, free_port
from anode.devchain.artifacts import node_modules_available
from anode.devchain.rpc import DevRpc, encode_call
from tests.support.onchain import get_deposit

pytestmark = [
    pytest.mark.chain,
    pytest.mark.skipif(not node_modules_available(), reason="node_modules missing: run `npm install`"),
]

#: anvil's first funded, unlocked account: tops up a deposit
ANVIL_ACCOUNT_0 = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


@dataclass
class Sandbox:
    process: subprocess.Popen[bytes]
    output: Path
    url: str
    rpc_url: str
    anvil_port: int
    deployment: dict[str, Any]

    def printed(self) -> str:
        return self.output.read_text()


def _wait_for(output: Path, process: subprocess.Popen[bytes], pattern: str, timeout: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, output.read_text())
        if found:
            return found
        if process.poll() is not None:
            raise AssertionError(f"anode sandbox exited with {process.returncode}:\n{output.read_text()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"anode sandbox printed no {pattern!r} in {timeout:g} s:\n{output.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    workdir = tmp_path_factory.mktemp("sandbox")
    port, anvil_port = free_port(), free_port()
    output = workdir / "output.txt"
    command = [sys.executable, "-m", "anode.cli", "sandbox", "--workdir", str(workdir / ".anode")]
    command += ["--port", str(port), "--anvil-port", str(anvil_port)]
    with open(output, "wb") as sink:  # not a terminal: stdout is block-buffered unless flushed
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    try:
        url = _wait_for(output, process, r"serving on (http://\S+)", 90).group(1)
        assert url == f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:  # the URL is printed just before uvicorn binds
            try:
                httpx.get(f"{url}/openapi.json", timeout=1.0).raise_for_status()
                break
            except httpx.HTTPError:
                assert process.poll() is None and time.monotonic() < deadline, output.read_text()[-3000:]
                time.sleep(0.1)
        deployment = json.loads((workdir / ".anode" / "deployment.json").read_text())
        yield Sandbox(process, output, url, f"http://127.0.0.1:{anvil_port}", anvil_port, deployment)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # Ctrl-C, as a user stops it
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_the_printed_example_request_gets_paymaster_data(sandbox: Sandbox) -> None:
    curl = _wait_for(sandbox.output, sandbox.process, r"curl -s (\S+) .* -d '(.+)'", 1)
    endpoint, body = curl.group(1), json.loads(curl.group(2))
    assert endpoint == f"{sandbox.url}/api/v1/rpc"
    reply = httpx.post(endpoint, json=body, timeout=10).json()
    assert "error" not in reply, reply
    result = reply["result"]
    assert result["paymaster"] == sandbox.deployment["verifying_paymasters"]["v0.7"]
    assert result["isFinal"] is False
    assert re.fullmatch(r"0x[0-9a-f]+", result["paymasterData"]), result
    assert int(result["paymasterVerificationGasLimit"], 16) > 0

    served = httpx.post(
        endpoint, json={"jsonrpc": "2.0", "id": 2, "method": "pm_supportedEntryPoints", "params": []}, timeout=10
    ).json()["result"]
    assert sorted(served) == sorted(sandbox.deployment["entry_points"].values())


def test_health_reports_each_paymasters_deposit_as_the_entry_point_holds_it(sandbox: Sandbox) -> None:
    # top one deposit up, so that it differs from the others and a mixed-up pair would show
    verifying = sandbox.deployment["verifying_paymasters"]["v0.7"]
    entry_point = sandbox.deployment["entry_points"]["v0.7"]
    before = get_deposit(sandbox.rpc_url, entry_point, verifying)
    with DevRpc(sandbox.rpc_url) as rpc:
        rpc.transact(ANVIL_ACCOUNT_0, entry_point, encode_call("depositTo(address)", ["address"], [verifying]), 12345)
    response = httpx.get(f"{sandbox.url}/health", timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    (chain,) = body["chains"]
    assert chain["nodeReachable"] is True and chain["nodeChainId"] == chain["chainId"] == 31337
    reported = {(p["entryPoint"], p["address"]): p["deposit"] for p in chain["paymasters"]}
    assert len(reported) == 3
    for (ep, paymaster), deposit in reported.items():
        assert deposit == str(get_deposit(sandbox.rpc_url, ep, paymaster)), (ep, paymaster)
    assert reported[(entry_point, verifying)] == str(before + 12345)
    assert len(set(reported.values())) > 1, reported


def test_ctrl_c_stops_anode_and_anvil(sandbox: Sandbox) -> None:
    sandbox.process.send_signal(signal.SIGINT)
    assert sandbox.process.wait(timeout=20) == 130
    printed = sandbox.printed()
    assert "Traceback" not in printed and "Unclosed client session" not in printed, printed
    assert _port_is_free(sandbox.anvil_port), "anvil outlived the sandbox"
