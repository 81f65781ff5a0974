"""ERC-20 mode of the sponsorship path: the sender pays the sponsor in a token, at a quoted rate.

``context.token`` on a request for a SingletonPaymaster route with an ``erc20:`` section asks for
it. The sponsorship service (``sponsorship.py``) keeps its line and asks this module three things:

    payment(route, context, window)   quote the token → the signed terms (``Erc20Terms``)
    TokenPayment.shape(op, window)    the op with the ERC-20 stub data (a constantFee of 1, so that
                                      estimates at 1 wei see postOp's transfer) and gas limits covering
                                      postOp; ``with_data`` gives the final data, without the fee
    TokenPayment.check_funds(op)      before signing: balance, allowance (or a leading approve),
                                      the caller's maxTokenAmount

No prefund (``preFundInToken``) is signed: the whole charge is taken in ``postOp``. A prefund is
taken in validation, so it needs an allowance before the operation (wallets approve in the same
operation), a stub naming one fails estimation (AA50), and refunding it needs the treasury's
approval. Without it, what protects the sponsor is the check before signing: the sender holds the
maximum charge and the paymaster may take it (docs/erc20.md, "Not losing the sponsor's money").
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from anode.chain.cache import MemoryTTLCache, TTLCache
from anode.chain.client import ChainClient
from anode.config import Erc20Settings
from anode.errors import (
    ChainUnavailable,
    Erc20NotConfigured,
    InvalidRequest,
    MaxTokenAmountExceeded,
    TokenAllowanceLow,
    TokenBalanceLow,
)
from anode.paymasters.base import ValidityWindow, dummy_signature
from anode.paymasters.singleton import SingletonPaymaster
from anode.paymasters.singleton_erc20 import Erc20Terms, SingletonErc20, max_token_cost
from anode.pipeline.routes import Route
from anode.pipeline.security.decode import APPROVE, INCREASE_ALLOWANCE, Call, decode_call_data, grant_of
from anode.pricing.base import TokenQuote
from anode.userop.codec import checksum, parse_address, parse_quantity
from anode.userop.models import UserOperation, UserOperationV06

ERC20 = "erc20"
VERIFYING = "verifying"

_BALANCE_OF = bytes.fromhex("70a08231")  # balanceOf(address)
_ALLOWANCE = bytes.fromhex("dd62ed3e")  # allowance(address,address)


class Quotes(Protocol):
    """What this module needs of the price book (``anode.pricing.PriceBook``)."""

    def tokens(self, chain_id: int, paymaster: bytes) -> list[str]: ...

    async def quote(self, chain_id: int, paymaster: bytes, token: bytes) -> TokenQuote: ...


@functools.lru_cache(maxsize=4096)
def _terms(token: bytes, post_op_gas: int, exchange_rate: int, validation_gas: int, treasury: str) -> Erc20Terms:
    """The terms of a quote, built (and validated) once per rate, not per request."""
    return Erc20Terms(
        token=token,
        post_op_gas=post_op_gas,
        exchange_rate=exchange_rate,
        paymaster_validation_gas_limit=validation_gas,
        treasury=parse_address(treasury),
    )


@functools.lru_cache(maxsize=4096)
def _signing_limit(terms: Erc20Terms, limit: int) -> Erc20Terms:
    """``terms`` signing ``limit`` as paymasterValidationGasLimit. Terms are immutable and the same
    object while a quote stands, so each (terms, limit) is built (and validated) once, not on
    each of the request's four or five uses."""
    return replace(terms, paymaster_validation_gas_limit=limit)


@functools.lru_cache(maxsize=4096)
def _with_fee_floor(terms: Erc20Terms) -> Erc20Terms:
    return replace(terms, constant_fee=max(terms.constant_fee or 0, 1))


