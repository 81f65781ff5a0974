"""Rotating a SingletonPaymaster's signer with ``anode keys rotate``, on anvil.

Under load: an aNode app in this process sponsors operations without pause while the command (a
separate process) proves the rotation, adds the new signer from the owner's key, waits for the
servers to switch, waits out the old key's last window and removes it. No request fails, and
every sampled answer, signed by the old key or the new, is executed by the real EntryPoint.

By hand: the owner sends the printed transactions, and the first run, on a config whose servers
would keep the old key, stops after adding the new signer.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from eth_account import Account
from eth_utils.address import to_checksum_address

from anode.custody.rotation import ContractCall, RotationProof, rotation_hash, sign_proof, signed_transaction
from anode.devchain.anvil import DEFAULT_ACCOUNT_KEYS, Anvil
from anode.devchain.deploy import Deployment
from anode.devchain.rpc import DevRpc, encode_call
from anode.signers.local import LocalKeySigner
from anode.store import audit
from anode.store.database import create_engine
from tests.keys.conftest import ADDRESS_6, ADDRESS_7, ADDRESS_9, KEY_6, KEY_7, KEY_9
from tests.keys.support import Wallet, app_config, running_app
from tests.support.onchain import call_contract

OWNER_KEY = DEFAULT_ACCOUNT_KEYS[0]


# -- pieces -----------------------------------------------------------------------------------


async def test_both_keys_sign_a_proof_that_verifies_and_a_tampered_one_does_not() -> None:
    old, new = LocalKeySigner.from_hex(KEY_9), LocalKeySigner.from_hex(KEY_7)
    proof = await sign_proof(old, new, 31337, bytes.fromhex("5a" * 20), 1_900_000_000)
    assert proof.verify() and (proof.old, proof.new) == (ADDRESS_9, ADDRESS_7)
    assert proof.message_hash == rotation_hash(ADDRESS_9, ADDRESS_7, 31337, proof.paymaster, 1_900_000_000)
    assert RotationProof.from_detail(proof.detail()) == proof
    for change in ({"timestamp": 1_900_000_001}, {"chain_id": 1}, {"new": ADDRESS_6},
                   {"old_signature": proof.new_signature}):  # fmt: skip
        tampered = RotationProof(**{**_fields(proof), **change})
        assert not tampered.verify(), change


def _fields(proof: RotationProof) -> dict[str, Any]:
    return {name: getattr(proof, name) for name in RotationProof.__slots__}


async def test_owner_transactions_are_byte_for_byte_what_eth_account_signs() -> None:
    owner = LocalKeySigner.from_hex(OWNER_KEY)
    call = ContractCall(
        31337,
        to_checksum_address("0x" + "5a" * 20),
        bytes.fromhex("eb12d61e") + bytes(12) + bytes.fromhex("11" * 20),
        "x",
    )
    ours = await signed_transaction(owner, call, nonce=7, tip=10**9, max_fee=3 * 10**9, gas=80_000)
    theirs = Account.sign_transaction(
        {"type": 2, "chainId": 31337, "nonce": 7, "maxPriorityFeePerGas": 10**9, "maxFeePerGas": 3 * 10**9,
         "gas": 80_000, "to": call.to, "value": 0, "data": call.data, "accessList": []},
        OWNER_KEY,
    )  # fmt: skip
    assert ours == bytes(theirs.raw_transaction)


# -- on anvil ---------------------------------------------------------------------------------


def is_signer(anvil: Anvil, paymaster: str, address: str) -> bool:
    (accepted,) = call_contract(anvil.rpc_url, paymaster, "signers(address)", ["address"], [address], ["bool"])
    return bool(accepted)


@pytest.fixture
def restore(anvil: Anvil, deployment: Deployment) -> Iterator[list[tuple[str, str, bool]]]:
    """``(paymaster, address, accepted)`` to put back afterwards: other tests share the deployment."""
    wanted: list[tuple[str, str, bool]] = []
    yield wanted
    with DevRpc(anvil.rpc_url) as rpc:
        for paymaster, address, accepted in wanted:
            if is_signer(anvil, paymaster, address) != accepted:
                function = "addSigner(address)" if accepted else "removeSigner(address)"
                rpc.transact(deployment.owner, paymaster, encode_call(function, ["address"], [address]))


def rotation_config(
    anvil: Anvil, deployment: Deployment, tmp_path: Path, version: str, new_key: str, *, layout: bool = True
) -> dict[str, Any]:
    """The servers' config: with ``layout``, the new key signs and the old one is retiring."""
    paymaster = deployment.singleton_paymasters[version]
    signer: dict[str, Any] = {"type": "local", "private_key": KEY_9}
    if layout:
        signer = {
            "primary": {"type": "local", "private_key": new_key, "paymasters": [paymaster]},
            "retiring": [{"type": "local", "private_key": KEY_9}],
            "timeout_ms": 500,
            "retry": {"attempts": 1},
            "health_interval_s": 0.3,
        }
    tree = app_config(anvil, deployment, signer, tmp_path, [("singleton", version)])
    tree["sponsorship"] = {"valid_for_seconds": 4}
    return tree


