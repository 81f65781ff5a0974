"""``sbt_validator``: the sender must hold a soul-bound token (ERC-721) of every required type.

    - name: sbt_validator
      config:
        contracts: [{address: "0x…", type: identity}, {address: "0x…", type: reputation}]
        required_types: [identity]
        cache_ttl: 300            # seconds a holder's balances are reused; 0 reads the chain every time

A type is held when ``balanceOf(sender) > 0`` on any configured contract of that type. The
balances of every configured contract are read together (concurrently) and cached as one entry
per (chain, sender), so a hot sender costs no RPC call. A missing type blocks with
``ANODE_001_SBT_NOT_FOUND``, naming the types and the contracts that issue them.

The configured addresses are read on whichever chain the operation is for. A chain that cannot
be read raises ``ChainUnavailable`` (fail closed: nothing is signed, the caller sees a 503 /
-32603 and may retry); it is never taken for "holds no SBT".
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from anode.chain.cache import TTLCache
from anode.chain.client import ChainClient
from anode.chain.reads import erc721_balance_of
from anode.pipeline.base import Context, Outcome
from anode.pipeline.deps import Dependencies
from anode.pipeline.modules._config import parse_config
from anode.userop.codec import Address, checksum

NAME = "sbt_validator"
NOT_FOUND = "ANODE_001_SBT_NOT_FOUND"


class SbtContract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    address: Address
    type: str = Field(min_length=1)


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    contracts: list[SbtContract] = Field(min_length=1)
    required_types: list[str] = Field(min_length=1)
    cache_ttl: float = Field(300, ge=0)

    @field_validator("required_types")
    @classmethod
    def _every_required_type_has_a_contract(cls, required: list[str], info: ValidationInfo) -> list[str]:
        contracts: list[SbtContract] | None = info.data.get("contracts")
        if contracts is None:  # contracts itself is invalid: that error is reported
            return required
        configured = {contract.type for contract in contracts}
        unserved = [kind for kind in required if kind not in configured]
        if unserved:
            raise ValueError(f"no contract of type {', '.join(unserved)} is listed under contracts")
        return required


@dataclass(frozen=True, slots=True)
class SbtStatus:
    """What one holder holds of the configured contracts, against the required types."""

    holder: bytes
    #: ``(contract, balance)`` for every configured contract, in configuration order
    balances: tuple[tuple[SbtContract, int], ...]
    required_types: tuple[str, ...]

    @property
    def held_types(self) -> set[str]:
        return {contract.type for contract, balance in self.balances if balance > 0}

    @property
    def missing_types(self) -> list[str]:
        held = self.held_types
        return [kind for kind in self.required_types if kind not in held]

    @property
    def tokens(self) -> list[dict[str, str]]:
        """The held tokens, as the REST answer lists them."""
        return [
            {"contract": checksum(contract.address), "type": contract.type, "balance": str(balance)}
            for contract, balance in self.balances
            if balance > 0
        ]


class SbtCheck:
    name: str = NAME
    stage: Literal["check", "policy"] = "check"

    def __init__(self, config: Config, cache: TTLCache) -> None:
        self.config = config
        self._cache = cache
        self._required = tuple(dict.fromkeys(config.required_types))
        self._issuers = {
            kind: [checksum(c.address) for c in config.contracts if c.type == kind] for kind in self._required
        }
        # one cache entry per holder and set of contracts: two configurations never share an entry
        contracts = ",".join(c.address.hex() for c in config.contracts)
        self._key_suffix = hashlib.sha256(contracts.encode()).hexdigest()[:16]

    async def status(self, chain: ChainClient, chain_id: int, holder: bytes) -> SbtStatus:
        key = f"sbt:{chain_id}:{holder.hex()}:{self._key_suffix}"
        cached = await self._cache.get_or_load(key, self.config.cache_ttl, lambda: self._read(chain, holder))
        balances = tuple(zip(self.config.contracts, (int(b) for b in cached), strict=True))
        return SbtStatus(holder, balances, self._required)

    async def _read(self, chain: ChainClient, holder: bytes) -> list[str]:
        reads = [erc721_balance_of(chain, contract.address, holder) for contract in self.config.contracts]
        balances = [await reads[0]] if len(reads) == 1 else await asyncio.gather(*reads)
        return [str(balance) for balance in balances]

    def refusal(self, status: SbtStatus) -> tuple[str, dict[str, Any]]:
        """The message and data of a block: which types are missing and where to get them."""
        missing = status.missing_types
        where = "; ".join(f"{kind} from {' or '.join(self._issuers[kind])}" for kind in missing)
        message = (
            f"{checksum(status.holder)} holds no soul-bound token of the required type"
            f"{'s' if len(missing) > 1 else ''} {', '.join(missing)}: "
            f"get {'one' if len(missing) == 1 else 'one of each'} ({where}), then retry"
        )
        data = {
            "missingTypes": missing,
            "requiredTypes": list(self._required),
            "contracts": {kind: self._issuers[kind] for kind in missing},
        }
        return message, data

    async def run(self, ctx: Context) -> Outcome:
        status = await self.status(ctx.route.chain, ctx.route.chain_id, ctx.op.sender)
        if not status.missing_types:
            return Outcome.proceed()
        message, data = self.refusal(status)
        return Outcome.block(NOT_FOUND, message, data)


def create(config: Config | dict[str, Any], deps: Dependencies) -> SbtCheck:
    return SbtCheck(parse_config(Config, config, NAME), deps.cache)