@dataclass(frozen=True, slots=True)
class TokenPayment:
    """One operation's ERC-20 terms: what will be signed, and against which quote."""

    route: Route
    mode: SingletonErc20
    terms: Erc20Terms
    quote: TokenQuote
    #: v0.7+: the least paymasterPostOpGasLimit (postOp moves the tokens)
    post_op_gas_limit: int
    #: the caller's ``maxTokenAmount`` (REST ``context.maxTokenAmount``), if any
    max_token_amount: int | None
    #: senders' balances and allowances, reused for ``funds_ttl`` seconds (the pipeline's chain-read cache)
    funds: TTLCache
    funds_ttl: float

    @property
    def token(self) -> str:
        return checksum(self.terms.token)

    def shape(self, op: UserOperation, window: ValidityWindow) -> UserOperation:
        """``op`` with this paymaster, gas limits that cover postOp and the stub data (a dummy
        signature, and a charge of at least one base unit: :meth:`stub_terms_of`): the operation
        the pipeline judges and the stub answers. :meth:`with_data` puts the final data in its place."""
        family = self.mode.paymaster
        if isinstance(op, UserOperationV06):  # v0.6 signs no paymaster gas limit: the terms are the quote's
            return family.attach(op, self.mode.encode(window, self.stub_terms_of(op), dummy_signature()))
        attached = family.attach(op, b"")
        assert not isinstance(attached, UserOperationV06)
        limit = max(attached.paymaster_post_op_gas_limit or 0, self.post_op_gas_limit)
        data = self.mode.encode(window, self.stub_terms_of(attached), dummy_signature())
        return attached.model_copy(update={"paymaster_post_op_gas_limit": limit, "paymaster_data": data})

    def terms_of(self, op: UserOperation) -> Erc20Terms:
        """The terms signed for ``op`` (shaped): v0.7+ sign its own paymaster validation gas limit."""
        if isinstance(op, UserOperationV06) or op.paymaster_verification_gas_limit is None:
            return self.terms
        return _signing_limit(self.terms, op.paymaster_verification_gas_limit)

    def stub_terms_of(self, op: UserOperation) -> Erc20Terms:
        """The terms the stub carries: the signed ones with a ``constantFee`` of at least 1.

        Bundlers estimate at a fee of 1 wei (Alto simulates with ``maxFeePerGas`` 1), where the
        charge of a token with few decimals rounds down to 0 base units; ``postOp`` then moves
        nothing (``transferFrom(treasury, sender, 0)``) and the estimate misses the gas of the real
        transfer (sender → treasury, some 39k gas for a new balance slot). A constant fee makes the
        charge at least one base unit at any fee, so the estimate measures the transfer the signed
        operation makes. The stub is 16 bytes longer than the final data: the bundler's
        preVerificationGas covers a little more calldata than is sent, never less.
        """
        return _with_fee_floor(self.terms_of(op))

    def with_data(self, op: UserOperation, window: ValidityWindow, signature: bytes) -> UserOperation:
        """``op`` (already shaped) carrying ``encode(window, terms, signature)``: the final data."""
        return self._attach_data(op, self.mode.encode(window, self.terms_of(op), signature))

    def _attach_data(self, op: UserOperation, data: bytes) -> UserOperation:
        if isinstance(op, UserOperationV06):
            return op.model_copy(update={"paymaster_and_data": self.mode.paymaster.address + data})
        return op.model_copy(update={"paymaster_data": data})

    def digest(self, op: UserOperation, window: ValidityWindow) -> bytes:
        return self.mode.digest(op, window, self.terms_of(op), self.route.chain_id)

    def max_cost(self, op: UserOperation) -> int:
        """The most ``postOp`` can charge ``op`` (shaped), in token base units."""
        return max_token_cost(self.terms_of(op), op)

    async def check_funds(self, op: UserOperation) -> int:
        """Refuse before signing unless the sender can pay the most ``op`` can cost; return that amount."""
        need = self.max_cost(op)
        token = self.terms.token
        paymaster = self.mode.paymaster.address
        amounts = {"token": self.token, "required": str(need)}
        if self.max_token_amount is not None and need > self.max_token_amount:
            raise MaxTokenAmountExceeded(
                f"this operation can cost up to {need} base units of {self.token}, above context.maxTokenAmount "
                f"{self.max_token_amount}: lower its gas limits or fees, or allow more",
                data={**amounts, "maxTokenAmount": str(self.max_token_amount)},
            )
        # an approve leading the op's calls sets the allowance postOp finds; else it is the one on chain
        calls = decode_call_data(op.sender, op.call_data).calls
        leading = _leading_approval(calls, token, paymaster)
        balance, allowance = await self._funds(op.sender, fresh=False)
        if balance < need or (leading is None and allowance < need):
            balance, allowance = await self._funds(op.sender, fresh=True)  # refuse on a fresh read only
        if balance < need:
            raise TokenBalanceLow(
                f"sender {checksum(op.sender)} holds {balance} base units of {self.token}, and this operation can "
                f"cost up to {need}: top the account up, or lower its gas limits or fees",
                data={**amounts, "balance": str(balance)},
            )
        effective = allowance if leading is None else leading
        if effective < need:
            raise TokenAllowanceLow(
                f"the paymaster {checksum(paymaster)} may take {effective} base units of {self.token} from "
                f"{checksum(op.sender)}, and this operation can cost up to {need}: start the operation's calls "
                f"with approve({checksum(paymaster)}, {need}) on the token (or approve it beforehand)",
                data={**amounts, "allowance": str(effective)},
            )
        if _revokes(calls, token, paymaster, need):
            raise TokenAllowanceLow(
                f"the operation's calls lower the paymaster's allowance of {self.token} below {need} before "
                "postOp charges it: leave the allowance in place until the operation is paid",
                data={**amounts, "allowance": str(effective)},
            )
        return need

    async def _funds(self, sender: bytes, *, fresh: bool) -> tuple[int, int]:
        """The sender's balance of the token and its allowance to the paymaster (one cache entry)."""
        chain, token, paymaster = self.route.chain, self.terms.token, self.mode.paymaster.address

        async def read() -> list[str]:
            balance, allowance = await asyncio.gather(
                _read_uint(chain, token, _BALANCE_OF + _word(sender)),
                _read_uint(chain, token, _ALLOWANCE + _word(sender) + _word(paymaster)),
            )
            return [str(balance), str(allowance)]  # decimal strings: JSON-safe in Redis too

        key = f"erc20-funds:{self.route.chain_id}:{token.hex()}:{paymaster.hex()}:{sender.hex()}"
        ttl = 0.0 if fresh else self.funds_ttl
        values = await self.funds.get_or_load(key, ttl, read)
        return int(values[0]), int(values[1])


