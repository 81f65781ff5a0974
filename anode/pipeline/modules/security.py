"""``security_filter``: decode what the operation does, score its risk, block or ask the user to confirm.

    - name: security_filter
      config:
        block_threshold: 80             # score at or above: refused (ANODE_020_SECURITY_BLOCKED)
        confirm_threshold: 40           # score at or above: the user must confirm (ANODE_021_CONFIRMATION_REQUIRED)
        blacklist_contracts: ["0x…"]    # a call to (or an approval for) one of these scores 100
        blacklist_refresh_seconds: 2    # how old the copy of the API's blacklist may get (0: read each time)
        verified_contracts: ["0x…"]     # vouched for: no unverified/age/no-code factors, trusted spenders
        recent_deployment_blocks: 7200  # younger contracts count as "recent"
        large_value_wei: "1000000000000000000"
        confirmation_ttl: 600           # seconds a confirmation token lasts
        max_pending_confirmations: 1000 # unused tokens per API key; more drop that key's oldest
        cache_ttl: 300                  # seconds "has code" answers are reused
        weights: {unverified_contract: 10}   # override any factor's weight (docs/security.md)

The calls are decoded once per request (``ctx.decoded()``), and the policy engine reads that
same result.

Blacklist: an address is blacklisted when it is in ``blacklist_contracts`` or in the table admins
manage through ``/api/v1/security/blacklist`` (``anode/store/blacklist.py``; an entry for one chain
or for all). The table is read through a snapshot at most ``blacklist_refresh_seconds`` old,
reloaded in the background, so a request does no query; an entry added through this server counts
at its next request, one added through another server within that interval. A table that cannot be
read refuses the operation (``ANODE_STORE_UNAVAILABLE``): it might hold the target.

Confirmation: a score in the warning band answers a warning carrying a fresh ``confirmationToken``
— for stubs as well as final calls, so a wallet learns at ``pm_getPaymasterStubData`` time that
the user must confirm, and gets the token it needs to go on. The same operation sent again with
``context.confirmationToken`` proceeds: stubs only check the token, final calls redeem it (once;
undone if the operation is not signed after all). A token that is unknown, used, expired, or was
issued for another operation or API key is refused with ``ANODE_022_CONFIRMATION_INVALID``.
A token never overrides a block, and is ignored (not spent) when no confirmation is needed.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from anode.chain.cache import TTLCache
from anode.errors import InvalidRequest
from anode.pipeline.base import Context, Outcome
from anode.pipeline.deps import Dependencies
from anode.pipeline.modules._config import Wei
from anode.pipeline.security.decode import Decoded, checksum, decode_call_data
from anode.pipeline.security.deployment import ContractInspector, HistorySupport, NodeReader
from anode.pipeline.security.score import Assessment, Factor, Rules, assess, targets_to_inspect
from anode.store.blacklist import SqlBlacklist
from anode.store.confirmations import (
    DEFAULT_MAX_PENDING_PER_KEY,
    ConfirmationStore,
    Redemption,
    SqlConfirmationStore,
)
from anode.userop.codec import parse_address, to_hex
from anode.userop.hashing import keccak, word
from anode.userop.models import UserOperation

NAME = "security_filter"
BLOCKED = "ANODE_020_SECURITY_BLOCKED"
CONFIRMATION_REQUIRED = "ANODE_021_CONFIRMATION_REQUIRED"
CONFIRMATION_INVALID = "ANODE_022_CONFIRMATION_INVALID"
TOKEN_FIELD = "confirmationToken"
#: distinct call targets read from the chain per operation; a longer batch counts as opaque beyond it
MAX_INSPECTED_TARGETS = 32
_DIGEST_TAG = b"anode.confirmation.v1"


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    block_threshold: int = Field(80, ge=1, le=100)
    confirm_threshold: int = Field(40, ge=1, le=100)
    blacklist_contracts: list[str] = Field(default_factory=list)
    blacklist_refresh_seconds: float = Field(2.0, ge=0, le=300)
    verified_contracts: list[str] = Field(default_factory=list)
    recent_deployment_blocks: int = Field(7_200, ge=0)
    large_value_wei: Wei = 10**18
    confirmation_ttl: int = Field(600, ge=10, le=86_400)
    max_pending_confirmations: int = Field(DEFAULT_MAX_PENDING_PER_KEY, ge=1, le=1_000_000)
    cache_ttl: float = Field(300, ge=0)
    weights: dict[Factor, int] = Field(default_factory=dict)

    @field_validator("blacklist_contracts", "verified_contracts")
    @classmethod
    def _addresses(cls, values: list[str]) -> list[str]:
        for value in values:
            parse_address(value)
        return values

    @field_validator("weights")
    @classmethod
    def _weights(cls, values: dict[Factor, int]) -> dict[Factor, int]:
        for factor, weight in values.items():
            if not 0 <= weight <= 100:
                raise ValueError(f"weights.{factor.value} must be from 0 to 100")
        return values

    @model_validator(mode="after")
    def _thresholds(self) -> Config:
        if self.confirm_threshold > self.block_threshold:
            raise ValueError("confirm_threshold must not be above block_threshold")
        return self

    def rules(self) -> Rules:
        return Rules(
            block_threshold=self.block_threshold,
            confirm_threshold=self.confirm_threshold,
            blacklist=frozenset(address.lower() for address in self.blacklist_contracts),
            verified=frozenset(address.lower() for address in self.verified_contracts),
            recent_deployment_blocks=self.recent_deployment_blocks,
            large_value_wei=self.large_value_wei,
            weights=dict(self.weights),
        )


def confirmation_digest(op: UserOperation, chain_id: int, entry_point: bytes) -> str:
    """What a confirmation is bound to: the action, not its price.

    ``keccak(tag ‖ chainId ‖ entryPoint ‖ sender ‖ nonce ‖ keccak(initCode) ‖ keccak(callData))``.
    Gas limits and fees (they change between stub and final data) and paymaster fields (aNode's
    own) are left out; the signature is not there yet.
    """
    return to_hex(
        keccak(
            _DIGEST_TAG
            + word(chain_id)
            + entry_point
            + op.sender
            + word(op.nonce)
            + keccak(op.init_code)
            + keccak(op.call_data)
        )
    )


class Assessor:
    """Decode, read the targets from the chain (cached), score: the module's and ``/security/assess``'s core."""

    def __init__(self, config: Config, cache: TTLCache, blacklist: SqlBlacklist | None = None) -> None:
        self.config = config
        self.rules = config.rules()
        self.blacklist = blacklist
        self._cache = cache
        #: per chain: does its node keep the history contract ages need (``GET /health`` shows it)
        self.history = HistorySupport()
        #: per chain: the stored set last merged (compared by identity: one object per snapshot) and the result
        self._merged: dict[int, tuple[frozenset[str], Rules]] = {}

    async def rules_for(self, chain_id: int) -> Rules:
        """The settings' rules, with the stored blacklist of ``chain_id`` added to the configured one."""
        if self.blacklist is None:
            return self.rules
        stored = (await self.blacklist.snapshot()).for_chain(chain_id)
        if not stored:
            return self.rules
        merged = self._merged.get(chain_id)
        if merged is None or merged[0] is not stored:  # a new snapshot: merge once per chain
            merged = self._merged[chain_id] = (stored, replace(self.rules, blacklist=self.rules.blacklist | stored))
        return merged[1]

    async def assess(
        self, node: NodeReader, chain_id: int, sender: bytes, call_data: bytes, decoded: Decoded | None = None
    ) -> Assessment:
        """``decoded``: ``call_data`` already decoded (the pipeline's ``ctx.decoded()``)."""
        rules = await self.rules_for(chain_id)
        decoded = decoded if decoded is not None else decode_call_data(sender, call_data)
        account = checksum(sender)
        targets = targets_to_inspect(decoded, account, rules)
        inspector = ContractInspector(
            node,
            chain_id,
            self._cache,
            recent_blocks=self.config.recent_deployment_blocks,
            code_ttl=self.config.cache_ttl,
            history=self.history,
        )
        inspected = targets[:MAX_INSPECTED_TARGETS]
        if len(inspected) == 1:  # the usual case: no tasks to schedule
            facts = [await inspector.inspect(inspected[0])]
        else:
            facts = await asyncio.gather(*(inspector.inspect(t) for t in inspected))
        skipped = max(0, len(targets) - MAX_INSPECTED_TARGETS)
        return assess(decoded, account, facts, rules, uninspected=skipped)