def write(tmp_path: Path, name: str, tree: dict[str, Any]) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree))
    return path


def rotation_records(database_url: str) -> list[dict[str, Any]]:
    engine = create_engine(database_url)
    try:
        return [r for r in audit.records(engine) if r["kind"].startswith("rotation.")]
    finally:
        engine.dispose()


async def test_rotation_under_load_fails_no_request(
    anvil: Anvil, deployment: Deployment, tmp_path: Path, restore: list[tuple[str, str, bool]]
) -> None:
    version = "v0.7"
    paymaster = deployment.singleton_paymasters[version]
    restore += [(paymaster, ADDRESS_9, True), (paymaster, ADDRESS_7, False)]
    tree = rotation_config(anvil, deployment, tmp_path, version, KEY_7)
    config = write(tmp_path, "config.yaml", tree)
    owner = write(tmp_path, "owner.yaml", {"type": "local", "private_key": OWNER_KEY})
    wallet = Wallet(anvil, deployment, version)
    errors: list[Any] = []
    samples: list[tuple[str, bool, str | None]] = []
    background: list[asyncio.Task[None]] = []

    async with running_app(tree) as app:
        base = wallet.new_op()

        async def sample() -> None:
            op, _ = await wallet.sponsor(app, await asyncio.to_thread(wallet.new_op))
            signer = wallet.paymaster_signer(op, paymaster)
            outcome = await wallet.submit(op)
            samples.append((signer, outcome.success, outcome.reason))

        async def worker(stop: asyncio.Event) -> None:
            count = 0
            while not stop.is_set():
                reply = await app.rpc("pm_getPaymasterData", wallet.params(base))
                if "result" not in reply:
                    errors.append(reply)
                count += 1
                if count % 15 == 0:
                    background.append(asyncio.create_task(sample()))
                await asyncio.sleep(0.005)

        stop = asyncio.Event()
        workers = [asyncio.create_task(worker(stop)) for _ in range(6)]
        rotate = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "anode.cli", "keys", "rotate", "--config", str(config),
            "--send-from-owner-key", str(owner), "--margin-s", "1", "--poll-s", "0.2",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(rotate.communicate(), timeout=90)
        stop.set()
        await asyncio.gather(*workers)
        await asyncio.gather(*background)
        await sample()  # after the rotation: the new key, accepted
        health = (await app.http.get("/health")).json()

    log = output.decode()
    assert rotate.returncode == 0, log
    assert "rotation done" in log
    assert not errors, errors[:3]
    assert samples and all(ok for _, ok, _ in samples), [s for s in samples if not s[1]]
    signers = [signer for signer, _, _ in samples]
    assert ADDRESS_9 in signers and signers[-1] == ADDRESS_7
    assert is_signer(anvil, paymaster, ADDRESS_7) and not is_signer(anvil, paymaster, ADDRESS_9)
    assert health["signing"]["paymasters"][0]["candidates"] == ["primary:local"]

    records = rotation_records(tree["database_url"])
    assert [r["kind"] for r in records] == ["rotation.proof", "rotation.signer_added", "rotation.switched",
                                            "rotation.signer_removed"]  # fmt: skip
    assert RotationProof.from_detail(records[0]["detail"]).verify()
    assert records[1]["detail"]["tx"].startswith("0x") and records[3]["detail"]["tx"].startswith("0x")
    engine = sa.create_engine(tree["database_url"])
    try:
        assert audit.verify(engine).ok
        with engine.connect() as connection:
            last_old = connection.execute(
                sa.text("SELECT max(valid_until) FROM sponsorships WHERE signer = :s"), {"s": ADDRESS_9}
            ).scalar_one()
            new_count = connection.execute(
                sa.text("SELECT count(*) FROM sponsorships WHERE signer = :s"), {"s": ADDRESS_7}
            ).scalar_one()
    finally:
        engine.dispose()
    assert new_count > 0
    removed_at = records[3]["created_at"].timestamp()
    assert int(last_old) < removed_at, "the old key was removed while one of its windows was open"


