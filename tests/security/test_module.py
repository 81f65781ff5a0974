"""The ``security_filter`` module on its own: verdicts, the confirmation token's life (stub checks,
final redeems), what it leaves for the policy engine, and its configuration.

The node is a small in-memory stand-in (code per address, by deployment block); the tokens live in
a real SQLite database. The same flow through the HTTP API on anvil is in ``test_flow.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from eth_abi import encode
from eth_utils.address import to_checksum_address
from pydantic import ValidationError

from anode.chain.cache import MemoryTTLCache
from anode.errors import InvalidRequest
from anode.paymasters.base import GasDefaults
from anode.pipeline.base import Context, Verdict
from anode.pipeline.modules.security import (
    BLOCKED,
    CONFIRMATION_INVALID,
    CONFIRMATION_REQUIRED,
    Config,
    SecurityFilter,
    confirmation_digest,
)
from anode.pipeline.routes import Route, build_family
from anode.pipeline.security.decode import APPROVE, EXECUTE, Call
from anode.sponsorship import SponsorRequest
from anode.store.confirmations import SqlConfirmationStore
from anode.store.database import create_engine, upgrade
from anode.userop.models import parse_user_op
from anode.userop.versions import EntryPointVersion

CHAIN_ID = 31337
EP07 = "0x0000000071727De22E5E9d8BAf0edAc6f37da032"
PM07 = "0x" + "07" * 20
SENDER = to_checksum_address("0x" + "a1" * 20)
OLD = to_checksum_address("0x" + "01" * 20)  # deployed at block 10
FRESH = to_checksum_address("0x" + "02" * 20)  # deployed at block 995
BAD = to_checksum_address("0x" + "0b" * 20)
SPENDER = to_checksum_address("0x" + "5e" * 20)
LATEST = 1000
KEY = "key-a"


class FakeNode:
    """``eth_getCode`` and ``eth_blockNumber`` for contracts deployed at given blocks."""

    def __init__(self, deployed: dict[str, int]) -> None:
        self.deployed = {address.lower(): block for address, block in deployed.items()}
        self.calls = 0

    async def request(self, method: str, params: list[Any]) -> Any:
        self.calls += 1
        if method == "eth_blockNumber":
            return hex(LATEST)
        assert method == "eth_getCode"
        address, tag = params
        at = LATEST if tag == "latest" else int(tag, 16)
        block = self.deployed.get(address.lower())
        return "0x6000" if block is not None and block <= at else "0x"


def execute(target: str, data: bytes = b"\x01\x02\x03\x04", value: int = 0) -> str:
    return "0x" + (EXECUTE + encode(["address", "uint256", "bytes"], [target, value, data])).hex()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'anode.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


class Harness:
    def __init__(self, engine: sa.Engine, **config: Any) -> None:
        self.now = 1_900_000_000.0
        self.node = FakeNode({OLD: 10, FRESH: 995, BAD: 10})
        family = build_family("verifying", bytes.fromhex(PM07[2:]), EntryPointVersion.V07, GasDefaults(100_000, 0))
        self.route = Route(CHAIN_ID, bytes.fromhex(EP07[2:]), EntryPointVersion.V07, family, self.node, None)  # type: ignore[arg-type]
        self.store = SqlConfirmationStore(engine, clock=lambda: self.now)
        settings = {"blacklist_contracts": [BAD], "recent_deployment_blocks": 100, **config}
        self.module = SecurityFilter(Config.model_validate(settings), MemoryTTLCache(), self.store)

    def context(
        self, call_data: str, *, final: bool, token: Any = None, key: str | None = KEY, nonce: str = "0x1"
    ) -> Context:
        raw = {"sender": SENDER, "nonce": nonce, "callData": call_data}
        op = parse_user_op(raw, EntryPointVersion.V07)
        context = {} if token is None else {"confirmationToken": token}
        request = SponsorRequest(raw, EP07, CHAIN_ID, context, "test", key)
        return Context(self.route, op, request, key, final, 0)


@pytest.fixture
def harness(engine: sa.Engine) -> Harness:
    return Harness(engine)


async def test_an_old_contract_passes_and_the_calls_are_left_for_the_policy_engine(harness: Harness) -> None:
    ctx = harness.context(execute(OLD), final=True)
    outcome = await harness.module.run(ctx)
    assert outcome.verdict is Verdict.CONTINUE and outcome.data == {"riskScore": 15, "riskLevel": "low"}
    assert ctx.decoded().calls == (Call(OLD, 0, "0x01020304", b"\x01\x02\x03\x04"),)
    assert not ctx.confirmed


async def test_a_blacklisted_target_is_blocked(harness: Harness) -> None:
    ctx = harness.context(execute(BAD), final=False)
    outcome = await harness.module.run(ctx)
    assert outcome.verdict is Verdict.BLOCK and outcome.code == BLOCKED
    assert "risk 100/100" in outcome.message and BAD in outcome.message
    assessment = (outcome.data or {})["securityAssessment"]
    assert assessment["riskLevel"] == "critical" and assessment["riskFactors"][0]["type"] == "blacklisted_contract"
    assert ctx.decoded().calls[0].target == BAD


async def test_the_confirmation_flow_stub_then_final(harness: Harness) -> None:
    # 1. stub without a token: a warning carrying a fresh token (the wallet learns it at stub time)
    outcome = await harness.module.run(harness.context(execute(FRESH), final=False))
    assert outcome.verdict is Verdict.WARNING and outcome.code == CONFIRMATION_REQUIRED
    data = outcome.data or {}
    token = data["confirmationToken"]
    assert data["requiresConfirmation"] is True and data["confirmationExpiresAt"] == int(harness.now) + 600
    warning = data["securityWarning"]
    assert warning["riskScore"] == 45 and warning["riskLevel"] == "high"
    assert {f["type"] for f in warning["riskFactors"]} == {"unverified_contract", "recent_deployment"}
    assert warning["recommendations"] and "5 blocks ago" in warning["message"]
    # 2. stub with the token: goes on, nothing consumed
    for _ in range(2):
        ctx = harness.context(execute(FRESH), final=False, token=token)
        outcome = await harness.module.run(ctx)
        assert outcome.verdict is Verdict.CONTINUE and ctx.confirmed and not ctx.compensations
    # 3. final with the token: redeemed, with a compensation in case signing fails
    ctx = harness.context(execute(FRESH), final=True, token=token)
    outcome = await harness.module.run(ctx)
    assert outcome.verdict is Verdict.CONTINUE and ctx.confirmed and (outcome.data or {})["confirmed"] is True
    assert len(ctx.compensations) == 1
    # 4. again: the token is spent
    again = await harness.module.run(harness.context(execute(FRESH), final=True, token=token))
    assert again.verdict is Verdict.BLOCK and again.code == CONFIRMATION_INVALID
    assert "already used" in again.message and (again.data or {})["reason"] == "reused"
    # 5. signing failed after the redeem: the compensation gives the token back
    await ctx.compensations[0]()
    retry = harness.context(execute(FRESH), final=True, token=token)
    assert (await harness.module.run(retry)).verdict is Verdict.CONTINUE


async def test_a_token_for_another_key_operation_or_time_is_refused(harness: Harness) -> None:
    token = ((await harness.module.run(harness.context(execute(FRESH), final=False))).data or {})["confirmationToken"]
    cases = {
        "was issued to another API key": harness.context(execute(FRESH), final=True, token=token, key="key-b"),
        "confirms a different operation": harness.context(execute(FRESH), final=True, token=token, nonce="0x2"),
        "is not a token this server issued": harness.context(execute(FRESH), final=True, token="made-up"),
    }
    for words, ctx in cases.items():
        outcome = await harness.module.run(ctx)
        assert outcome.verdict is Verdict.BLOCK and outcome.code == CONFIRMATION_INVALID and words in outcome.message
    harness.now += 601
    expired = await harness.module.run(harness.context(execute(FRESH), final=False, token=token))
    assert expired.code == CONFIRMATION_INVALID and "expired" in expired.message


async def test_the_digest_covers_the_action_not_gas_or_paymaster_fields(harness: Harness) -> None:
    base = {"sender": SENDER, "nonce": "0x1", "callData": execute(FRESH)}
    op = parse_user_op(base, EntryPointVersion.V07)
    priced = parse_user_op(
        base | {"callGasLimit": "0x1", "maxFeePerGas": "0x5", "paymaster": PM07, "paymasterData": "0x01"},
        EntryPointVersion.V07,
    )
    ep = bytes.fromhex(EP07[2:])
    assert confirmation_digest(op, CHAIN_ID, ep) == confirmation_digest(priced, CHAIN_ID, ep)
    for changed in ({"nonce": "0x2"}, {"callData": execute(OLD)}, {"factory": PM07, "factoryData": "0x01"}):
        assert confirmation_digest(parse_user_op(base | changed, EntryPointVersion.V07), CHAIN_ID, ep) != (
            confirmation_digest(op, CHAIN_ID, ep)
        )
    assert confirmation_digest(op, CHAIN_ID + 1, ep) != confirmation_digest(op, CHAIN_ID, ep)


async def test_a_token_never_overrides_a_block_and_is_not_spent_when_not_needed(harness: Harness) -> None:
    token = ((await harness.module.run(harness.context(execute(FRESH), final=False))).data or {})["confirmationToken"]
    blocked = await harness.module.run(harness.context(execute(BAD), final=True, token=token))
    assert blocked.code == BLOCKED
    clean = harness.context(execute(OLD), final=True, token=token)
    assert (await harness.module.run(clean)).verdict is Verdict.CONTINUE and not clean.confirmed
    confirmed = harness.context(execute(FRESH), final=True, token=token)
    assert (await harness.module.run(confirmed)).verdict is Verdict.CONTINUE  # still unspent


async def test_a_token_that_is_not_a_string_is_a_client_error(harness: Harness) -> None:
    with pytest.raises(InvalidRequest) as raised:
        await harness.module.run(harness.context(execute(FRESH), final=False, token=123))
    assert raised.value.field == "context.confirmationToken"


async def test_unlimited_approval_asks_for_confirmation_and_a_verified_spender_does_not(engine: sa.Engine) -> None:
    approve = APPROVE + encode(["address", "uint256"], [SPENDER, 2**256 - 1])
    strict = Harness(engine, verified_contracts=[OLD])
    outcome = await strict.module.run(strict.context(execute(OLD, approve), final=False))
    assert outcome.code == CONFIRMATION_REQUIRED
    trusting = Harness(engine, verified_contracts=[OLD, SPENDER])
    assert (await trusting.module.run(trusting.context(execute(OLD, approve), final=False))).data == {
        "riskScore": 0,
        "riskLevel": "low",
    }


async def test_a_hot_target_costs_no_rpc_call(harness: Harness) -> None:
    await harness.module.run(harness.context(execute(OLD), final=False))
    reads = harness.node.calls
    for _ in range(5):
        await harness.module.run(harness.context(execute(OLD), final=False))
    assert harness.node.calls == reads


def test_config_is_validated() -> None:
    assert Config().block_threshold == 80 and Config().confirm_threshold == 40
    assert Config.model_validate({"large_value_wei": "5000000000000000000"}).large_value_wei == 5 * 10**18
    for bad in (
        {"confirm_threshold": 90, "block_threshold": 80},
        {"blacklist_contracts": ["0x1234"]},
        {"weights": {"no_such_factor": 10}},
        {"weights": {"unverified_contract": 101}},
        {"block_threshold": 0},
        {"surprise": True},
    ):
        with pytest.raises(ValidationError):
            Config.model_validate(bad)