def assessment_json(assessment: Assessment) -> dict[str, Any]:
    """The design's assessment shape (``POST /api/v1/security/assess``, warnings, blocks)."""
    primary = assessment.calls[0].target if assessment.calls else None
    facts = {fact.address: fact for fact in assessment.targets}
    target: dict[str, Any] | None = None
    if primary is not None:
        fact = facts.get(primary)
        target = {"address": primary, "hasCode": fact.has_code if fact else None}
        if fact is not None and fact.deployment_block is not None:
            target |= {"deploymentBlock": fact.deployment_block, "deploymentAgeBlocks": fact.age_blocks}
    return {
        "riskLevel": assessment.level,
        "riskScore": assessment.score,
        "decision": assessment.decision,
        "targetContract": target,
        "riskFactors": [factor.to_json() for factor in assessment.factors],
        "recommendations": assessment.recommendations,
        "calls": [
            {"target": c.target, "value": str(c.value), "selector": c.selector, "kind": c.kind}
            for c in assessment.calls
        ],
        "layout": assessment.decoded.layout.value,
    }


_INVALID = {
    Redemption.UNKNOWN: (
        "is not a token this server issued (mistyped, pruned after it expired, or dropped for newer tokens "
        "of the same API key)"
    ),
    Redemption.OTHER_KEY: "was issued to another API key",
    Redemption.OTHER_OPERATION: (
        "confirms a different operation (its sender, nonce, callData, initCode, chain or EntryPoint differ)"
    ),
    Redemption.REUSED: "was already used: a confirmation covers one signature",
    Redemption.EXPIRED: "has expired",
}


