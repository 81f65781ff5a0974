"""``sbt_validator`` against real soul-bound ERC-721 contracts on anvil (``tests/contracts``).

Holders pass, non-holders are blocked with a message naming what is missing and where to get
it, a hot sender costs no ``eth_call`` (in process and through Redis), a revoked SBT counts
once its cache entry expires, and a node that cannot be read is an error, never "no SBT".
"""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from anode.chain.cache import MemoryTTLCache, RedisTTLCache
from anode.errors import ChainUnavailable, ConfigError
from anode.pipeline.base import Verdict
from anode.pipeline.modules import sbt
from tests.checks.conftest import CountingChainClient, context, deps, new_holder
from tests.contracts.checks import CheckContracts


def config(contracts: CheckContracts, *required: str, cache_ttl: float = 300) -> dict[str, Any]:
    return {
        "contracts": [
            {"address": contracts.sbt["identity"], "type": "identity"},
            {"address": contracts.sbt["identity_alt"], "type": "identity"},
            {"address": contracts.sbt["reputation"], "type": "reputation"},
        ],
        "required_types": list(required or ["identity"]),
        "cache_ttl": cache_ttl,
    }


async def test_a_holder_passes_and_a_non_holder_is_blocked(
    contracts: CheckContracts, node: CountingChainClient
) -> None:
    check = sbt.create(config(contracts, "identity"), deps(MemoryTTLCache()))
    assert check.name == "sbt_validator"
    assert check.stage == "check"
    holder, stranger = new_holder(), new_holder()
    contracts.mint_sbt("identity", holder)

    assert (await check.run(context(node, holder))).verdict is Verdict.CONTINUE

    outcome = await check.run(context(node, stranger))
    assert outcome.verdict is Verdict.BLOCK
    assert outcome.code == "ANODE_001_SBT_NOT_FOUND"
    assert stranger in outcome.message
    assert "identity" in outcome.message
    assert contracts.sbt["identity"] in outcome.message and contracts.sbt["identity_alt"] in outcome.message
    assert outcome.data is not None
    assert outcome.data["missingTypes"] == ["identity"]
    assert outcome.data["requiredTypes"] == ["identity"]
    assert outcome.data["contracts"] == {"identity": [contracts.sbt["identity"], contracts.sbt["identity_alt"]]}


async def test_every_required_type_is_needed_and_any_issuer_of_a_type_counts(
    contracts: CheckContracts, node: CountingChainClient
) -> None:
    check = sbt.create(config(contracts, "identity", "reputation"), deps(MemoryTTLCache()))
    holder = new_holder()
    contracts.mint_sbt("identity_alt", holder)  # the second identity issuer

    outcome = await check.run(context(node, holder))
    assert outcome.verdict is Verdict.BLOCK
    assert outcome.data is not None
    assert outcome.data["missingTypes"] == ["reputation"], "identity is held (from the other issuer)"
    assert outcome.data["requiredTypes"] == ["identity", "reputation"]
    assert "reputation" in outcome.message and contracts.sbt["reputation"] in outcome.message
    assert "identity from" not in outcome.message

    other = new_holder()
    contracts.mint_sbt("identity", other)
    contracts.mint_sbt("reputation", other)
    check = sbt.create(config(contracts, "identity", "reputation"), deps(MemoryTTLCache()))
    assert (await check.run(context(node, other))).verdict is Verdict.CONTINUE


async def test_a_hot_sender_costs_no_rpc_call_and_a_revocation_counts_after_the_ttl(
    contracts: CheckContracts, node: CountingChainClient
) -> None:
    now = [0.0]
    check = sbt.create(config(contracts, cache_ttl=300), deps(MemoryTTLCache(clock=lambda: now[0])))
    holder = new_holder()
    token = contracts.mint_sbt("identity", holder)

    assert (await check.run(context(node, holder))).verdict is Verdict.CONTINUE
    assert node.calls["eth_call"] == 3  # one balanceOf per configured contract, read together
    for _ in range(5):
        assert (await check.run(context(node, holder))).verdict is Verdict.CONTINUE
    assert node.calls["eth_call"] == 3, "a hot sender costs no RPC call"

    contracts.revoke_sbt("identity", token)
    now[0] += 299
    assert (await check.run(context(node, holder))).verdict is Verdict.CONTINUE  # cached: the TTL is the bound
    now[0] += 1
    assert (await check.run(context(node, holder))).verdict is Verdict.BLOCK
    assert node.calls["eth_call"] == 6


