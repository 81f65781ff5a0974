"""The signer manager on in-process backends: which backend signs, retries, timeouts, failover,
the circuit breaker, health, the chain's view of who may sign, and losing the primary under load.

The backends are real keys (``tests/keys/fakes.py``) that a test can make fail, hang or sign with
the wrong key at any moment; the manager cannot tell them from a KMS having a bad day.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from anode.config import validate_settings
from anode.errors import ConfigError, SignerUnavailable
from anode.metrics import Metrics
from anode.signers.base import EIP191_PREFIX
from anode.signers.ecdsa import recovered_address
from anode.signers.manager import ManagedSignature, ManagedSigner, PaymasterTarget
from anode.signers.manager_settings import ManagerSettings, signer_config
from anode.signers.registry import SignerSettingsBase
from tests.keys import fakes
from tests.keys.conftest import ADDRESS_7, ADDRESS_8, ADDRESS_9, KEY_7, KEY_8, KEY_9
from tests.support.waiting import eventually

SINGLETON = bytes.fromhex("5a" * 20)
OTHER_SINGLETON = bytes.fromhex("5b" * 20)
VERIFYING = bytes.fromhex("7e" * 20)
CHAIN = 31337


def flaky(key: str, control: str, **extra: Any) -> dict[str, Any]:
    return {"type": "flaky", "private_key": key, "control": control, **extra}


def local(key: str, **extra: Any) -> dict[str, Any]:
    return {"type": "local", "private_key": key, **extra}


def build(
    primary: dict[str, Any],
    *,
    backups: list[dict[str, Any]] | None = None,
    retiring: list[dict[str, Any]] | None = None,
    targets: list[PaymasterTarget] | None = None,
    **settings: Any,
) -> ManagedSigner:
    raw = {"primary": primary, "backups": backups or [], "retiring": retiring or [], "health_interval_s": 0}
    return ManagedSigner.from_settings(ManagerSettings.model_validate(raw | settings), targets=targets or [])


@pytest.fixture
async def closing() -> AsyncIterator[list[ManagedSigner]]:
    made: list[ManagedSigner] = []
    yield made
    for manager in made:
        await manager.aclose()


def sample(manager: ManagedSigner, name: str, **labels: str) -> float:
    value = manager.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def valid(signed: ManagedSignature, digest: bytes, address: str) -> bool:
    return signed.digest == digest and signed.signer == address and recovered_address(signed) == address


# -- configuration ----------------------------------------------------------------------------


def test_a_single_backend_stays_a_plain_backend_and_a_manager_of_one_when_it_names_paymasters() -> None:
    single = signer_config(local(KEY_9))
    assert isinstance(single, SignerSettingsBase) and single.type == "local"
    one = signer_config(local(KEY_9, paymasters=["0x" + "5a" * 20]))
    assert isinstance(one, ManagerSettings) and one.primary.paymasters == (to_checksum_address("0x" + "5a" * 20),)
    full = signer_config({"primary": local(KEY_9), "backups": [local(KEY_9)], "retry": {"attempts": 3}})
    assert isinstance(full, ManagerSettings) and full.retry.attempts == 3 and len(full.backups) == 1


def test_config_errors_name_the_backend_field() -> None:
    chains = [{"chain_id": 1, "rpc_url": "http://x", "paymasters": [{"entry_point": "0x" + "00" * 20,
               "address": "0x" + "5a" * 20, "contract": "singleton"}]}]  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        validate_settings({"signer": {"primary": {"type": "local"}, "backups": [local(KEY_8, paymasters=["0x5a"])]},
                           "chains": chains})  # fmt: skip
    assert "signer.primary: private_key: Field required" in caught.value.message
    assert "signer.backups.0.paymasters" in caught.value.message


async def test_single_backend_signs_through_the_manager(closing: list[ManagedSigner]) -> None:
    manager = ManagedSigner.from_settings(signer_config(local(KEY_9)))
    closing.append(manager)
    assert (manager.address, manager.backend) == (ADDRESS_9, "local")
    digest = keccak(b"one")
    signed = await manager.sign_for(SINGLETON, digest, chain_id=CHAIN)
    assert valid(signed, digest, ADDRESS_9) and signed.backend == "primary:local"
    assert sample(manager, "anode_signer_signatures_total", backend="primary:local", type="local") == 1


@pytest.mark.parametrize(
    ("backups", "contract", "message"),
    [
        ([local(KEY_8)], "singleton", "a backup with another key must list"),
        ([local(KEY_8, paymasters=["0x" + "7e" * 20])], "verifying", "VerifyingPaymaster"),
        ([local(KEY_8, paymasters=["0x" + "99" * 20])], "singleton", "which no chain in this config serves"),
    ],
)
def test_backups_the_paymaster_would_not_accept_refuse_to_start(
    backups: list[dict[str, Any]], contract: str, message: str
) -> None:
    address = VERIFYING if contract == "verifying" else SINGLETON
    with pytest.raises(ConfigError) as caught:
        build(local(KEY_9), backups=backups, targets=[PaymasterTarget(CHAIN, address, contract)])
    assert message in caught.value.message


def test_a_retiring_key_for_a_verifying_paymaster_is_refused() -> None:
    with pytest.raises(ConfigError, match="immutable"):
        build(local(KEY_9), retiring=[local(KEY_8)], targets=[PaymasterTarget(CHAIN, VERIFYING, "verifying")])


def test_a_paymaster_no_backend_may_sign_for_is_refused() -> None:
    with pytest.raises(ConfigError, match="no backend may sign"):
        build(
            local(KEY_9, paymasters=["0x" + "5a" * 20]),
            targets=[PaymasterTarget(CHAIN, SINGLETON, "singleton"), PaymasterTarget(CHAIN, VERIFYING, "verifying")],
        )


async def test_each_backend_signs_only_for_its_paymasters(closing: list[ManagedSigner]) -> None:
    targets = [PaymasterTarget(CHAIN, SINGLETON, "singleton"), PaymasterTarget(CHAIN, OTHER_SINGLETON, "singleton")]
    manager = build(
        local(KEY_9, paymasters=["0x" + "5b" * 20]), backups=[local(KEY_8, paymasters=["0x" + "5a" * 20])],
        targets=targets,
    )  # fmt: skip
    closing.append(manager)
    digest = keccak(b"x")
    assert (await manager.sign_for(SINGLETON, digest, chain_id=CHAIN)).signer == ADDRESS_8
    assert (await manager.sign_for(OTHER_SINGLETON, digest, chain_id=CHAIN)).signer == ADDRESS_9


# -- failures ---------------------------------------------------------------------------------


async def test_an_error_is_retried_with_backoff_before_failing_over(closing: list[ManagedSigner]) -> None:
    manager = build(flaky(KEY_9, "p"), backups=[local(KEY_9)], retry={"attempts": 3, "backoff_ms": 40})
    closing.append(manager)
    fakes.control("p").fail_next = 2
    started = time.perf_counter()
    signed = await manager.sign_for(SINGLETON, keccak(b"retry"))
    assert signed.backend == "primary:flaky" and fakes.control("p").calls == 3
    assert time.perf_counter() - started >= 0.04 + 0.08  # 40 ms, then 80 ms
    assert sample(manager, "anode_signer_errors_total", backend="primary:flaky", type="flaky", kind="unavailable") == 2
    assert sample(manager, "anode_signer_failovers_total", backend="primary:flaky") == 0


@pytest.mark.parametrize(("mode", "kind"), [("fail", "unavailable"), ("crash", "unavailable"),
                                            ("hang", "timeout"), ("wrong_key", "bad_signature")])  # fmt: skip
async def test_a_failing_primary_fails_over_to_the_same_key_elsewhere(
    mode: fakes.Mode, kind: str, closing: list[ManagedSigner]
) -> None:
    manager = build(flaky(KEY_9, "p"), backups=[local(KEY_9)], timeout_ms=100, retry={"attempts": 2, "backoff_ms": 1})
    closing.append(manager)
    fakes.control("p").mode = mode
    digest = keccak(mode.encode())
    signed = await manager.sign_for(SINGLETON, digest)
    assert valid(signed, digest, ADDRESS_9) and signed.backend == "backup1:local"
    assert sample(manager, "anode_signer_errors_total", backend="primary:flaky", type="flaky", kind=kind) == 2
    assert sample(manager, "anode_signer_failovers_total", backend="primary:flaky") == 1


async def test_when_every_backend_fails_the_error_says_why_without_secrets(closing: list[ManagedSigner]) -> None:
    manager = build(flaky(KEY_9, "p"), backups=[flaky(KEY_9, "b")], timeout_ms=50, retry={"attempts": 1})
    closing.append(manager)
    fakes.control("p").mode, fakes.control("b").mode = "fail", "hang"
    with pytest.raises(SignerUnavailable) as caught:
        await manager.sign_for(SINGLETON, keccak(b"nope"))
    message = caught.value.message
    assert "primary:flaky: flaky signer: down" in message and "backup1:flaky: no signature within 50 ms" in message
    assert KEY_9[2:] not in message and KEY_9[2:] not in repr(manager)


async def test_the_circuit_opens_stops_calling_a_dead_backend_and_closes_after_a_good_trial(
    closing: list[ManagedSigner],
) -> None:
    manager = build(
        flaky(KEY_9, "p"), backups=[local(KEY_9)], retry={"attempts": 1},
        circuit={"failures": 3, "reset_after_s": 0.3},
    )  # fmt: skip
    closing.append(manager)
    primary = fakes.control("p")
    primary.mode = "fail"
    for index in range(10):
        assert (await manager.sign_for(SINGLETON, keccak(bytes([index])))).backend == "backup1:local"
    assert primary.calls == 3, "an open circuit must not call the backend"
    assert sample(manager, "anode_signer_circuit_state", backend="primary:flaky") == 2
    assert sample(manager, "anode_signer_errors_total", backend="primary:flaky", type="flaky", kind="circuit_open") == 7
    await asyncio.sleep(0.35)  # half-open: one trial, which fails: open again
    await manager.sign_for(SINGLETON, keccak(b"trial 1"))
    await manager.sign_for(SINGLETON, keccak(b"still open"))
    assert primary.calls == 4
    primary.mode = "ok"
    await asyncio.sleep(0.35)  # the next trial succeeds: closed, the primary signs again
    assert (await manager.sign_for(SINGLETON, keccak(b"trial 2"))).backend == "primary:flaky"
    assert (await manager.sign_for(SINGLETON, keccak(b"closed"))).backend == "primary:flaky"
    assert sample(manager, "anode_signer_circuit_state", backend="primary:flaky") == 0


async def test_half_open_lets_one_request_through_at_a_time(closing: list[ManagedSigner]) -> None:
    manager = build(
        flaky(KEY_9, "p"), backups=[local(KEY_9)], retry={"attempts": 1},
        circuit={"failures": 1, "reset_after_s": 0.1},
    )  # fmt: skip
    closing.append(manager)
    primary = fakes.control("p")
    primary.mode = "fail"
    await manager.sign_for(SINGLETON, keccak(b"open it"))
    primary.mode, primary.delay_s = "ok", 0.2
    await asyncio.sleep(0.12)
    results = await asyncio.gather(*(manager.sign_for(SINGLETON, keccak(bytes([i]))) for i in range(20)))
    assert [r.backend for r in results].count("primary:flaky") == 1
    assert primary.calls == 2


async def test_a_backend_that_signs_messages_only_serves_paymaster_hashes_and_passes_probes(
    closing: list[ManagedSigner],
) -> None:
    """Like a Web3Signer key: it cannot sign a bare digest, but paymaster hashes go through EIP-191."""
    manager = build(flaky(KEY_9, "w3s"), backups=[local(KEY_9)], retry={"attempts": 1})
    closing.append(manager)
    fakes.control("w3s").message_only = True
    await manager.start()
    assert manager.health()["backends"][0]["healthy"] is True
    message = keccak(b"a paymaster getHash")
    signed = await manager.sign_eip191_for(SINGLETON, message)
    assert signed.backend == "primary:flaky" and valid(signed, keccak(EIP191_PREFIX + message), ADDRESS_9)
    bare = await manager.sign_for(SINGLETON, keccak(b"a bare digest"))
    assert bare.backend == "backup1:local"


# -- health ----------------------------------------------------------------------------------


async def test_health_probes_run_on_an_interval_and_show_in_the_snapshot(closing: list[ManagedSigner]) -> None:
    manager = build(
        flaky(KEY_9, "p"), backups=[local(KEY_9)], health_interval_s=0.05, timeout_ms=50, circuit={"failures": 2}
    )
    closing.append(manager)
    await manager.start()
    snapshot = manager.health()
    assert snapshot["status"] == "ok" and snapshot["address"] == ADDRESS_9
    assert [(b["name"], b["role"], b["healthy"], b["circuit"]) for b in snapshot["backends"]] == [
        ("primary:flaky", "primary", True, "closed"),
        ("backup1:local", "backup", True, "closed"),
    ]
    fakes.control("p").mode = "hang"
    # probes time out, count as failures, open the circuit
    await eventually(lambda: manager.health()["backends"][0]["circuit"] == "open", what="the circuit opening")
    snapshot = manager.health()
    primary = snapshot["backends"][0]
    assert snapshot["status"] == "degraded"
    assert primary["healthy"] is False and primary["lastError"] == "no signature within 50 ms"
    assert primary["circuit"] == "open"
    assert sample(manager, "anode_signer_healthy", backend="primary:flaky") == 0
    fakes.control("p").mode = "ok"
    # a probe gets through: healthy, closed
    await eventually(lambda: manager.health()["backends"][0]["circuit"] == "closed", what="the circuit closing")
    assert manager.health()["status"] == "ok" and manager.health()["backends"][0]["healthy"] is True


async def test_health_is_down_when_no_backend_can_sign(closing: list[ManagedSigner]) -> None:
    manager = build(flaky(KEY_9, "p"), timeout_ms=50)
    closing.append(manager)
    fakes.control("p").mode = "fail"
    await manager.refresh()
    assert manager.health()["status"] == "down"


async def test_a_backend_signing_with_another_key_refuses_start_up(closing: list[ManagedSigner]) -> None:
    manager = build(local(KEY_9), backups=[flaky(KEY_9, "b")])
    closing.append(manager)
    fakes.control("b").mode = "wrong_key"
    with pytest.raises(ConfigError, match=r"backup1:flaky .*wrong key"):
        await manager.start()


# -- the chain's view -------------------------------------------------------------------------


class Chain:
    """Which signers each paymaster accepts, as ``signers(address)`` would answer."""

    def __init__(self, accepted: set[str]) -> None:
        self.accepted = accepted
        self.reads = 0

    def check(self) -> Callable[[str], Any]:
        async def accepts(address: str) -> bool:
            self.reads += 1
            return address in self.accepted

        return accepts


async def test_keys_the_paymaster_does_not_accept_are_skipped(closing: list[ManagedSigner]) -> None:
    chain = Chain({ADDRESS_8})
    manager = build(
        local(KEY_9), backups=[local(KEY_8, paymasters=["0x" + "5a" * 20])],
        targets=[PaymasterTarget(CHAIN, SINGLETON, "singleton", chain.check())],
    )  # fmt: skip
    closing.append(manager)
    await manager.start()
    assert (await manager.sign_for(SINGLETON, keccak(b"a"), chain_id=CHAIN)).signer == ADDRESS_8
    chain.accepted = set()
    await manager.refresh()
    with pytest.raises(SignerUnavailable, match="none of this server's signing keys is accepted"):
        await manager.sign_for(SINGLETON, keccak(b"b"), chain_id=CHAIN)
    assert manager.health()["status"] == "down"


async def test_a_retiring_key_signs_until_the_chain_accepts_the_new_one_then_never_again(
    closing: list[ManagedSigner],
) -> None:
    chain = Chain({ADDRESS_9})
    target = PaymasterTarget(CHAIN, SINGLETON, "singleton", chain.check())
    manager = build(
        flaky(KEY_7, "new", paymasters=["0x" + "5a" * 20]), retiring=[local(KEY_9)], targets=[target],
        retry={"attempts": 1},
    )  # fmt: skip
    closing.append(manager)
    await manager.start()
    assert (await manager.sign_for(SINGLETON, keccak(b"before"), chain_id=CHAIN)).signer == ADDRESS_9
    chain.accepted.add(ADDRESS_7)  # addSigner(new) mined
    await manager.refresh()
    assert (await manager.sign_for(SINGLETON, keccak(b"after"), chain_id=CHAIN)).signer == ADDRESS_7
    fakes.control("new").mode = "fail"  # even now, the retiring key stays retired
    with pytest.raises(SignerUnavailable):
        await manager.sign_for(SINGLETON, keccak(b"new key down"), chain_id=CHAIN)
    assert manager.health()["paymasters"][0]["candidates"] == ["primary:flaky"]


# -- losing the primary under load --------------------------------------------------------------


@pytest.mark.parametrize("how", ["fail", "hang"])
async def test_losing_the_primary_under_load_loses_no_request(how: fakes.Mode, closing: list[ManagedSigner]) -> None:
    """4,000 signatures from 200 concurrent callers; the primary dies a quarter of the way in."""
    chain = Chain({ADDRESS_9, ADDRESS_8})
    manager = build(
        flaky(KEY_9, "p"),
        backups=[flaky(KEY_9, "same-key"), local(KEY_8, paymasters=["0x" + "5a" * 20])],
        targets=[PaymasterTarget(CHAIN, SINGLETON, "singleton", chain.check())],
        timeout_ms=150, retry={"attempts": 2, "backoff_ms": 5}, circuit={"failures": 3, "reset_after_s": 60},
    )  # fmt: skip
    closing.append(manager)
    await manager.start()
    digests = [os.urandom(32) for _ in range(4000)]
    done = 0

    async def caller(mine: list[bytes]) -> list[ManagedSignature]:
        nonlocal done
        out = []
        for digest in mine:
            out.append(await manager.sign_for(SINGLETON, digest, chain_id=CHAIN))
            done += 1
            if done == 1000:
                fakes.control("p").mode = how
            if done == 2500:
                fakes.control("same-key").mode = "fail"  # and then the same key's replica too
        return out

    shares = [digests[i::200] for i in range(200)]
    results = await asyncio.gather(*(caller(share) for share in shares))
    signed = {s.digest: s for batch in results for s in batch}
    assert len(signed) == 4000
    for digest in digests:
        assert recovered_address(signed[digest]) == signed[digest].signer in (ADDRESS_9, ADDRESS_8)
    by = [s.backend for s in signed.values()]
    assert by.count("primary:flaky") >= 1000 and by.count("backup1:flaky") > 0 and by.count("backup2:local") > 0
    assert sample(manager, "anode_signer_circuit_state", backend="primary:flaky") == 2
    assert sample(manager, "anode_signer_failovers_total", backend="primary:flaky") > 0


def test_metrics_registries_are_separate() -> None:
    one, two = Metrics(), Metrics()
    one.signatures.labels("a", "local").inc()
    assert two.registry.get_sample_value("anode_signer_signatures_total", {"backend": "a", "type": "local"}) is None