class SecurityFilter:
    name: str = NAME
    stage: Literal["check", "policy"] = "check"

    def __init__(
        self,
        config: Config,
        cache: TTLCache,
        confirmations: ConfirmationStore,
        blacklist: SqlBlacklist | None = None,
    ) -> None:
        self.config = config
        self.assessor = Assessor(config, cache, blacklist)
        self.confirmations = confirmations
        #: the blacklist managed through the API (``None``: the settings file's only)
        self.blacklist = blacklist

    async def run(self, ctx: Context) -> Outcome:
        op = ctx.op
        assessment = await self.assessor.assess(ctx.route.chain, ctx.chain_id, op.sender, op.call_data, ctx.decoded())
        score = assessment.score
        if assessment.decision == "allow":
            return Outcome.proceed({"riskScore": score, "riskLevel": assessment.level})
        summary = assessment_json(assessment)
        if assessment.decision == "block":
            return Outcome.block(
                BLOCKED,
                f"the security filter refuses this operation (risk {score}/100, blocked at "
                f"{self.config.block_threshold}): {assessment.message}",
                {"securityAssessment": summary},
            )
        token = _token(ctx.request.context)
        digest = confirmation_digest(ctx.op, ctx.chain_id, ctx.route.entry_point)
        if token is not None:
            if ctx.final:
                status = await self.confirmations.redeem(token, digest, ctx.api_key_id)
            else:
                status = await self.confirmations.check(token, digest, ctx.api_key_id)
            if status is not Redemption.OK:
                return Outcome.block(
                    CONFIRMATION_INVALID,
                    f"context.{TOKEN_FIELD} {_INVALID[status]}; send the operation without it to get a new one",
                    {"reason": status.value},
                )
            if ctx.final:
                store = self.confirmations

                async def release() -> None:
                    await store.release(token)

                ctx.compensations.append(release)
            ctx.confirmed = True
            return Outcome.proceed({"riskScore": score, "riskLevel": assessment.level, "confirmed": True})
        issued = await self.confirmations.issue(
            digest,
            ctx.api_key_id,
            {"chainId": ctx.chain_id, "sender": ctx.sender, "riskScore": score, "riskFactors": summary["riskFactors"]},
            ttl=self.config.confirmation_ttl,
        )
        message = (
            f"this operation needs the user's confirmation (risk {score}/100, confirmation asked from "
            f"{self.config.confirm_threshold}): "
            f"{assessment.message}"
        )
        return Outcome.warning(
            CONFIRMATION_REQUIRED,
            f"{message}; to go ahead, send the same operation again with context.{TOKEN_FIELD}",
            {
                "requiresConfirmation": True,
                TOKEN_FIELD: issued.token,
                "confirmationExpiresAt": int(issued.expires_at),
                "securityWarning": {
                    "level": "warning",
                    "riskLevel": assessment.level,
                    "riskScore": score,
                    "riskFactors": summary["riskFactors"],
                    "message": message,
                    "recommendations": assessment.recommendations,
                },
            },
        )


def _token(context: Any) -> str | None:
    if not isinstance(context, dict) or context.get(TOKEN_FIELD) is None:
        return None
    token = context[TOKEN_FIELD]
    if not isinstance(token, str) or not token:
        raise InvalidRequest(
            f"context.{TOKEN_FIELD} must be the token string a warning gave", field=f"context.{TOKEN_FIELD}"
        )
    return token


def create(config: Config, deps: Dependencies) -> SecurityFilter:
    return SecurityFilter(
        config,
        deps.cache,
        SqlConfirmationStore(deps.engine, clock=deps.clock, max_pending_per_key=config.max_pending_confirmations),
        SqlBlacklist(deps.engine, refresh_seconds=config.blacklist_refresh_seconds),
    )