async def test_printed_transactions_sent_by_the_owner_and_a_run_that_stops_before_switching(
    anvil: Anvil, deployment: Deployment, tmp_path: Path, restore: list[tuple[str, str, bool]]
) -> None:
    version = "v0.8"
    paymaster = deployment.singleton_paymasters[version]
    restore += [(paymaster, ADDRESS_9, True), (paymaster, ADDRESS_6, False)]
    new_signer = write(tmp_path, "new.yaml", {"signer": {"type": "local", "private_key": KEY_6}})
    before = write(tmp_path, "before.yaml", rotation_config(anvil, deployment, tmp_path, version, KEY_6, layout=False))
    after = write(tmp_path, "after.yaml", rotation_config(anvil, deployment, tmp_path, version, KEY_6))

    def run(config: Path, *extra: str) -> str:
        command = [sys.executable, "-m", "anode.cli", "keys", "rotate", "--config", str(config), "--print-tx",
                   "--margin-s", "0", "--poll-s", "0.2", "--switch-wait-s", "0", *extra]  # fmt: skip
        lines = []
        with (
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process,
            DevRpc(anvil.rpc_url) as rpc,
        ):
            assert process.stdout is not None
            for line in process.stdout:
                lines.append(line)
                if "send this transaction from the paymaster's owner: " in line:
                    tx = json.loads(line.split("owner: ", 1)[1])
                    assert (tx["chainId"], tx["to"], tx["value"]) == (deployment.chain_id, paymaster, "0x0")
                    rpc.transact(deployment.owner, tx["to"], bytes.fromhex(tx["data"][2:]))
            assert process.wait(timeout=60) == 0, "".join(lines)
        return "".join(lines)

    # servers still run the old key alone: prove and add, then stop and say what to change
    first = run(before, "--new-signer", str(new_signer))
    assert f"addSigner({ADDRESS_6})" in first and "not switching yet" in first
    assert is_signer(anvil, paymaster, ADDRESS_6) and is_signer(anvil, paymaster, ADDRESS_9)
    # servers now run the new key with the old one retiring: the same command finishes the job
    second = run(after)
    assert "already in the audit log" in second and "already done on chain" in second
    assert f"removeSigner({ADDRESS_9})" in second and "rotation done" in second
    assert is_signer(anvil, paymaster, ADDRESS_6) and not is_signer(anvil, paymaster, ADDRESS_9)
    kinds = [r["kind"] for r in rotation_records(yaml.safe_load(after.read_text())["database_url"])]
    assert kinds == ["rotation.proof", "rotation.signer_added", "rotation.switched", "rotation.signer_removed"]
