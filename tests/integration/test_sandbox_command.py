"""``anode sandbox``, the README's first command, run as a user runs it (a subprocess, here with a
temporary folder, a relative ``--workdir`` and free ports): it prints its URL and an example
request only once aNode answers there (each start checks the request right after it), the
request gets a real answer, ``pm_sponsorUserOperation`` works (the sandbox runs the Alto
bundler), ``GET /health`` reports each paymaster's deposit as the EntryPoint holds it, the
written config works from any folder, a taken port is one line naming its option, and Ctrl-C
stops aNode, Alto and anvil with status 130 however the parent set SIGINT.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from anode.chain.client import ChainClient
from anode.config import Erc20Settings
from anode.devchain.anvil import free_port, port_is_free
from anode.devchain.artifacts import node_modules_available
from anode.devchain.deploy import Deployment
from anode.devchain.rpc import DevRpc, encode_call
from anode.pricing import PriceBook
from tests.support.onchain import get_deposit
from tests.support.wallet import Client, rpc_op, with_paymaster

pytestmark = [
    pytest.mark.chain,
    pytest.mark.skipif(not node_modules_available(), reason="node_modules missing: run `npm install`"),
]

#: anvil's first funded, unlocked account: tops up a deposit
ANVIL_ACCOUNT_0 = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
_GAS_FIELDS = ("callGasLimit", "verificationGasLimit", "preVerificationGas")


@dataclass
class Sandbox:
    process: subprocess.Popen[bytes]
    output: Path
    folder: Path  # the directory it was started in; its files are in folder/.anode
    url: str
    rpc_url: str
    anvil_port: int
    deployment: dict[str, Any]

    def printed(self) -> str:
        return self.output.read_text()

    def client(self, version: str) -> Client:
        chain = _Chain(self.rpc_url)
        return Client(self.url, chain, Deployment(**self.deployment), version)  # type: ignore[arg-type]


@dataclass
class _Chain:
    """What :class:`tests.support.wallet.Client` reads of an ``Anvil``: the sandbox runs its own."""

    rpc_url: str


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


def _command(port: int, anvil_port: int) -> list[str]:
    return [sys.executable, "-m", "anode.cli", "sandbox", "--workdir", ".anode", "--port", str(port),
            "--anvil-port", str(anvil_port)]  # fmt: skip


def _sigint(handler: signal.Handlers) -> Callable[[], None]:
    """For ``preexec_fn``: the child starts with SIGINT set to ``handler``, as a shell would leave it."""

    def set_sigint() -> None:
        signal.signal(signal.SIGINT, handler)

    return set_sigint


def _start(folder: Path, sigint: signal.Handlers = signal.SIG_DFL) -> Sandbox:
    folder.mkdir(parents=True, exist_ok=True)
    port, anvil_port = free_port(), free_port()
    output = folder / "output.txt"
    with open(output, "wb") as sink:  # not a terminal: stdout is block-buffered unless flushed
        process = subprocess.Popen(
            _command(port, anvil_port), cwd=folder, stdout=sink, stderr=subprocess.STDOUT, preexec_fn=_sigint(sigint)
        )
    try:
        url = _wait_for(output, process, r"serving on (http://\S+)", 120).group(1)
    except BaseException:
        _stop(process)
        raise
    assert url == f"http://127.0.0.1:{port}"
    # printed once aNode answers there: the first request right after it is aNode's, with no retry
    first = httpx.get(url + "/", timeout=5)
    assert first.status_code == 200 and first.json()["name"] == "aNode", first.text
    deployment = json.loads((folder / ".anode" / "deployment.json").read_text())
    return Sandbox(process, output, folder, url, f"http://127.0.0.1:{anvil_port}", anvil_port, deployment)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # Ctrl-C, as a user stops it
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    running = _start(tmp_path_factory.mktemp("sandbox"))
    try:
        yield running
    finally:
        _stop(running.process)


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


@pytest.mark.parametrize("version", ["v0.6", "v0.7", "v0.8"])
def test_pm_sponsor_user_operation_works_in_the_sandbox(sandbox: Sandbox, version: str) -> None:
    """The sandbox's bundler (Alto) estimates; the signed operation then executes on the chain."""
    assert re.search(r"bundler \(Alto.*\): http://127\.0\.0\.1:\d+", sandbox.printed()), sandbox.printed()
    client = sandbox.client(version)
    op = client.new_op()
    fields = {name: value for name, value in rpc_op(op, version).items() if name not in _GAS_FIELDS}
    reply = httpx.post(
        f"{sandbox.url}/api/v1/rpc",
        json={"jsonrpc": "2.0", "id": 1, "method": "pm_sponsorUserOperation", "params": [fields, client.entry_point]},
        timeout=60,
    ).json()
    assert "result" in reply, reply
    result = reply["result"]
    gas = {name: int(result[name], 16) for name in _GAS_FIELDS}
    estimated = replace(
        op,
        call_gas_limit=gas["callGasLimit"],
        verification_gas_limit=gas["verificationGasLimit"],
        pre_verification_gas=gas["preVerificationGas"],
    )
    outcome = client.submit(with_paymaster(estimated, version, result))
    assert outcome.success, outcome.reason


