"""Pimlico ``SingletonPaymaster`` V6 / V7 / V8, ERC-20 mode: the sender pays gas in a token.

Read from pimlicolabs/singleton-paymaster (``src/base/BaseSingletonPaymaster.sol``
``_parseErc20Config``, ``src/SingletonPaymasterV{6,7,8}.sol``) and proved against the build in
``@pimlico/mock-paymaster`` by ``tests/integration/test_singleton_erc20_onchain.py``.

Layout after the paymaster address (V7/V8: after the two 16-byte gas limits as well), every
integer big-endian, no padding::

    mode << 1 | allowAllBundlers   1 byte    ERC-20 mode = 1, so 0x03 with allowAllBundlers
    flags                          1 byte    bit 0 constantFee, bit 1 recipient, bit 2 preFund
    validUntil                     6 bytes
    validAfter                     6 bytes
    token                          20 bytes  must not be zero (TokenAddressInvalid)
    postOpGas                      16 bytes  gas charged for the postOp transfer
    exchangeRate                   32 bytes  token base units per 1e18 wei; not zero (ExchangeRateInvalid)
    paymasterValidationGasLimit    16 bytes  signed everywhere, read only by V7's penalty estimate
    treasury                       20 bytes  receives the tokens
    preFundInToken                 16 bytes  only with bit 2 (a uint128, though kept as uint256)
    constantFee                    16 bytes  only with bit 0 (the order is preFund, constantFee, recipient)
    recipient                      20 bytes  only with bit 1; must not be zero (RecipientInvalid)
    signature                      64 or 65 bytes

The fixed part after the mode byte is 117 bytes (``ERC20_PAYMASTER_DATA_LENGTH``). ``getHash(1,
userOp)`` is the same hash as verifying mode (``SingletonPaymaster.hash_with_prefix``) over
``paymasterAndData`` up to the signature: the mode byte, 118 bytes and the optional fields the
flags announce, so every term above is signed, the paymaster gas limits too (V7/V8), then the
chain id (and, on V8 builds that bind it, the EIP-7702 initCode override).

What the contract does with the terms:

- validation: the signature must come from one of ``signers``; a bad one is
  SIG_VALIDATION_FAILED (AA34), the window is returned to the EntryPoint (AA32 outside it).
  With a valid signature, ``preFundInToken`` must not exceed ``requiredPreFund * exchangeRate /
  1e18`` (PreFundTooHigh) and is moved sender → treasury right there, so it needs an allowance
  before the operation.
- postOp: ``cost = (actualGasCost + penalty + postOpGas * feePerGas) * exchangeRate / 1e18 +
  constantFee`` (:func:`token_cost`); the difference to ``preFundInToken`` moves sender →
  treasury (or treasury → sender when the prefund was larger: the treasury must have approved
  the paymaster). ``feePerGas`` is the EntryPoint's ``actualUserOpFeePerGas`` (V7/V8) or
  ``min(maxFeePerGas, maxPriorityFeePerGas + basefee)`` computed by the paymaster (V6; equal
  fees mean a legacy chain: ``maxFeePerGas``). ``penalty`` is zero on V6 and V8; V7 adds 10 % of
  the unused execution gas, estimated as in ``_expectedPenaltyGasCost``. With a recipient, the
  sender also pays ``requiredPreFund * exchangeRate / 1e18 - cost`` (when positive) to the recipient.
  ``UserOperationSponsored(userOpHash, sender, 1, token, cost, exchangeRate)`` reports it
  (in ERC-20 mode from postOp only).
- a failing transfer in postOp (allowance or balance gone, a treasury that has not approved a
  refund) reverts postOp: on V7/V8 the operation's calls are reverted, it is reported as failed
  and the paymaster's deposit pays the gas (a prefund taken in validation stays with the
  treasury); on V6 the EntryPoint reverts the whole bundle (AA50), so bundlers drop the
  operation in simulation. Balance and allowance must be checked before signing.

Observed on anvil with a minimal ERC-20 (``tests/contracts/PointsToken.sol``): postOp uses about
39k gas when the treasury's balance slot is new (about 14k for a refund), validation about 21k
gas without a prefund and 58k with one; real tokens (proxies, blocklists) cost more, so stub
gas limits and ``postOpGas`` need a margin per token. Stub data (a failing signature) is
estimated without the prefund's transfer, which only runs for a valid signature, while postOp
still refunds the prefund the data names: a stub naming a prefund fails estimation (AA50); a
stub with ``pre_fund_in_token=0`` (same length) estimates, and the paymaster's validation gas
then needs the transfer's gas added (V6: ``verificationGasLimit``; without it AA40, V7/V8 AA33).
The ``@pimlico/mock-paymaster`` build
supports every flag above, has no EIP-7702 binding in V8's hash and no penalty in V8's postOp.

How the request path uses it: the route's family is a :class:`SingletonPaymaster` (its V8 hash
variant already chosen by the start-up self-check), and ``SingletonErc20(route.family)`` shares
it. Pricing turns the configured token and markup into the signed ``exchangeRate`` and, with
the treasury, into :class:`Erc20Terms`; the operation is attached with ``placeholder(window,
terms)`` (the stub answer too, with paymaster gas limits that cover postOp), the pipeline judges
it, the signer signs the EIP-191 form of ``digest(...)``, and the answer carries
``encode(window, terms, signature)``. ``max_token_cost`` is the amount to check the sender's
balance and allowance (or an ``approve`` at the start of its calls) against, and to record.
"""