class TokenMode:
    """ERC-20 mode for every route whose paymaster has an ``erc20:`` section."""

    def __init__(
        self, prices: Quotes, paymasters: Mapping[tuple[int, bytes], Erc20Settings], cache: TTLCache | None = None
    ) -> None:
        self.prices = prices
        self.paymasters = dict(paymasters)
        self.cache = cache if cache is not None else MemoryTTLCache()

    def settings(self, route: Route) -> Erc20Settings:
        found = self.paymasters.get((route.chain_id, route.paymaster.address))
        if found is None or not isinstance(route.paymaster, SingletonPaymaster):
            offered = [checksum(pm) for (chain, pm) in self.paymasters if chain == route.chain_id]
            raise Erc20NotConfigured(
                f"paymaster {checksum(route.paymaster.address)} (EntryPoint {route.entry_point_hex}, chain "
                f"{route.chain_id}) has no ERC-20 mode; drop context.token to be sponsored, or use an EntryPoint "
                f"whose paymaster has one ({', '.join(offered) or 'none on this chain'})",
                data={"paymasters": offered},
            )
        return found

    async def payment(self, route: Route, context: Any) -> TokenPayment | None:
        """The ERC-20 terms ``context.token`` asks for, or ``None`` for verifying mode."""
        if not isinstance(context, dict) or context.get("token") is None:
            return None
        token = _address(context["token"], "context.token")
        max_amount = context.get("maxTokenAmount")
        limit = None if max_amount is None else _quantity(max_amount, "context.maxTokenAmount")
        settings = self.settings(route)
        quote = await self.prices.quote(route.chain_id, route.paymaster.address, token)
        return self.terms_for(route, settings, quote, limit)

    def terms_for(
        self, route: Route, settings: Erc20Settings, quote: TokenQuote, max_token_amount: int | None = None
    ) -> TokenPayment:
        family = route.paymaster
        assert isinstance(family, SingletonPaymaster)
        terms = _terms(
            quote.token, settings.post_op_gas, quote.exchange_rate, family.gas.verification_gas_limit, settings.treasury
        )
        return TokenPayment(
            route, SingletonErc20(family), terms, quote, settings.post_op_gas_limit, max_token_amount,
            self.cache, settings.funds_cache_seconds,
        )  # fmt: skip

    async def treasury_allowances(self, routes: list[Route]) -> list[str]:
        """Problems with the treasuries' approvals (one line each), for start-up and ``/health``.

        The treasury pays refunds of a prefund back to the sender; aNode signs none, but a
        treasury that has not approved the paymaster makes any prefunded operation fail.
        """
        problems: list[str] = []
        for route in routes:
            settings = self.paymasters.get((route.chain_id, route.paymaster.address))
            if settings is None:
                continue
            treasury = parse_address(settings.treasury)
            for token in settings.tokens:
                address = parse_address(token.address)
                try:
                    allowance = await _read_uint(
                        route.chain, address, _ALLOWANCE + _word(treasury) + _word(route.paymaster.address)
                    )
                except ChainUnavailable as exc:
                    problems.append(f"treasury allowance of {checksum(address)} unreadable: {exc.message}")
                    continue
                if allowance == 0:
                    problems.append(
                        f"treasury {checksum(treasury)} has not approved paymaster {checksum(route.paymaster.address)} "
                        f"for token {checksum(address)} on chain {route.chain_id}"
                    )
        return problems


