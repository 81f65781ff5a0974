"""``pnt_balance_validator`` against a real ERC-20 and staking contract on anvil (``tests/contracts``).

A balance at or above the minimum passes, below it is blocked with what is held and what is
missing; staked and locked amounts count only with ``include_staked``; a hot sender costs no
``eth_call``; a node that cannot be read is an error, never a zero balance.
"""

from __future__ import annotations

from typing import Any

import pytest

from anode.chain.cache import MemoryTTLCache
from anode.errors import ChainUnavailable, ConfigError
from anode.pipeline.base import Verdict
from anode.pipeline.modules import pnt
from tests.checks.conftest import CountingChainClient, context, deps, new_holder
from tests.contracts.checks import CheckContracts

PNT = 10**18
MIN = 100 * PNT


def config(contracts: CheckContracts, *, include_staked: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "contract_address": contracts.pnt,
        "min_balance": str(MIN),
        "include_staked": include_staked,
        "staking_contract": contracts.staking,
        **extra,
    }


async def test_a_balance_at_the_minimum_passes_and_below_it_is_blocked(
    contracts: CheckContracts, node: CountingChainClient
) -> None:
    check = pnt.create(config(contracts), deps(MemoryTTLCache()))
    assert check.name == "pnt_balance_validator"
    assert check.stage == "check"
    rich, exact, poor = new_holder(), new_holder(), new_holder()
    contracts.mint_pnt(rich, 250 * PNT)
    contracts.mint_pnt(exact, MIN)
    contracts.mint_pnt(poor, 60 * PNT)

    assert (await check.run(context(node, rich))).verdict is Verdict.CONTINUE
    assert (await check.run(context(node, exact))).verdict is Verdict.CONTINUE

    outcome = await check.run(context(node, poor))
    assert outcome.verdict is Verdict.BLOCK
    assert outcome.code == "ANODE_002_INSUFFICIENT_PNT"
    assert f"{poor} holds 60 PNT" in outcome.message
    assert "100 PNT are required" in outcome.message
    assert "get 40 PNT more" in outcome.message
    assert outcome.data == {
        "balance": {"available": str(60 * PNT), "staked": "0", "locked": "0", "total": str(60 * PNT)},
        "requirements": {"minBalance": str(MIN), "shortfall": str(40 * PNT)},
    }

    nothing = await check.run(context(node, new_holder()))
    assert nothing.verdict is Verdict.BLOCK
    assert nothing.data is not None
    assert nothing.data["requirements"]["shortfall"] == str(MIN)


async def test_staked_and_locked_amounts_count_only_with_include_staked(
    contracts: CheckContracts, node: CountingChainClient
) -> None:
    holder = new_holder()
    contracts.mint_pnt(holder, 60 * PNT)
    contracts.stake_for(holder, 30 * PNT)
    contracts.lock(holder, 10 * PNT)  # 20 staked, 10 locked: 90 in all

    without = pnt.create(config(contracts), deps(MemoryTTLCache()))
    outcome = await without.run(context(node, holder))
    assert outcome.verdict is Verdict.BLOCK
    assert outcome.data is not None
    assert outcome.data["balance"]["total"] == str(60 * PNT)

    counted = pnt.create(config(contracts, include_staked=True), deps(MemoryTTLCache()))
    outcome = await counted.run(context(node, holder))
    assert outcome.verdict is Verdict.BLOCK
    assert "holds 90 PNT (60 available, 20 staked, 10 locked)" in outcome.message
    assert "get 10 PNT more" in outcome.message
    assert outcome.data is not None
    assert outcome.data["balance"] == {
        "available": str(60 * PNT),
        "staked": str(20 * PNT),
        "locked": str(10 * PNT),
        "total": str(90 * PNT),
    }
    assert outcome.data["requirements"]["shortfall"] == str(10 * PNT)

    contracts.stake_for(holder, 10 * PNT)
    fresh = pnt.create(config(contracts, include_staked=True), deps(MemoryTTLCache()))
    assert (await fresh.run(context(node, holder))).verdict is Verdict.CONTINUE
    assert (await without.run(context(node, holder))).verdict is Verdict.BLOCK


def test_include_staked_without_a_staking_contract_is_refused_naming_both(contracts: CheckContracts) -> None:
    with pytest.raises(ConfigError, match="include_staked needs staking_contract") as raised:
        pnt.create(config(contracts, include_staked=True, staking_contract=None), deps(MemoryTTLCache()))
    assert "pnt_balance_validator" in raised.value.message