from __future__ import annotations

from dataclasses import dataclass

from anode.paymasters.base import ValidityWindow, abi_call, dummy_signature, user_op_abi
from anode.paymasters.singleton import SingletonPaymaster
from anode.userop.hashing import packed_paymaster_and_data
from anode.userop.models import UserOperation, UserOperationV06

ERC20_MODE = 1
_ALLOW_ALL_BUNDLERS = 1
_CONSTANT_FEE_PRESENT = 0x01
_RECIPIENT_PRESENT = 0x02
_PRE_FUND_PRESENT = 0x04
#: mode byte + flags ... treasury, without the optional fields and the signature
FIXED_CONFIG_LENGTH = 1 + 117
_UINT128 = 1 << 128
_UINT256 = 1 << 256
_ZERO_ADDRESS = b"\x00" * 20
_WEI_PER_ETHER = 10**18


@dataclass(frozen=True, slots=True)
class Erc20Terms:
    """What the paymaster signs besides the window; an optional field is absent when ``None``.

    ``pre_fund_in_token=0`` and ``constant_fee=0`` are encoded (and signed) as present fields,
    unlike ``None``: both are valid and charge the same, but they are different bytes.
    """

    token: bytes
    post_op_gas: int
    exchange_rate: int
    paymaster_validation_gas_limit: int
    treasury: bytes
    pre_fund_in_token: int | None = None
    constant_fee: int | None = None
    recipient: bytes | None = None

    def __post_init__(self) -> None:
        _address("token", self.token, nonzero=True)
        _address("treasury", self.treasury, nonzero=False)
        if self.recipient is not None:
            _address("recipient", self.recipient, nonzero=True)
        _bounded("exchange_rate", self.exchange_rate, _UINT256, nonzero=True)
        for name in ("post_op_gas", "paymaster_validation_gas_limit", "pre_fund_in_token", "constant_fee"):
            value = getattr(self, name)
            if value is not None:
                _bounded(name, value, _UINT128, nonzero=False)

    @property
    def flags(self) -> int:
        return (
            (_PRE_FUND_PRESENT if self.pre_fund_in_token is not None else 0)
            | (_RECIPIENT_PRESENT if self.recipient is not None else 0)
            | (_CONSTANT_FEE_PRESENT if self.constant_fee is not None else 0)
        )

    def config(self, window: ValidityWindow) -> bytes:
        """The signed part of the paymaster data: mode byte through the last optional field."""
        data = (
            bytes([ERC20_MODE << 1 | _ALLOW_ALL_BUNDLERS, self.flags])
            + window.valid_until.to_bytes(6, "big")
            + window.valid_after.to_bytes(6, "big")
            + self.token
            + self.post_op_gas.to_bytes(16, "big")
            + self.exchange_rate.to_bytes(32, "big")
            + self.paymaster_validation_gas_limit.to_bytes(16, "big")
            + self.treasury
        )
        if self.pre_fund_in_token is not None:
            data += self.pre_fund_in_token.to_bytes(16, "big")
        if self.constant_fee is not None:
            data += self.constant_fee.to_bytes(16, "big")
        if self.recipient is not None:
            data += self.recipient
        return data


