"""``pnt_balance_validator``: the sender's points (an ERC-20) must reach a minimum balance.

    - name: pnt_balance_validator
      config:
        contract_address: "0x…"               # the PNT token (ERC-20)
        min_balance: "100000000000000000000"    # in the token's smallest unit (decimal string or integer)
        include_staked: true                    # also count what the sender staked and has locked
        staking_contract: "0x…"                 # needed for include_staked (see anode/chain/reads.py)
        cache_ttl: 60                           # seconds a sender's balance is reused; 0: always read
        symbol: PNT                             # for messages only
        decimals: 18                            # for messages only

The balance counted is ``balanceOf(sender)``, plus ``stakedBalanceOf`` and ``lockedBalanceOf``
from the staking contract when ``include_staked`` (the three reads run concurrently and are
cached together per (chain, sender)). Short of ``min_balance`` blocks with
``ANODE_002_INSUFFICIENT_PNT``, saying how much is held and how much more is needed.
``include_staked`` without a ``staking_contract`` is refused at start-up.

A chain that cannot be read raises ``ChainUnavailable`` (fail closed, 503 / -32603), never a
zero balance.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from anode.chain.cache import TTLCache
from anode.chain.client import ChainClient
from anode.chain.reads import erc20_balance_of, locked_balance_of, staked_balance_of
from anode.pipeline.base import Context, Outcome
from anode.pipeline.deps import Dependencies
from anode.pipeline.modules._config import Wei, parse_config
from anode.userop.codec import Address, checksum

NAME = "pnt_balance_validator"
INSUFFICIENT = "ANODE_002_INSUFFICIENT_PNT"


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    contract_address: Address
    min_balance: Wei
    include_staked: bool = False
    staking_contract: Address | None = None
    cache_ttl: float = Field(60, ge=0)
    symbol: str = Field("PNT", min_length=1)
    decimals: int = Field(18, ge=0, le=77)

    @model_validator(mode="after")
    def _stake_needs_its_contract(self) -> Config:
        if self.include_staked and self.staking_contract is None:
            raise ValueError(
                "include_staked needs staking_contract (the contract holding the stakes): "
                "set it, or set include_staked: false"
            )
        return self


@dataclass(frozen=True, slots=True)
class PntBalance:
    available: int
    staked: int = 0
    locked: int = 0

    @property
    def total(self) -> int:
        return self.available + self.staked + self.locked

    def to_json(self) -> dict[str, str]:
        return {
            "available": str(self.available),
            "staked": str(self.staked),
            "locked": str(self.locked),
            "total": str(self.total),
        }


def format_units(amount: int, decimals: int) -> str:
    """``60500000000000000000`` at 18 decimals → ``"60.5"``: exact, no float."""
    whole, fraction = divmod(amount, 10**decimals)
    digits = str(fraction).rjust(decimals, "0").rstrip("0") if decimals else ""
    return f"{whole}.{digits}" if digits else str(whole)


class PntCheck:
    name: str = NAME
    stage: Literal["check", "policy"] = "check"

    def __init__(self, config: Config, cache: TTLCache) -> None:
        self.config = config
        self._cache = cache
        self._staking = config.staking_contract if config.include_staked else None
        staking = self._staking.hex() if self._staking is not None else "-"
        self._key_suffix = f"{config.contract_address.hex()}:{staking}"

    async def balance(self, chain: ChainClient, chain_id: int, holder: bytes) -> PntBalance:
        key = f"pnt:{chain_id}:{holder.hex()}:{self._key_suffix}"
        cached = await self._cache.get_or_load(key, self.config.cache_ttl, lambda: self._read(chain, holder))
        available, staked, locked = (int(amount) for amount in cached)
        return PntBalance(available, staked, locked)

    async def _read(self, chain: ChainClient, holder: bytes) -> list[str]:
        token = erc20_balance_of(chain, self.config.contract_address, holder)
        if self._staking is None:
            return [str(await token), "0", "0"]
        amounts = await asyncio.gather(
            token, staked_balance_of(chain, self._staking, holder), locked_balance_of(chain, self._staking, holder)
        )
        return [str(amount) for amount in amounts]

    def shortfall(self, balance: PntBalance) -> int:
        return max(0, self.config.min_balance - balance.total)

    def refusal(self, holder: bytes, balance: PntBalance) -> tuple[str, dict[str, Any]]:
        """The message and data of a block: how much is held, how much more is needed."""
        units, symbol = self.config.decimals, self.config.symbol
        shortfall = self.shortfall(balance)
        held = f"{format_units(balance.total, units)} {symbol}"
        if self._staking is not None:
            held += (
                f" ({format_units(balance.available, units)} available, {format_units(balance.staked, units)} staked,"
                f" {format_units(balance.locked, units)} locked)"
            )
        message = (
            f"{checksum(holder)} holds {held} of token {checksum(self.config.contract_address)}; "
            f"{format_units(self.config.min_balance, units)} {symbol} are required: "
            f"get {format_units(shortfall, units)} {symbol} more, then retry"
        )
        data = {
            "balance": balance.to_json(),
            "requirements": {"minBalance": str(self.config.min_balance), "shortfall": str(shortfall)},
        }
        return message, data

    async def run(self, ctx: Context) -> Outcome:
        balance = await self.balance(ctx.route.chain, ctx.route.chain_id, ctx.op.sender)
        if balance.total >= self.config.min_balance:
            return Outcome.proceed()
        message, data = self.refusal(ctx.op.sender, balance)
        return Outcome.block(INSUFFICIENT, message, data)


def create(config: Config | dict[str, Any], deps: Dependencies) -> PntCheck:
    return PntCheck(parse_config(Config, config, NAME), deps.cache)
