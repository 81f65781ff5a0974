"""The sponsorship service: the whole path from a parsed request to paymaster data that is
signed and recorded.

    resolve route → parse userOp → window → pipeline (checks, policies)
        → [stub: dummy signature]
        → [final: getHash → sign → record → answer the operation that was signed]

Only this module decides what a signature covers; ``api/`` turns its results into wire shapes,
``pipeline/`` decides whether to sponsor, the paymaster family knows byte layouts, the signer
holds the key, ``store/`` records.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from anode.chain.fees import suggest_fees
from anode.config import SponsorshipSettings
from anode.errors import (
    BundlerUnavailable,
    ConfirmationRequired,
    Erc20NotConfigured,
    InvalidRequest,
    SponsorshipRefused,
)
from anode.metrics import Metrics
from anode.paymasters.base import ValidityWindow, dummy_signature
from anode.pipeline.base import Context
from anode.pipeline.modules.policy_engine import RESERVATIONS
from anode.pipeline.routes import Route, RouteTable
from anode.pipeline.runner import Pipeline, PipelineReport
from anode.signers.base import SignedDigest, Signer, sign_eip191
from anode.signers.manager import ManagedSigner
from anode.sponsorship_erc20 import ERC20, VERIFYING, TokenMode, TokenPayment
from anode.store.ledger import Ledger, SponsorshipRecord
from anode.store.reconcile import Reservation
from anode.userop.codec import checksum, to_hex
from anode.userop.hashing import user_op_hash
from anode.userop.models import UserOperation, UserOperationV06, UserOperationV07, parse_user_op
from anode.watch.deposits import DepositMonitor

log = logging.getLogger("anode.sponsor")

#: the fields a bundler estimates: an operation carrying them all is signed as it is
_ESTIMATED_FIELDS = ("callGasLimit", "verificationGasLimit", "preVerificationGas")


@dataclass(frozen=True, slots=True)
class SponsorRequest:
    user_op: Any
    entry_point: Any
    chain_id: Any | None
    context: Any | None
    method: str
    api_key_id: str | None = None
    #: the HTTP request's id (``X-Request-Id``), recorded in the audit log with the signature
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Sponsored:
    """Paymaster fields for an operation, stub or signed."""

    route: Route
    op: UserOperation
    window: ValidityWindow
    user_op_hash: bytes | None
    report: PipelineReport | None = None
    #: ERC-20 mode: the token terms signed (``None``: verifying mode, the sponsor pays)
    payment: TokenPayment | None = None

    @property
    def max_token_cost(self) -> int | None:
        """ERC-20 mode: the most the operation can be charged, in token base units."""
        return None if self.payment is None else self.payment.max_cost(self.op)

    @property
    def paymaster_data(self) -> bytes:
        op = self.op
        return op.paymaster_and_data[20:] if isinstance(op, UserOperationV06) else op.paymaster_data


class SponsorshipService:
    def __init__(
        self,
        routes: RouteTable,
        signer: Signer,
        ledger: Ledger,
        settings: SponsorshipSettings,
        pipeline: Pipeline | None = None,
        clock: Callable[[], float] = time.time,
        *,
        signing: bool = True,
        metrics: Metrics | None = None,
        deposits: DepositMonitor | None = None,
        tokens: TokenMode | None = None,
    ) -> None:
        #: ERC-20 mode (``context.token``) for the paymasters with an ``erc20:`` section
        self.tokens = tokens
        self.metrics = metrics if metrics is not None else Metrics()
        #: refuses an operation the paymaster's deposit cannot pay for (``watch/deposits.py``)
        self.deposits = deposits
        self.pipeline = pipeline or Pipeline([])
        self.signing = signing
        self.routes = routes
        self.signer = signer
        self.ledger = ledger
        self.settings = settings
        self._clock = clock

    def _window(self, context: Any | None) -> ValidityWindow:
        seconds = self.settings.valid_for_seconds
        if isinstance(context, dict) and context.get("validForSeconds") is not None:
            asked = context["validForSeconds"]
            if isinstance(asked, bool) or not isinstance(asked, int) or not 1 <= asked <= seconds:
                raise InvalidRequest(
                    f"context.validForSeconds must be a whole number from 1 to {seconds}",
                    field="context.validForSeconds",
                )
            seconds = asked
        now = int(self._clock())
        return ValidityWindow(
            valid_until=now + seconds, valid_after=max(0, now - self.settings.valid_after_slack_seconds)
        )

    def _prepare(self, request: SponsorRequest) -> tuple[Route, UserOperation, ValidityWindow]:
        if request.context is not None and not isinstance(request.context, dict):
            raise InvalidRequest("context must be a JSON object or null", field="context")
        chain_id = request.chain_id
        if chain_id is None and isinstance(request.context, dict):
            chain_id = request.context.get("chainId")
        route = self.routes.resolve(request.entry_point, chain_id)
        op = parse_user_op(request.user_op, route.version)
        op.check_gas_bounds()
        route.paymaster.check(op)
        return route, op, self._window(request.context)

    async def _payment(
        self, route: Route, request: SponsorRequest, window: ValidityWindow
    ) -> tuple[TokenPayment | None, ValidityWindow]:
        """ERC-20 mode when ``context.token`` asks for it: the quoted terms, and a window no longer
        than a quote is valid (the rate is the market's for that long)."""
        context = request.context
        if not isinstance(context, dict) or context.get("token") is None:
            return None, window
        if self.tokens is None:
            raise Erc20NotConfigured(
                "no paymaster on this server has ERC-20 mode (erc20: in its configuration); drop context.token"
            )
        payment = await self.tokens.payment(route, context)
        if payment is None:
            return None, window
        seconds = self.tokens.settings(route).quote_valid_seconds
        return payment, replace(window, valid_until=min(window.valid_until, int(self._clock()) + seconds))

    async def _evaluate(
        self,
        route: Route,
        op: UserOperation,
        window: ValidityWindow,
        request: SponsorRequest,
        *,
        final: bool,
        payment: TokenPayment | None = None,
    ) -> tuple[Context, PipelineReport]:
        """Run the pipeline; a block or an unconfirmed warning becomes the matching error."""
        family = route.paymaster
        if payment is None:
            shaped = family.attach(op, family.encode(window, dummy_signature()))
        else:
            shaped = payment.shape(op, window)
        ctx = Context(route, shaped, request, request.api_key_id, final, shaped.max_gas_cost())
        if payment is not None:
            ctx.mode, ctx.token = ERC20, payment.token
        try:
            report = await self.pipeline.run(ctx)
        except BaseException:
            await _undo(ctx)
            raise
        blocked = report.blocked
        if blocked is not None or (report.warnings and not ctx.confirmed):
            await _undo(ctx)  # e.g. give a redeemed confirmation token back: nothing will be signed
        if blocked is not None:
            outcome = blocked.outcome
            raise SponsorshipRefused(outcome.message, code=outcome.code, data=_with_report(outcome.data, report))
        if report.warnings and not ctx.confirmed:
            outcome = report.warnings[0].outcome
            raise ConfirmationRequired(outcome.message, code=outcome.code, data=_with_report(outcome.data, report))
        return ctx, report

    async def stub(self, request: SponsorRequest) -> Sponsored:
        """Stub paymaster data: final length, a dummy signature, the same checks as the real call."""
        with self.metrics.sponsorship(request.method):
            route, op, window = self._prepare(request)
            payment, window = await self._payment(route, request, window)
            ctx, report = await self._evaluate(route, op, window, request, final=False, payment=payment)
            # ctx.op: op with this paymaster's fields and a dummy signature, as the stub answers it
            return Sponsored(route=route, op=ctx.op, window=window, user_op_hash=None, report=report, payment=payment)

    async def sign(self, request: SponsorRequest) -> Sponsored:
        """Signed paymaster data, recorded in the ledger before it is returned."""
        with self.metrics.sponsorship(request.method):
            route, op, window = self._prepare(request)
            op.require_gas_fields(request.user_op)
            payment, window = await self._payment(route, request, window)
            return await self._decide_and_sign(route, op, window, request, payment)

    async def sign_or_estimate(self, request: SponsorRequest) -> Sponsored:
        """REST and ``/process``: sign an operation that carries its gas fields as it is; estimate
        one without them through the chain's bundler first (or, with no bundler, refuse by name)."""
        user_op = request.user_op  # a null gas limit is one left out (anode/userop/models.py)
        estimated = isinstance(user_op, dict) and all(user_op.get(name) is not None for name in _ESTIMATED_FIELDS)
        route = self.routes.resolve(request.entry_point, request.chain_id)
        if estimated or route.bundler is None:
            return await self.sign(request)
        return await self.estimate_and_sign(request)

    async def decide(self, request: SponsorRequest) -> PipelineReport:
        """The pipeline's decision alone (nothing reserved, nothing signed): ``paymaster_signer`` disabled."""
        with self.metrics.sponsorship(request.method):
            route, op, window = self._prepare(request)
            payment, window = await self._payment(route, request, window)
            _, report = await self._evaluate(route, op, window, request, final=False, payment=payment)
            return report

    async def _decide_and_sign(
        self,
        route: Route,
        op: UserOperation,
        window: ValidityWindow,
        request: SponsorRequest,
        payment: TokenPayment | None = None,
    ) -> Sponsored:
        op.check_gas_bounds()  # a bundler's estimate is input too
        if not self.signing:
            raise SponsorshipRefused(
                "signing is disabled on this server (pipeline paymaster_signer: enabled: false); "
                "POST /api/v1/paymaster/process answers the decision only",
                code="ANODE_030_SIGNING_DISABLED",
            )
        ctx, report = await self._evaluate(route, op, window, request, final=True, payment=payment)
        try:
            if payment is not None:  # the sender can pay the most the op can cost, or nothing is signed
                await payment.check_funds(ctx.op)
            if self.deposits is not None:  # from memory: the monitor's last read, less what was signed since
                self.deposits.guard(route.chain_id, route.entry_point, ctx.max_gas_cost)
            sponsored = await self._sign(
                route, ctx.op, window, request, ctx.facts.get(RESERVATIONS, ()), payment=payment
            )
        except BaseException:
            await _undo(ctx)
            raise
        return replace(sponsored, report=report)

    async def estimate_and_sign(self, request: SponsorRequest) -> Sponsored:
        """``pm_sponsorUserOperation``: estimate gas through the bundler with stub data, then sign."""
        with self.metrics.sponsorship(request.method):
            return await self._estimate_and_sign(request)

    async def _estimate_and_sign(self, request: SponsorRequest) -> Sponsored:
        route, op, window = self._prepare(request)
        if route.bundler is None:
            raise BundlerUnavailable(
                f"no bundler_url is configured for chain {route.chain_id}: pm_sponsorUserOperation "
                "estimates gas through a bundler; use pm_getPaymasterStubData/pm_getPaymasterData instead"
            )
        op.require_fee_fields(request.user_op)  # the estimate gives gas limits only; never sign a fee of 0 by default
        payment, window = await self._payment(route, request, window)
        # the pipeline decides before the bundler is asked (as for a stub: nothing reserved), so
        # a refused operation costs no bundler call and is refused with its module's code, the
        # same answer pm_getPaymasterData gives; the final run after the estimate reserves
        ctx, _ = await self._evaluate(route, op, window, request, final=False, payment=payment)
        estimated = await _bundler_estimate(route, op, ctx.op)
        return await self._decide_and_sign(route, estimated, window, request, payment)

    async def estimate(self, request: SponsorRequest) -> Sponsored:
        """REST ``/estimate``: the operation's gas limits (through the chain's bundler, or its own)
        and fees (its own, or suggested from the node's fee history), judged by the pipeline as a
        stub is, in the mode it asks for; nothing is reserved or signed."""
        with self.metrics.sponsorship(request.method):
            route, _, _ = self._prepare(request)
            raw = request.user_op
            if isinstance(raw, dict) and (raw.get("maxFeePerGas") is None or raw.get("maxPriorityFeePerGas") is None):
                fees = await suggest_fees(route.chain)
                raw = {
                    **raw,
                    "maxFeePerGas": raw.get("maxFeePerGas") or hex(fees.max_fee_per_gas),
                    "maxPriorityFeePerGas": raw.get("maxPriorityFeePerGas") or hex(fees.max_priority_fee_per_gas),
                }
                request = replace(request, user_op=raw)
            route, op, window = self._prepare(request)
            payment, window = await self._payment(route, request, window)
            if route.bundler is not None:
                ctx, _ = await self._evaluate(route, op, window, request, final=False, payment=payment)
                op = await _bundler_estimate(route, op, ctx.op)
            else:
                op.require_gas_fields(request.user_op)
            op.check_gas_bounds()
            ctx, report = await self._evaluate(route, op, window, request, final=False, payment=payment)
            return Sponsored(route=route, op=ctx.op, window=window, user_op_hash=None, report=report, payment=payment)

    async def _sign(
        self,
        route: Route,
        shaped: UserOperation,
        window: ValidityWindow,
        request: SponsorRequest,
        reservations: tuple[Reservation, ...] = (),
        *,
        payment: TokenPayment | None = None,
    ) -> Sponsored:
        """Sign ``shaped`` (the operation as the pipeline judged it: this paymaster's fields and a
        dummy signature, ``Context.op``) and answer that very operation with the real signature
        in place of the dummy one: the digest covers every field but the signature, so what is
        answered and recorded is exactly what was signed."""
        family = route.paymaster
        sender_nonce = 0
        if family.needs_sender_nonce:
            sender_nonce = await route.chain.sender_nonce(family.address, shaped.sender)
        if payment is None:
            digest = family.digest(shaped, window, route.chain_id, sender_nonce)
        else:
            digest = payment.digest(shaped, window)
        signer = self.signer
        signed: SignedDigest
        if isinstance(signer, ManagedSigner):
            signed = await signer.sign_eip191_for(family.address, digest, chain_id=route.chain_id)
            backend = signed.backend
        else:
            signed = await sign_eip191(signer, digest)
            backend = signer.backend
        if payment is None:
            final = family.attach(shaped, family.encode(window, signed.signature))
        else:
            final = payment.with_data(shaped, window, signed.signature)
        op_hash = user_op_hash(final, route.version, route.entry_point, route.chain_id)
        await self.ledger.record(
            SponsorshipRecord(
                created_at=datetime.now(UTC),
                user_op_hash=to_hex(op_hash),
                chain_id=route.chain_id,
                entry_point=route.entry_point_hex,
                paymaster=checksum(family.address),
                sender=checksum(final.sender),
                nonce=final.nonce,
                max_gas_cost_wei=final.max_gas_cost(),
                valid_until=window.valid_until,
                valid_after=window.valid_after,
                signer=signed.signer,
                api_key_id=request.api_key_id,
                method=request.method,
                backend=backend,
                request_id=request.request_id,
                reservations=reservations,
                mode=VERIFYING if payment is None else ERC20,
                token=None if payment is None else payment.token,
                exchange_rate=None if payment is None else payment.terms.exchange_rate,
                max_token_amount=None if payment is None else payment.max_cost(final),
            )
        )
        return Sponsored(route=route, op=final, window=window, user_op_hash=op_hash, payment=payment)


def processing(report: PipelineReport) -> dict[str, Any]:
    """The design's ``processing`` member: each module's status and duration, and the total."""
    return {
        "modules": [
            {"name": m.name, "status": m.status.value, "duration": round(m.duration_ms, 3)} for m in report.modules
        ],
        "totalDuration": round(report.total_ms, 3),
    }


def _with_report(data: dict[str, Any] | None, report: PipelineReport) -> dict[str, Any]:
    return {**(data or {}), "processing": processing(report)}


async def _undo(ctx: Context) -> None:
    """Run the modules' compensations (release reservations, return tokens), newest first, once."""
    for undo in reversed(ctx.compensations):
        try:
            await undo()
        except Exception:
            log.exception("a compensation failed (it can only over-count); running the others")
    ctx.compensations.clear()


async def _bundler_estimate(route: Route, op: UserOperation, stubbed: UserOperation) -> UserOperation:
    """``op`` with the gas limits the chain's bundler estimates for ``stubbed`` (op with stub data)."""
    assert route.bundler is not None
    if not stubbed.signature:
        stubbed = stubbed.model_copy(update={"signature": dummy_signature()})
    estimate = await route.bundler.estimate_user_operation_gas(
        stubbed.model_dump(by_alias=True, exclude_none=True), route.entry_point_hex
    )
    update: dict[str, int] = {
        "call_gas_limit": estimate.get("callGasLimit", op.call_gas_limit),
        "verification_gas_limit": estimate.get("verificationGasLimit", op.verification_gas_limit),
        "pre_verification_gas": estimate.get("preVerificationGas", op.pre_verification_gas),
    }
    if isinstance(op, UserOperationV07):
        if "paymasterVerificationGasLimit" in estimate:
            update["paymaster_verification_gas_limit"] = estimate["paymasterVerificationGasLimit"]
        if "paymasterPostOpGasLimit" in estimate:
            update["paymaster_post_op_gas_limit"] = estimate["paymasterPostOpGasLimit"]
    return op.model_copy(update=update)