def _address(name: str, value: bytes, *, nonzero: bool) -> None:
    if len(value) != 20:
        raise ValueError(f"{name} must be a 20-byte address, got {len(value)} bytes")
    if nonzero and value == _ZERO_ADDRESS:
        raise ValueError(f"{name} must not be the zero address (the paymaster reverts on it)")


def _bounded(name: str, value: int, limit: int, *, nonzero: bool) -> None:
    if not 0 <= value < limit or (nonzero and value == 0):
        low = 1 if nonzero else 0
        raise ValueError(f"{name} must be in [{low}, 2**{limit.bit_length() - 1}), got {value}")


def token_cost(terms: Erc20Terms, gas_cost_wei: int, fee_per_gas: int) -> int:
    """What ``postOp`` charges in token base units, ``UserOperationSponsored.tokenAmountPaid``.

    ``gas_cost_wei`` is the ``actualGasCost`` the EntryPoint passes to ``postOp`` plus, on V7,
    the contract's penalty estimate; ``fee_per_gas`` the gas price it charges at.
    """
    gas = gas_cost_wei + terms.post_op_gas * fee_per_gas
    return gas * terms.exchange_rate // _WEI_PER_ETHER + (terms.constant_fee or 0)


def max_token_cost(terms: Erc20Terms, op: UserOperation) -> int:
    """The most ``postOp`` can charge for ``op`` (paymaster attached): ``token_cost`` at the
    operation's maximum gas cost and ``maxFeePerGas``.

    ``actualGasCost`` never exceeds the EntryPoint's prefund, the fee never exceeds
    ``maxFeePerGas``, and V7's penalty estimate only counts gas inside the limits the prefund
    already covers (10 % of the execution limits, ``callGasLimit`` + ``paymasterPostOpGasLimit``).
    """
    return token_cost(terms, op.max_gas_cost(), op.max_fee_per_gas)


class SingletonErc20:
    """ERC-20 mode of one deployed :class:`SingletonPaymaster` (same address, version, hash variant)."""

    def __init__(self, paymaster: SingletonPaymaster) -> None:
        self.paymaster = paymaster

    def encode(self, window: ValidityWindow, terms: Erc20Terms, signature: bytes) -> bytes:
        """``paymasterData`` (V7/V8) or what follows the address (V6)."""
        return terms.config(window) + signature

    def placeholder(self, window: ValidityWindow, terms: Erc20Terms) -> bytes:
        """Data of the final length for stubs and for hashing before the signature exists."""
        return self.encode(window, terms, dummy_signature())

    def digest(self, op: UserOperation, window: ValidityWindow, terms: Erc20Terms, chain_id: int) -> bytes:
        """``getHash(1, op)`` for ``op`` carrying ``encode(window, terms, …)`` of this paymaster.

        ``op`` must have this paymaster attached (V7/V8: its gas limits are signed); the signed
        bytes come from ``window`` and ``terms``, not from ``op``'s current data.
        """
        config = terms.config(window)
        if isinstance(op, UserOperationV06):
            if op.paymaster_and_data[:20] != self.paymaster.address:
                raise ValueError("attach this paymaster to the operation before hashing it")
            return self.paymaster.hash_with_prefix(op, self.paymaster.address + config, chain_id)
        if op.paymaster != self.paymaster.address:
            raise ValueError("attach this paymaster to the operation before hashing it")
        return self.paymaster.hash_with_prefix(op, packed_paymaster_and_data(op, config), chain_id)

    def get_hash_call(self, op: UserOperation) -> bytes:
        """Calldata for the contract's own ``getHash(1, op)`` (self-checks and tests; not a hot path)."""
        kind, value = user_op_abi(op)
        return abi_call(f"getHash(uint8,{kind})", ["uint8", kind], [ERC20_MODE, value])