async def test_a_hot_sender_costs_no_rpc_call(contracts: CheckContracts, node: CountingChainClient) -> None:
    now = [0.0]
    check = pnt.create(config(contracts, include_staked=True, cache_ttl=60), deps(MemoryTTLCache(clock=lambda: now[0])))
    holder = new_holder()
    contracts.mint_pnt(holder, 150 * PNT)
    assert (await check.run(context(node, holder))).verdict is Verdict.CONTINUE
    assert node.calls["eth_call"] == 3  # balanceOf, stakedBalanceOf, lockedBalanceOf
    for _ in range(5):
        assert (await check.run(context(node, holder))).verdict is Verdict.CONTINUE
    assert node.calls["eth_call"] == 3
    now[0] += 60
    await check.run(context(node, holder))
    assert node.calls["eth_call"] == 6


async def test_a_node_that_is_down_is_an_error_not_a_zero_balance(dead_node: CountingChainClient) -> None:
    check = pnt.create(
        {
            "contract_address": "0x" + "22" * 20,
            "min_balance": 1,
            "include_staked": True,
            "staking_contract": "0x" + "33" * 20,
        },
        deps(MemoryTTLCache()),
    )
    with pytest.raises(ChainUnavailable, match="unreachable") as raised:
        await check.run(context(dead_node, new_holder()))
    assert raised.value.http_status == 503


async def test_a_token_address_without_a_contract_is_an_error_naming_it(node: CountingChainClient) -> None:
    check = pnt.create({"contract_address": "0x" + "23" * 20, "min_balance": 1}, deps(MemoryTTLCache()))
    with pytest.raises(ChainUnavailable, match="ERC-20 balanceOf: no contract answers at 0x2323"):
        await check.run(context(node, new_holder()))


def test_min_balance_takes_an_integer_or_a_decimal_string() -> None:
    base = {"contract_address": "0x" + "22" * 20}
    assert pnt.create(base | {"min_balance": "100000000000000000000"}, deps(MemoryTTLCache())).config.min_balance == MIN
    assert pnt.create(base | {"min_balance": MIN}, deps(MemoryTTLCache())).config.min_balance == MIN
    assert pnt.create(base | {"min_balance": 0}, deps(MemoryTTLCache())).config.min_balance == 0


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"min_balance": "1"}, "contract_address"),
        ({"contract_address": "0xabcd", "min_balance": "1"}, "contract_address"),
        ({"contract_address": "0x" + "22" * 20}, "min_balance"),
        ({"contract_address": "0x" + "22" * 20, "min_balance": 1e20}, "min_balance"),
        ({"contract_address": "0x" + "22" * 20, "min_balance": "1e20"}, "min_balance"),
        ({"contract_address": "0x" + "22" * 20, "min_balance": "-5"}, "min_balance"),
        ({"contract_address": "0x" + "22" * 20, "min_balance": "0x10"}, "min_balance"),
        ({"contract_address": "0x" + "22" * 20, "min_balance": str(2**256)}, "min_balance"),
        ({"contract_address": "0x" + "22" * 20, "min_balance": "1", "staking_contract": "nope"}, "staking_contract"),
        ({"contract_address": "0x" + "22" * 20, "min_balance": "1", "include_staked": "maybe"}, "include_staked"),
        ({"contract_address": "0x" + "22" * 20, "min_balance_required": "1"}, "min_balance_required"),
    ],
)
def test_bad_config_is_a_clear_error_naming_the_field(bad: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match="pnt_balance_validator") as raised:
        pnt.create(bad, deps(MemoryTTLCache()))
    assert f"pnt_balance_validator.config.{field}" in raised.value.message


@pytest.mark.parametrize(
    ("amount", "decimals", "text"),
    [(0, 18, "0"), (10**18, 18, "1"), (60 * 10**18 + 5, 18, "60.000000000000000005"), (1, 18, "0.000000000000000001"),
     (1234, 0, "1234"), (1234, 2, "12.34"), (2**256 - 1, 18, str(2**256 - 1)[:-18] + "." + str(2**256 - 1)[-18:])],
)  # fmt: skip
def test_amounts_in_messages_are_exact(amount: int, decimals: int, text: str) -> None:
    assert pnt.format_units(amount, decimals) == text