def test_the_written_config_works_from_any_folder(sandbox: Sandbox, tmp_path: Path) -> None:
    """The config names its database by an absolute path: ``anode ops list`` elsewhere reads the same ledger."""
    config_path = sandbox.folder / ".anode" / "sandbox.yaml"
    database_url = yaml.safe_load(config_path.read_text())["database_url"]
    assert database_url == f"sqlite:///{(sandbox.folder / '.anode' / 'sandbox.db').resolve()}"
    client = sandbox.client("v0.7")
    op = client.new_op()
    client.call("pm_getPaymasterData", op)  # one recorded sponsorship
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    listed = subprocess.run(
        [sys.executable, "-m", "anode.cli", "ops", "list", "--config", str(config_path), "--sender", op.sender],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert op.sender.lower() in listed.stdout.lower(), listed.stdout
    assert not list(elsewhere.iterdir()), "a new database was created in the current folder"


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


def test_the_sandbox_offers_erc20_mode_in_its_test_token(sandbox: Sandbox) -> None:
    """A token with its two feeds on the chain, a treasury that approved the paymaster, the v0.8
    SingletonPaymaster configured with them, and an example request naming the token."""
    printed = sandbox.printed()
    token = re.search(r"ERC-20 mode \(SingletonPaymaster v0\.8.*\): token TUSD (0x[0-9a-fA-F]{40})", printed)
    feeds = re.search(r"TUSD/USD (0x[0-9a-fA-F]{40}), ETH/USD (0x[0-9a-fA-F]{40})", printed)
    treasury = re.search(r"treasury (0x[0-9a-fA-F]{40})", printed)
    assert token and feeds and treasury, printed
    paymaster = sandbox.deployment["singleton_paymasters"]["v0.8"]
    with DevRpc(sandbox.rpc_url) as rpc:
        (decimals,) = rpc.call_function(token[1], "decimals()", return_types=["uint8"])
        (held,) = rpc.call_function(token[1], "balanceOf(address)", ["address"], [treasury[1]], ["uint256"])
        (allowed,) = rpc.call_function(
            token[1], "allowance(address,address)", ["address", "address"], [treasury[1], paymaster], ["uint256"]
        )
        answers = [
            rpc.call_function(
                feed, "latestRoundData()", return_types=["uint80", "int256", "uint256", "uint256", "uint80"]
            )[1]
            for feed in feeds.groups()
        ]
    assert (decimals, allowed, answers) == (6, 2**256 - 1, [10**8, 3000 * 10**8])
    assert held > 0  # refunds of a prefund come from the treasury

    config = yaml.safe_load((sandbox.folder / ".anode" / "sandbox.yaml").read_text())
    (section,) = [pm["erc20"] for pm in config["chains"][0]["paymasters"] if "erc20" in pm]
    assert section["treasury"] == treasury[1]
    assert [t["address"] for t in section["tokens"]] == [token[1]]
    price = section["tokens"][0]["price"]
    assert (price["token_usd_feed"], price["native_usd_feed"]) == feeds.groups()

    async def quote() -> int:
        client = ChainClient(sandbox.rpc_url)
        book = PriceBook(
            {(31337, bytes.fromhex(paymaster[2:])): Erc20Settings.model_validate(section)}, {31337: client}
        )
        try:
            return (await book.quote(31337, bytes.fromhex(paymaster[2:]), bytes.fromhex(token[1][2:]))).exchange_rate
        finally:
            await client.aclose()

    assert asyncio.run(quote()) == 3300 * 10**6  # 3000 TUSD per ETH, + 10 %

    examples = re.findall(r"curl -s (\S+) .* -d '(.+)'", printed)
    (erc20_body,) = [json.loads(body) for _, body in examples if "token" in json.dumps(json.loads(body)["params"][3])]
    assert erc20_body["params"][1] == sandbox.deployment["entry_points"]["v0.8"]
    assert erc20_body["params"][3] == {"token": token[1]}
    reply = httpx.post(f"{sandbox.url}/api/v1/rpc", json=erc20_body, timeout=10).json()
    assert "result" in reply, reply
    assert reply["result"]["paymaster"] == paymaster
    data = bytes.fromhex(reply["result"]["paymasterData"][2:])  # mode byte, flags, window, token, postOpGas, rate
    assert (data[0], data[14:34].hex()) == (0x03, token[1][2:].lower())
    assert int.from_bytes(data[50:82], "big") == 3300 * 10**6  # the rate the book quotes


@pytest.mark.parametrize(
    "parent_sigint", [signal.SIG_DFL, signal.SIG_IGN], ids=["sigint-default", "sigint-ignored-as-by-nohup"]
)
def test_ctrl_c_stops_anode_and_anvil(tmp_path: Path, parent_sigint: signal.Handlers) -> None:
    """Exit status 130 and nothing left running, whether the shell left SIGINT default or ignored."""
    running = _start(tmp_path / "ctrl-c", sigint=parent_sigint)
    bundler_port = int(re.search(r"bundler \(Alto.*\): http://127\.0\.0\.1:(\d+)", running.printed()).group(1))  # type: ignore[union-attr]
    running.process.send_signal(signal.SIGINT)
    try:
        code = running.process.wait(timeout=30)
    finally:
        _stop(running.process)
    assert code == 130, running.printed()[-3000:]
    printed = running.printed()
    assert "Traceback" not in printed and "Unclosed client session" not in printed, printed
    assert port_is_free(running.anvil_port), "anvil outlived the sandbox"
    assert port_is_free(bundler_port), "Alto outlived the sandbox"


@pytest.mark.parametrize("which", ["--anvil-port", "--port"])
def test_a_taken_port_is_one_line_naming_its_option(tmp_path: Path, which: str) -> None:
    """Refused before anything starts: no traceback, nothing deployed, no URL of someone else's server."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        port, anvil_port = (free_port(), taken) if which == "--anvil-port" else (taken, free_port())
        done = subprocess.run(
            _command(port, anvil_port), cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
        )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert which in lines[0] and str(taken) in lines[0], lines[0]
    assert "serving on" not in done.stdout and "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / ".anode" / "deployment.json").exists()


def test_the_sandbox_prints_its_dashboard_and_what_the_follower_reconciled(sandbox: Sandbox) -> None:
    """The dashboard's URL is printed and answers (the sandbox has no keys); an operation included on
    chain shows up in the follower's progress line."""
    dashboard = _wait_for(sandbox.output, sandbox.process, r"dashboard: (http://\S+/dashboard)", 1).group(1)
    page = httpx.get(dashboard, timeout=10)
    assert page.status_code == 200 and 'id="spend-hour"' in page.text
    client = sandbox.client("v0.7")
    op, _, _ = client.sponsor()
    assert client.submit(op).success
    reconciled = r"follower: block \d+, \d+ behind the head; [1-9]\d* operation\(s\) reconciled \([1-9]\d* included"
    _wait_for(sandbox.output, sandbox.process, reconciled, 90)
