"""What every signer backend must do, as one test suite each backend's test module subclasses.

In the manner of web3.py's ``EthModuleTest``: ``tests/signers/test_<backend>.py`` defines
``class TestXSigner(SignerContract)`` with ``backend = "x"`` and three fixtures —

- ``signer_config``: the ``signer:`` mapping exactly as it would appear in a config file;
- ``signer_env``: environment variables the backend needs (credentials, SoftHSM2's configuration,
  a plugin's path), set in this process for the in-process tests and given to ``anode serve``;
- ``signer_secrets``: the secret strings (key, PIN, password, phrase) that must never appear in a
  ``repr``, a ``str`` or a log line.

The suite checks the ``Signer`` protocol: a stable checksummed address; signatures over random
digests that recover (through two independent implementations) to that address, with low ``s``
and ``v`` in {27, 28}; fifty concurrent signatures; no secret in reprs, errors or logs (DEBUG,
with the backend failing behind the signer manager, and records required). And it proves the
backend on chain: its address is added as a signer of the sandbox's SingletonPaymaster V7 (by the
owner, through Pimlico's ``MultiSigner.addSigner``), ``anode serve`` runs with the backend as its
``signer:``, and a counterfactual SimpleAccount operation it sponsors is executed by the real
EntryPoint's ``handleOps``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import httpx
import pytest
from coincurve import PublicKey
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_keys import keys
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from anode.devchain.anvil import Anvil
from anode.devchain.deploy import Deployment
from anode.devchain.rpc import DevRpc, encode_call
from anode.signers.base import SECP256K1_N, SignedDigest, Signer
from anode.signers.manager import ManagedSigner
from anode.signers.manager_settings import BackendEntry, ManagerSettings, RetrySettings
from anode.signers.registry import build_signer, signer_settings
from tests.support.onchain import call_contract, user_op_type
from tests.support.server import running_server
from tests.support.wallet import Client, server_config

VERSION = "v0.7"


def _error_texts(error: BaseException) -> list[str]:
    """``str`` and ``repr`` of an error and of everything it was raised from."""
    texts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current), str(getattr(current, "message", ""))]
        current = current.__cause__ or current.__context__
    return texts


def assert_valid(signed: SignedDigest, digest: bytes, address: str) -> None:
    """A canonical Ethereum signature of exactly ``digest`` by ``address``."""
    assert signed.digest == digest
    assert signed.signer == address
    assert signed.v in (27, 28)
    assert 0 < signed.r < SECP256K1_N
    assert 0 < signed.s <= SECP256K1_N // 2, "high s: OpenZeppelin's ECDSA.recover would revert"
    signature = signed.signature
    assert len(signature) == 65
    point = PublicKey.from_signature_and_message(signature[:64] + bytes([signed.v - 27]), digest, hasher=None)
    assert to_checksum_address(keccak(point.format(compressed=False)[1:])[12:]) == address
    by_eth_keys = keys.Signature(vrs=(signed.v - 27, signed.r, signed.s)).recover_public_key_from_msg_hash(digest)
    assert by_eth_keys.to_checksum_address() == address


class SignerContract:
    backend: ClassVar[str]

    @pytest.fixture
    def in_env(self, signer_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
        """The backend's environment, in this process as in the server's."""
        for name, value in signer_env.items():
            monkeypatch.setenv(name, value)

    @pytest.fixture
    async def signer(self, signer_config: dict[str, Any], in_env: None) -> AsyncIterator[Signer]:
        signer = build_signer(signer_settings(signer_config))
        yield signer
        await signer.aclose()

    async def test_is_a_signer_with_a_stable_checksummed_address(
        self, signer: Signer, signer_config: dict[str, Any]
    ) -> None:
        assert isinstance(signer, Signer)
        assert signer.backend == self.backend
        assert signer.address == to_checksum_address(signer.address)
        again = build_signer(signer_settings(signer_config))
        try:
            assert again.address == signer.address
        finally:
            await again.aclose()

    async def test_signatures_recover_to_the_address_with_low_s_and_v_27_or_28(self, signer: Signer) -> None:
        digests = [os.urandom(32) for _ in range(16)] + [b"\x00" * 31 + b"\x01", b"\xff" * 32, keccak(b"")]
        for digest in digests:
            assert_valid(await signer.unsafe_sign_hash(digest), digest, signer.address)

    async def test_fifty_concurrent_signatures_are_all_valid(self, signer: Signer) -> None:
        digests = [os.urandom(32) for _ in range(50)]
        results = await asyncio.gather(*(signer.unsafe_sign_hash(digest) for digest in digests))
        for digest, signed in zip(digests, results, strict=True):
            assert_valid(signed, digest, signer.address)

    async def test_no_secret_in_reprs_or_logs(
        self, signer_config: dict[str, Any], signer_secrets: list[str], in_env: None, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Build, sign and fail, with every logger at DEBUG; then grep everything that was printed.

        A backend that signs in process logs nothing of its own, so the test also drives it through
        the signer manager, with a second instance of the backend as the backup: a failure of the
        primary is logged there (at DEBUG, with the backend's own error message) and raised as
        ``SignerUnavailable`` — the places an error text carrying a key, PIN or token would leak.
        The test insists that records were captured, and greps the ``str``/``repr`` of every error
        raised, causes included. The failure here is refused before any I/O; a backend that talks
        to a server is also failed after the request was sent, by an answer carrying secrets, in
        ``tests/signers/test_leaks.py``.
        """
        assert signer_secrets, "the subclass must name the secrets to look for"
        caplog.set_level(logging.DEBUG)
        caplog.set_level(logging.DEBUG, logger="anode")
        settings = signer_settings(signer_config)
        signer = build_signer(settings)
        manager: ManagedSigner | None = None
        errors: list[BaseException] = []
        try:
            manager = ManagedSigner.from_settings(
                ManagerSettings(
                    primary=BackendEntry(signer=signer_settings(signer_config)),
                    backups=[BackendEntry(signer=signer_settings(signer_config))],  # the same key, built again
                    retry=RetrySettings(attempts=1, backoff_ms=0),
                    health_interval_s=0,
                )
            )
            await signer.unsafe_sign_hash(keccak(b"anything"))
            await manager.start()
            await manager.unsafe_sign_hash(keccak(b"through the manager"))
            for sign in (signer.unsafe_sign_hash, manager.unsafe_sign_hash):
                with pytest.raises(Exception) as caught:
                    await sign(b"\x42" * 31)  # not a 32-byte digest: every backend refuses it
                errors.append(caught.value)
            texts = [repr(signer), str(signer), f"{signer!r}", repr(settings), str(settings), f"{settings}"]
            texts += [settings.model_dump_json(), repr(manager), str(manager.health())]
            texts += [text for error in errors for text in _error_texts(error)]
            assert any(record.name.startswith("anode") for record in caplog.records), "nothing was logged"
            assert "; trying backup1:" in caplog.text, "the backend's failure was not logged"
            texts += [caplog.text, *(record.getMessage() for record in caplog.records)]
            for text in texts:
                for secret in signer_secrets:
                    assert secret not in text
            assert signer.address in repr(signer), "a signer's repr should name its address"
        finally:
            if manager is not None:
                await manager.aclose()
            await signer.aclose()

    async def test_a_sponsored_operation_succeeds_on_chain(
        self,
        signer: Signer,
        signer_config: dict[str, Any],
        signer_env: dict[str, str],
        anvil: Anvil,
        deployment: Deployment,
    ) -> None:
        paymaster = deployment.singleton_paymasters[VERSION]
        with DevRpc(anvil.rpc_url) as rpc:
            add = encode_call("addSigner(address)", ["address"], [signer.address])
            rpc.transact(deployment.owner, paymaster, add)
            assert rpc.call_function(paymaster, "signers(address)", ["address"], [signer.address], ["bool"]) == (True,)

        config = server_config(anvil, deployment, "0x" + "11" * 32, [("singleton", VERSION)])
        config["signer"] = signer_config
        with running_server(config, env=signer_env) as url:
            health = httpx.get(f"{url}/health").json()
            assert health["signer"] == {"address": signer.address, "backend": self.backend}
            client = Client(url, anvil, deployment, VERSION)
            op, _, _ = client.sponsor()

            # the paymaster signature is this backend's, over the contract's own getHash
            tuple_type = user_op_type(VERSION)
            (digest,) = call_contract(
                anvil.rpc_url, paymaster, f"getHash(uint8,{tuple_type})", ["uint8", tuple_type],
                [0, op.to_tuple(VERSION)], ["bytes32"],
            )  # fmt: skip
            recovered = Account.recover_message(
                encode_defunct(primitive=bytes(digest)), signature=op.paymaster_data[-65:]
            )
            assert recovered == signer.address

            outcome = client.submit(op)
        assert outcome.success, outcome.reason
        (event,) = outcome.events
        assert event.success and event.paymaster == paymaster and event.sender == op.sender