async def test_the_redis_cache_is_shared_between_processes(
    contracts: CheckContracts, anvil: Any, redis: Redis, redis_prefix: str
) -> None:
    """Two servers (two node clients, two caches, one Redis): the second makes no eth_call."""
    holder = new_holder()
    contracts.mint_sbt("reputation", holder)
    first_node, second_node = CountingChainClient(anvil.rpc_url), CountingChainClient(anvil.rpc_url)
    try:
        first = sbt.create(config(contracts, "reputation"), deps(RedisTTLCache(redis, prefix=redis_prefix)))
        second = sbt.create(config(contracts, "reputation"), deps(RedisTTLCache(redis, prefix=redis_prefix)))
        assert (await first.run(context(first_node, holder))).verdict is Verdict.CONTINUE
        assert (await second.run(context(second_node, holder))).verdict is Verdict.CONTINUE
        assert first_node.calls["eth_call"] == 3
        assert second_node.calls["eth_call"] == 0
        assert (await second.run(context(second_node, new_holder()))).verdict is Verdict.BLOCK
        assert second_node.calls["eth_call"] == 3
    finally:
        await first_node.aclose()
        await second_node.aclose()


async def test_a_node_that_is_down_is_an_error_not_a_missing_sbt(dead_node: CountingChainClient) -> None:
    """Fail closed, and distinctly: ``ChainUnavailable`` (503 / -32603), never ANODE_001."""
    contracts_config = {
        "contracts": [{"address": "0x" + "11" * 20, "type": "identity"}],
        "required_types": ["identity"],
    }
    check = sbt.create(contracts_config, deps(MemoryTTLCache()))
    with pytest.raises(ChainUnavailable, match="unreachable"):
        await check.run(context(dead_node, new_holder()))
    with pytest.raises(ChainUnavailable):  # the failure was not cached as "holds nothing"
        await check.run(context(dead_node, new_holder()))


async def test_a_misconfigured_address_is_an_error_naming_it(
    contracts: CheckContracts, node: CountingChainClient
) -> None:
    nothing_there = "0x" + "12" * 20
    check = sbt.create(
        {"contracts": [{"address": nothing_there, "type": "identity"}], "required_types": ["identity"]},
        deps(MemoryTTLCache()),
    )
    with pytest.raises(ChainUnavailable, match="no contract answers at 0x1212") as raised:
        await check.run(context(node, new_holder()))
    assert raised.value.code == "ANODE_CHAIN_UNAVAILABLE"

    # a contract that reverts balanceOf (here the PNT's staking contract has none)
    check = sbt.create(
        {"contracts": [{"address": contracts.staking, "type": "identity"}], "required_types": ["identity"]},
        deps(MemoryTTLCache()),
    )
    with pytest.raises(ChainUnavailable, match="reverted") as raised:
        await check.run(context(node, new_holder()))
    assert contracts.staking in raised.value.message


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"required_types": ["identity"]}, "sbt_validator.config.contracts"),
        ({"contracts": [{"address": "0x1234", "type": "identity"}], "required_types": ["identity"]}, "address"),
        ({"contracts": [{"address": "0x" + "11" * 20, "type": ""}], "required_types": ["identity"]}, "type"),
        ({"contracts": [{"address": "0x" + "11" * 20, "type": "identity"}], "required_types": []}, "required_types"),
        (
            {"contracts": [{"address": "0x" + "11" * 20, "type": "identity"}], "required_types": ["reputation"]},
            "no contract of type reputation",
        ),
        (
            {"supported_contracts": ["0x" + "11" * 20], "required_types": ["identity"]},
            "supported_contracts",
        ),
        (
            {
                "contracts": [{"address": "0x" + "11" * 20, "type": "identity"}],
                "required_types": ["identity"],
                "cache_ttl": -1,
            },
            "cache_ttl",
        ),
    ],
)
def test_bad_config_is_a_clear_error_naming_the_field(bad: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match="sbt_validator") as raised:
        sbt.create(bad, deps(MemoryTTLCache()))
    assert field in raised.value.message
