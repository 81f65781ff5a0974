"""The policy engine as the pipeline runs it: decisions, reservations and their release, dry runs,
usage status, and policies seeded from settings.

Policies live in a real SQLite database (a temporary file); counters in a ``MemoryLimiter``
(every store is held to the same contract in ``test_limits.py``). The clock is fixed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from eth_abi.abi import encode

from anode.chain.cache import MemoryTTLCache
from anode.errors import ConfigError
from anode.paymasters.base import GasDefaults
from anode.pipeline.base import Context, Outcome, Verdict
from anode.pipeline.modules.policy_engine import PolicyEngineModule, operation_from, operation_of
from anode.pipeline.modules.security import Config as SecurityConfig
from anode.pipeline.modules.security import SecurityFilter
from anode.pipeline.routes import Route, build_family
from anode.pipeline.runner import Pipeline
from anode.pipeline.security.decode import EXECUTE, EXECUTE_7579
from anode.policy.calls import Call
from anode.policy.engine import Operation, PolicyEngine
from anode.policy.evaluate import CONDITION_FAILED, LIMIT_EXCEEDED, NO_POLICY, OpFacts
from anode.policy.limits import MemoryLimiter
from anode.policy.models import Policy
from anode.policy.repository import PolicyRepository
from anode.policy.webhooks import WebhookClient
from anode.sponsorship import SponsorRequest
from anode.store.confirmations import SqlConfirmationStore
from anode.userop.codec import parse_address
from anode.userop.models import parse_user_op
from anode.userop.versions import EntryPointVersion
from tests.policy.conftest import ETH, MINT, NFT, OTHER_SENDER, SENDER, TOKEN, TRANSFER, facts, policy

NOW = datetime(2026, 11, 21, 15, 30, tzinfo=UTC).timestamp()
EP07 = "0x0000000071727De22E5E9d8BAf0edAc6f37da032"
PAYMASTER = "0x0707070707070707070707070707070707070707"


@pytest.fixture
async def engine(sqlite_engine: sa.Engine) -> AsyncIterator[PolicyEngine]:
    repository = PolicyRepository(sqlite_engine, refresh_seconds=0)
    engine = PolicyEngine(repository, MemoryLimiter(lambda: NOW), WebhookClient(), clock=lambda: NOW)
    yield engine
    await engine.aclose()


def operation(facts_: OpFacts | None = None) -> Operation:
    return Operation(facts_ or facts(), {"sender": SENDER}, EP07)


def seed(engine: PolicyEngine, *policies: dict[str, Any]) -> None:
    engine.repository.seed(list(policies))


# -- decisions --------------------------------------------------------------------------------


async def test_with_no_policy_at_all_the_server_sponsors_and_warns_once(
    engine: PolicyEngine, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "anode.policy"):
        assert (await engine.decide(operation(), final=True)).sponsored
        assert (await engine.decide(operation(), final=True)).sponsored
    assert caplog.text.count("no sponsorship policies are defined") == 1


async def test_when_no_policies_refuse_sponsors_nothing(sqlite_engine: sa.Engine) -> None:
    closed = PolicyEngine(PolicyRepository(sqlite_engine), MemoryLimiter(), WebhookClient(), open_when_empty=False)
    try:
        decision = await closed.decide(operation(), final=True)
    finally:
        await closed.aclose()
    assert decision.refusal is not None and decision.refusal.code == NO_POLICY


async def test_once_a_policy_exists_uncovered_operations_are_refused(engine: PolicyEngine) -> None:
    seed(engine, policy(type="contract", target=NFT, enabled=False))
    decision = await engine.decide(operation(), final=True)
    assert decision.refusal is not None and decision.refusal.code == NO_POLICY


async def test_an_amount_limit_holds_and_the_refusal_says_when_it_resets(engine: PolicyEngine) -> None:
    seed(engine, policy(name="daily cap", rate_limits=[{"type": "amount", "limit": "0.003 ether", "window": 86400}]))
    op = operation(facts(max_gas_cost=10**15))
    for _ in range(3):
        decision = await engine.decide(op, final=True)
        assert decision.sponsored and len(decision.reserved) == 1
    refused = await engine.decide(op, final=True)
    assert refused.refusal is not None and refused.refusal.code == LIMIT_EXCEEDED
    assert refused.refusal.message == (
        "policy 'daily cap': amount limit of 0.003 ETH per 86400 s reached (0.003 ETH used, this operation may "
        "cost up to 0.001 ETH); resets at 2026-11-22T00:00:00Z"
    )


async def test_a_wallet_star_policy_counts_each_wallet_separately(engine: PolicyEngine) -> None:
    seed(engine, policy(type="wallet", target="*", rate_limits=[{"type": "request", "limit": 2, "window": 3600}]))
    for sender in (SENDER, OTHER_SENDER):
        assert (await engine.decide(operation(facts(sender)), final=True)).sponsored
        assert (await engine.decide(operation(facts(sender)), final=True)).sponsored
        refused = await engine.decide(operation(facts(sender)), final=True)
        assert refused.refusal is not None and sender in refused.refusal.message


async def test_a_narrow_policy_limit_binds_even_when_a_broad_one_has_room(engine: PolicyEngine) -> None:
    seed(
        engine,
        policy(id="project", rate_limits=[{"type": "request", "limit": 100, "window": 3600}]),
        policy(id="nft", type="contract", target=NFT, rate_limits=[{"type": "request", "limit": 1, "window": 3600}]),
    )
    minting = operation(facts(calls=(Call(NFT, 0, MINT),)))
    assert (await engine.decide(minting, final=True)).sponsored
    refused = await engine.decide(minting, final=True)
    assert refused.refusal is not None and refused.refusal.data["policyId"] == "nft"
    # the refused operation reserved nothing: the project counter shows the one sponsored operation
    status = await engine.status("project")
    assert status["limits"][0]["used"] == 1
    # operations to other contracts go on under the project policy
    assert (await engine.decide(operation(), final=True)).sponsored


async def test_stub_decisions_reserve_nothing_but_refuse_what_final_would(engine: PolicyEngine) -> None:
    seed(engine, policy(id="one", rate_limits=[{"type": "request", "limit": 1, "window": 3600}]))
    for _ in range(3):
        stub = await engine.decide(operation(), final=False)
        assert stub.sponsored and stub.reserved == ()
    assert (await engine.decide(operation(), final=True)).sponsored
    stub = await engine.decide(operation(), final=False)
    assert stub.refusal is not None and stub.refusal.code == LIMIT_EXCEEDED


async def test_release_gives_the_reservation_back(engine: PolicyEngine) -> None:
    seed(engine, policy(id="one", rate_limits=[{"type": "request", "limit": 1, "window": 3600}]))
    first = await engine.decide(operation(), final=True)
    await engine.release(first.reserved)
    assert (await engine.decide(operation(), final=True)).sponsored


async def test_a_named_policy_must_apply(engine: PolicyEngine) -> None:
    seed(engine, policy(id="all"), policy(id="nft", type="contract", target=NFT))
    assert (await engine.decide(operation(), final=True, only="all")).sponsored
    refused = await engine.decide(operation(), final=True, only="nft")
    assert refused.refusal is not None and "'nft', named in context.sponsorshipPolicyId, does not apply" in (
        refused.refusal.message
    )
    missing = await engine.decide(operation(), final=True, only="nope")
    assert missing.refusal is not None and "does not exist" in missing.refusal.message


# -- dry runs and status ----------------------------------------------------------------------


async def test_would_sponsor_judges_each_policy_alone_and_reserves_nothing(engine: PolicyEngine) -> None:
    seed(
        engine,
        policy(id="open", name="Open", rate_limits=[{"type": "request", "limit": 1, "window": 60}]),
        policy(id="mints", conditions=[{"field": "function", "operator": "in", "value": [MINT]}]),
        policy(id="later", start_time="2027-01-01"),
    )
    for _ in range(2):
        assert [p.id for p in await engine.would_sponsor(operation())] == ["open"]
    assert [p.id for p in await engine.would_sponsor(operation(), ["mints", "open", "ghost"])] == ["open"]
    assert (await engine.status("open"))["limits"][0]["used"] == 0


async def test_status_shows_usage_remaining_and_reset_per_limit(engine: PolicyEngine) -> None:
    seed(
        engine,
        policy(
            id="each",
            type="wallet",
            target="*",
            rate_limits=[
                {"type": "amount", "limit": "1 ether", "window": 86400},
                {"type": "request", "limit": 5},
                {"type": "gas_price", "limit": "100 gwei"},
            ],
        ),
    )
    await engine.decide(operation(facts(max_gas_cost=ETH // 4)), final=True)
    with pytest.raises(Exception, match="pass \\?wallet=0x"):
        await engine.status("each")
    status = await engine.status("each", wallet=SENDER.lower(), contract=TOKEN)
    amount, requests, gas = status["limits"]
    assert amount == {
        "type": "amount",
        "limit": str(ETH),
        "window": 86400,
        "used": str(ETH // 4),
        "remaining": str(3 * ETH // 4),
        "spent": "0",  # nothing included yet: all of it is reserved
        "reserved": str(ETH // 4),
        "windowStart": "2026-11-21T00:00:00Z",
        "resetsAt": "2026-11-22T00:00:00Z",
    }
    assert (requests["used"], requests["remaining"], requests["resetsAt"]) == (1, 4, None)
    assert gas == {"type": "gas_price", "limit": "100000000000"}
    assert status["wallet"] == SENDER and status["coversWallet"] and status["coversContract"]
    other = await engine.status("each", wallet=OTHER_SENDER)
    assert other["limits"][0]["used"] == "0"


# -- the pipeline module ----------------------------------------------------------------------


def route(node: Any = None) -> Route:
    family = build_family("verifying", parse_address(PAYMASTER), EntryPointVersion.V07, GasDefaults(100_000, 0))
    return Route(31337, parse_address(EP07), EntryPointVersion.V07, family, node, None)


def context(
    *, final: bool, call_data: bytes, request_context: dict[str, Any] | None = None, node: Any = None
) -> Context:
    raw = {
        "sender": SENDER,
        "nonce": "0x1",
        "callData": "0x" + call_data.hex(),
        "callGasLimit": "0x10000",
        "verificationGasLimit": "0x10000",
        "preVerificationGas": "0x10000",
        "maxFeePerGas": "0x3b9aca00",
        "maxPriorityFeePerGas": "0x1",
    }
    op = parse_user_op(raw, EntryPointVersion.V07)
    request = SponsorRequest(raw, EP07, 31337, request_context, "pm_getPaymasterData")
    return Context(route(node), op, request, None, final, op.max_gas_cost())


CALL_TOKEN = EXECUTE + encode(["address", "uint256", "bytes"], [TOKEN, 0, bytes.fromhex(TRANSFER[2:])])


async def test_the_module_reserves_for_final_data_and_leaves_a_compensation(engine: PolicyEngine) -> None:
    seed(engine, policy(id="token", type="contract", target=TOKEN, rate_limits=[{"type": "request", "limit": 1}]))
    module = PolicyEngineModule(engine)
    ctx = context(final=True, call_data=CALL_TOKEN)
    outcome = await module.run(ctx)
    assert outcome.verdict is Verdict.CONTINUE and outcome.data == {"policies": ["token"]}
    assert len(ctx.compensations) == 1
    again = await module.run(context(final=True, call_data=CALL_TOKEN))
    assert again.verdict is Verdict.BLOCK and again.code == LIMIT_EXCEEDED
    for undo in ctx.compensations:  # what the service does when signing or recording fails
        await undo()
    assert (await module.run(context(final=True, call_data=CALL_TOKEN))).verdict is Verdict.CONTINUE


MINT_NFT_7579 = EXECUTE_7579 + encode(
    ["bytes32", "bytes"], [b"\x00" * 32, bytes.fromhex(NFT[2:]) + (0).to_bytes(32, "big") + bytes.fromhex(MINT[2:])]
)


class OldContracts:
    """A node on which every address holds code deployed long ago: the security filter lets
    everything here through with a low score, so only the policy engine decides."""

    async def request(self, method: str, params: list[Any]) -> Any:
        return hex(1_000_000) if method == "eth_blockNumber" else "0x6000"


@pytest.fixture
def pipelines(engine: PolicyEngine, sqlite_engine: sa.Engine) -> dict[str, Pipeline]:
    """The policy engine alone, and with the real security filter in front of it."""
    module = PolicyEngineModule(engine)
    security = SecurityFilter(SecurityConfig(), MemoryTTLCache(), SqlConfirmationStore(sqlite_engine))
    return {"alone": Pipeline([module]), "filtered": Pipeline([security, module])}


async def through(pipeline: Pipeline, call_data: bytes) -> tuple[Context, dict[str, Outcome]]:
    ctx = context(final=False, call_data=call_data, node=OldContracts())
    report = await pipeline.run(ctx)
    outcomes = {m.name: m.outcome for m in report.modules}
    if "security_filter" in outcomes:
        assert outcomes["security_filter"].verdict is Verdict.CONTINUE, outcomes
    return ctx, outcomes


async def test_an_erc7579_op_gets_the_same_answer_from_the_dry_run_and_the_pipeline(
    engine: PolicyEngine, pipelines: dict[str, Pipeline]
) -> None:
    """With or without the security filter in the pipeline, and in ``pm_validateSponsorshipPolicies``."""
    seed(engine, policy(id="nft", type="contract", target=NFT, rate_limits=[{"type": "request", "limit": 5}]))
    for pipeline in pipelines.values():
        _, outcomes = await through(pipeline, MINT_NFT_7579)
        engine_said = outcomes["policy_engine"]
        assert engine_said.verdict is Verdict.CONTINUE and engine_said.data == {"policies": ["nft"]}
    dry = await engine.would_sponsor(operation_from(route(), context(final=False, call_data=MINT_NFT_7579).op, None))
    assert [p.id for p in dry] == ["nft"]


async def test_the_calls_do_not_depend_on_which_modules_ran(pipelines: dict[str, Pipeline]) -> None:
    expected = {
        b"": (),
        CALL_TOKEN: (Call(TOKEN, 0, TRANSFER),),
        MINT_NFT_7579: (Call(NFT, 0, MINT),),
        b"\x12\x34\x56\x78": None,  # not a call aNode can read: no calls to judge
    }
    for call_data, calls in expected.items():
        seen = [operation_of((await through(p, call_data))[0]).facts for p in pipelines.values()]
        dry = operation_from(route(), context(final=False, call_data=call_data).op, None).facts
        for facts_ in (*seen, dry):
            assert facts_.calls == calls, call_data.hex()
            assert facts_.account_selector == ("0x" + call_data[:4].hex() if call_data else None), call_data.hex()


async def test_a_deploy_only_op_is_refused_by_an_allow_list_with_or_without_the_security_filter(
    engine: PolicyEngine, pipelines: dict[str, Pipeline]
) -> None:
    seed(engine, policy(id="allow", conditions=[{"field": "target", "operator": "in", "value": [NFT]}]))
    for pipeline in pipelines.values():
        _, outcomes = await through(pipeline, b"")
        outcome = outcomes["policy_engine"]
        assert outcome.verdict is Verdict.BLOCK and outcome.code == CONDITION_FAILED
        assert "makes no call" in (outcome.message or "")


async def test_the_issues_example_sponsors_simple_account_execute_through_the_module(engine: PolicyEngine) -> None:
    seed(engine, policy(id="issue", conditions=[{"field": "function", "operator": "in", "value": ["0xb61d27f6"]}]))
    module = PolicyEngineModule(engine)
    assert CALL_TOKEN[:4] == bytes.fromhex("b61d27f6")
    assert (await module.run(context(final=True, call_data=CALL_TOKEN))).verdict is Verdict.CONTINUE
    refused = await module.run(context(final=True, call_data=MINT_NFT_7579))
    assert refused.verdict is Verdict.BLOCK and refused.code == CONDITION_FAILED


async def test_with_no_policy_the_dry_run_can_tell_the_server_sponsors_everything(
    engine: PolicyEngine, sqlite_engine: sa.Engine
) -> None:
    assert await engine.open_to_all()
    assert await engine.would_sponsor(operation()) == []  # no policy says so: open_to_all does
    assert (await engine.decide(operation(), final=False)).sponsored
    closed = PolicyEngine(PolicyRepository(sqlite_engine), MemoryLimiter(), WebhookClient(), open_when_empty=False)
    try:
        assert not await closed.open_to_all()
    finally:
        await closed.aclose()
    seed(engine, policy(id="any"))
    assert not await engine.open_to_all()


async def test_the_module_reads_the_named_policy_from_the_request_context(engine: PolicyEngine) -> None:
    seed(engine, policy(id="all"))
    module = PolicyEngineModule(engine)
    named = context(final=False, call_data=CALL_TOKEN, request_context={"sponsorshipPolicyId": "other"})
    assert (await module.run(named)).verdict is Verdict.BLOCK


def test_dry_run_operations_carry_the_paymaster_gas_in_their_cost() -> None:
    op = context(final=False, call_data=CALL_TOKEN).op
    dry = operation_from(route(), op, None)
    assert dry.facts.max_gas_cost == (op.max_gas_cost() + 100_000 * op.max_fee_per_gas)
    assert dry.facts.calls == (Call(TOKEN, 0, TRANSFER),)
    assert dry.user_operation_json()["paymaster"] == "0x0707070707070707070707070707070707070707"


# -- seeding and refreshing -------------------------------------------------------------------


async def test_seeding_is_idempotent_and_follows_the_file_until_the_api_changes_a_policy(
    sqlite_engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    repository = PolicyRepository(sqlite_engine, refresh_seconds=0)
    try:
        repository.seed([policy(id="a", name="first"), policy(id="b", name="b")])
        repository.seed([policy(id="a", name="first"), policy(id="b", name="b")])
        repository.seed([policy(id="a", name="renamed in the file")])
        assert [p.name for p in await repository.list()] == ["renamed in the file", "b"]
        await repository.replace(Policy.model_validate(policy(id="a", name="set through the API")))
        with caplog.at_level(logging.WARNING, "anode.policy"):
            repository.seed([policy(id="a", name="file again")])
        assert (await repository.get("a")).name == "set through the API"
        assert "keeping the API's" in caplog.text
    finally:
        await repository.aclose()


def test_an_invalid_seed_stops_start_up_naming_the_entry(sqlite_engine: sa.Engine) -> None:
    repository = PolicyRepository(sqlite_engine)
    with pytest.raises(ConfigError, match=r"policies\[1\]\.rate_limits\.0\.amount\.limit"):
        repository.seed([policy(id="ok"), policy(rate_limits=[{"type": "amount", "limit": 1.5, "window": 1}])])
    with pytest.raises(ConfigError, match="each id may appear once"):
        repository.seed([policy(id="twice"), policy(id="twice")])


async def test_a_busy_server_reloads_the_policies_ahead_and_never_waits_for_them(sqlite_engine: sa.Engine) -> None:
    """Past half the refresh interval, a request gets the current copy at once and a reload runs
    in the background; no copy older than the interval is ever served."""
    now = [0.0]
    reader = PolicyRepository(sqlite_engine, refresh_seconds=2, clock=lambda: now[0])
    writer = PolicyRepository(sqlite_engine)
    try:
        assert await reader.snapshot() == ()
        await writer.create(Policy.model_validate(policy(id="ahead")))
        now[0] = 1.2
        loads = reader._run

        calls: list[str] = []

        async def counted(work: Any, *args: Any) -> Any:
            calls.append(work.__name__)
            return await loads(work, *args)

        reader._run = counted  # type: ignore[method-assign]
        assert await reader.snapshot() == (), "the current copy, without waiting"
        reloading = reader._copy._reloading
        assert reloading is not None
        await reloading
        assert calls == ["_load_all"]
        assert [p.id for p in await reader.snapshot()] == ["ahead"]
        assert calls == ["_load_all"], "reloaded once, in the background"
    finally:
        await reader.aclose()
        await writer.aclose()


async def test_changes_by_another_process_show_up_after_the_refresh_interval(sqlite_engine: sa.Engine) -> None:
    now = [0.0]
    reader = PolicyRepository(sqlite_engine, refresh_seconds=2, clock=lambda: now[0])
    writer = PolicyRepository(sqlite_engine)
    try:
        assert await reader.snapshot() == ()
        await writer.create(Policy.model_validate(policy(id="new")))
        now[0] = 1.0
        assert await reader.snapshot() == ()
        now[0] = 2.5
        assert [p.id for p in await reader.snapshot()] == ["new"]
    finally:
        await reader.aclose()
        await writer.aclose()