def _leading_approval(calls: Sequence[Call], token: bytes, paymaster: bytes) -> int | None:
    """The allowance an ``approve(paymaster, amount)`` on ``token`` as the op's first call sets, if it has one."""
    if not calls:
        return None
    first = calls[0]
    if first.kind != "call" or first.data[:4] != APPROVE or first.target != checksum(token):
        return None
    grant = grant_of(first)
    if grant is None or grant.spender != checksum(paymaster) or grant.amount is None:
        return None
    return grant.amount


def _revokes(calls: Sequence[Call], token: bytes, paymaster: bytes, need: int) -> bool:
    """Whether a later call of the op sets the paymaster's allowance of ``token`` below ``need``."""
    for call in calls[1:]:
        if call.target != checksum(token) or call.data[:4] not in (APPROVE, INCREASE_ALLOWANCE):
            continue
        grant = grant_of(call)
        if (
            grant is not None
            and grant.spender == checksum(paymaster)
            and grant.kind == "approve"
            and grant.amount is not None
            and grant.amount < need
        ):
            return True
    return False


async def _read_uint(chain: ChainClient, contract: bytes, data: bytes) -> int:
    raw = await chain.call(contract, data)
    if len(raw) < 32:
        raise ChainUnavailable(f"token {checksum(contract)} returned no value: is it an ERC-20 on this chain?")
    return int.from_bytes(raw[:32], "big")


def _word(address: bytes) -> bytes:
    return b"\x00" * 12 + address


def _address(value: Any, field: str) -> bytes:
    try:
        return parse_address(value)
    except ValueError as exc:
        raise InvalidRequest(f"{field}: {exc}", field=field) from None


def _quantity(value: Any, field: str) -> int:
    if isinstance(value, str) and value.isdecimal():
        value = int(value)
    try:
        return parse_quantity(value, bits=256)
    except ValueError as exc:
        raise InvalidRequest(f"{field}: {exc} (token base units, hex or decimal)", field=field) from None
