"""An account's ``callData`` → the calls it will make: target, value, selector, data.

Layouts understood (selectors checked against the account sources in ``node_modules``):

    SimpleAccount   execute(address,uint256,bytes)                  0xb61d27f6   v0.6, v0.7, v0.8
    SimpleAccount   executeBatch(address[],bytes[])                 0x18dfb3c7   v0.6
    SimpleAccount   executeBatch(address[],uint256[],bytes[])       0x47e1da2a   v0.7 (values may be [])
    BaseAccount     executeBatch((address,uint256,bytes)[])         0x34fcd5be   v0.8 (and Coinbase Smart Wallet)
    ERC-7579        execute(bytes32 mode,bytes executionCalldata)   0xe9ae5c53   single, batch, delegatecall

The reader is hand-written, not a generic ABI decoder: it follows offsets exactly as Solidity's
calldata decoder does (so it finds the calls the account will make even in a non-canonical
encoding), bounds every offset and length by the data it has, and never raises. Whatever it
does not recognise, or cannot read as the account would, becomes one *opaque* call to the sender
itself, which the scorer counts as a risk. Empty callData (deploy only) makes no call.

Inner calls are inspected for grants of spending rights (:func:`grant_of`): ``approve`` and
``increaseAllowance`` (ERC-20), ``setApprovalForAll`` (ERC-721/1155) and EIP-2612 ``permit``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Literal

from anode.userop.codec import checksum as _checksum

EXECUTE = bytes.fromhex("b61d27f6")
EXECUTE_BATCH_V06 = bytes.fromhex("18dfb3c7")
EXECUTE_BATCH_V07 = bytes.fromhex("47e1da2a")
EXECUTE_BATCH_CALLS = bytes.fromhex("34fcd5be")
EXECUTE_7579 = bytes.fromhex("e9ae5c53")

APPROVE = bytes.fromhex("095ea7b3")  # approve(address,uint256)
INCREASE_ALLOWANCE = bytes.fromhex("39509351")  # increaseAllowance(address,uint256)
SET_APPROVAL_FOR_ALL = bytes.fromhex("a22cb465")  # setApprovalForAll(address,bool)
PERMIT = bytes.fromhex("d505accf")  # permit(address,address,uint256,uint256,uint8,bytes32,bytes32)

#: an allowance this large is "unlimited" in practice (wallets send 2**256-1; some 2**255 and up)
UNLIMITED = 1 << 255

_ERC7579_SINGLE, _ERC7579_BATCH, _ERC7579_DELEGATE = 0x00, 0x01, 0xFF
_ERC7579_EXEC_TYPES = (0x00, 0x01)  # revert on failure, try


class Layout(StrEnum):
    EMPTY = "empty"
    EXECUTE = "execute"
    EXECUTE_BATCH_V06 = "executeBatch(address[],bytes[])"
    EXECUTE_BATCH_V07 = "executeBatch(address[],uint256[],bytes[])"
    EXECUTE_BATCH_CALLS = "executeBatch((address,uint256,bytes)[])"
    ERC7579_SINGLE = "erc7579.single"
    ERC7579_BATCH = "erc7579.batch"
    ERC7579_DELEGATECALL = "erc7579.delegatecall"
    OPAQUE = "opaque"


@dataclass(frozen=True, slots=True)
class Call:
    """One call the account makes.

    ``kind``: ``delegatecall`` for ERC-7579 delegate mode; ``opaque`` for the stand-in of callData
    that could not be decoded (target: the account itself, data: the whole callData).
    """

    target: str
    value: int
    selector: str | None
    data: bytes
    kind: Literal["call", "delegatecall", "opaque"] = "call"


@dataclass(frozen=True, slots=True)
class Decoded:
    layout: Layout
    calls: tuple[Call, ...]

    @property
    def opaque(self) -> bool:
        return self.layout is Layout.OPAQUE


@dataclass(frozen=True, slots=True)
class Grant:
    """A spending right an inner call hands out: who may spend how much of ``token``."""

    kind: Literal["approve", "increaseAllowance", "setApprovalForAll", "permit"]
    token: str
    spender: str
    #: the allowance (``None`` for setApprovalForAll, which grants every token id)
    amount: int | None

    @property
    def unlimited(self) -> bool:
        return self.amount is None or self.amount >= UNLIMITED


@lru_cache(maxsize=65_536)
def checksum(address: bytes) -> str:
    """EIP-55 form, memoised: hot targets and senders recur, and the checksum costs a keccak."""
    return _checksum(address)


class _Malformed(Exception):
    """Not what the layout promises; never leaves this module."""


def _word(data: bytes, at: int) -> int:
    if at < 0 or at + 32 > len(data):
        raise _Malformed
    return int.from_bytes(data[at : at + 32], "big")


def _address(data: bytes, at: int) -> bytes:
    value = _word(data, at)
    if value >> 160:  # Solidity reverts on dirty address bits
        raise _Malformed
    return value.to_bytes(20, "big")


def _tail(data: bytes, base: int, head: int) -> int:
    """Where a dynamic value starts: ``base`` plus the offset stored at ``head``."""
    start = base + _word(data, head)
    if start + 32 > len(data):
        raise _Malformed
    return start


def _bytes(data: bytes, start: int) -> bytes:
    length = _word(data, start)
    end = start + 32 + length
    if end > len(data):
        raise _Malformed
    return data[start + 32 : end]


def _array(data: bytes, start: int) -> tuple[int, int]:
    """``(length, first element head)`` of an array whose length word is at ``start``."""
    length = _word(data, start)
    if start + 32 + 32 * length > len(data):  # the heads alone must fit: no huge loops
        raise _Malformed
    return length, start + 32


def selector_of(data: bytes) -> str | None:
    """The function selector ``data`` starts with (``0x`` + 4 bytes), ``None`` when shorter than 4 bytes."""
    return "0x" + data[:4].hex() if len(data) >= 4 else None


def _call(target: bytes, value: int, data: bytes, kind: Literal["call", "delegatecall"] = "call") -> Call:
    return Call(checksum(target), value, selector_of(data), data, kind)


def _execute(args: bytes) -> list[Call]:
    return [_call(_address(args, 0), _word(args, 32), _bytes(args, _tail(args, 0, 64)))]


def _addresses(args: bytes, head: int) -> list[bytes]:
    length, first = _array(args, _tail(args, 0, head))
    return [_address(args, first + 32 * i) for i in range(length)]


def _uints(args: bytes, head: int) -> list[int]:
    length, first = _array(args, _tail(args, 0, head))
    return [_word(args, first + 32 * i) for i in range(length)]


def _bytes_array(args: bytes, head: int) -> list[bytes]:
    length, first = _array(args, _tail(args, 0, head))
    return [_bytes(args, _tail(args, first, first + 32 * i)) for i in range(length)]


def _batch_v06(args: bytes) -> list[Call]:
    targets, datas = _addresses(args, 0), _bytes_array(args, 32)
    if len(targets) != len(datas):
        raise _Malformed  # "wrong array lengths"
    return [_call(t, 0, d) for t, d in zip(targets, datas, strict=True)]


def _batch_v07(args: bytes) -> list[Call]:
    targets, values, datas = _addresses(args, 0), _uints(args, 32), _bytes_array(args, 64)
    if len(targets) != len(datas) or (values and len(values) != len(datas)):
        raise _Malformed  # "wrong array lengths"
    values = values or [0] * len(targets)
    return [_call(t, v, d) for t, v, d in zip(targets, values, datas, strict=True)]


def _call_tuples(data: bytes, array_start: int) -> list[Call]:
    """``(address,uint256,bytes)[]`` whose length word is at ``array_start``."""
    length, first = _array(data, array_start)
    calls = []
    for i in range(length):
        item = _tail(data, first, first + 32 * i)
        calls.append(_call(_address(data, item), _word(data, item + 32), _bytes(data, _tail(data, item, item + 64))))
    return calls


def _erc7579(args: bytes) -> tuple[Layout, list[Call]]:
    mode = _word(args, 0).to_bytes(32, "big")
    call_type, exec_type, selector = mode[0], mode[1], mode[6:10]
    if exec_type not in _ERC7579_EXEC_TYPES or selector != b"\x00\x00\x00\x00":
        raise _Malformed  # other modes (ERC-7821 opData, static calls) read differently
    execution = _bytes(args, _tail(args, 0, 32))
    if call_type == _ERC7579_SINGLE:
        if len(execution) < 52:
            raise _Malformed
        value = int.from_bytes(execution[20:52], "big")
        return Layout.ERC7579_SINGLE, [_call(execution[:20], value, execution[52:])]
    if call_type == _ERC7579_BATCH:
        return Layout.ERC7579_BATCH, _call_tuples(execution, _tail(execution, 0, 0))
    if call_type == _ERC7579_DELEGATE:
        if len(execution) < 20:
            raise _Malformed
        return Layout.ERC7579_DELEGATECALL, [_call(execution[:20], 0, execution[20:], "delegatecall")]
    raise _Malformed


def decode_call_data(sender: bytes, call_data: bytes) -> Decoded:
    """The calls ``call_data`` makes the account ``sender`` perform; never raises."""
    if not call_data:
        return Decoded(Layout.EMPTY, ())
    selector, args = call_data[:4], call_data[4:]
    try:
        if selector == EXECUTE:
            return Decoded(Layout.EXECUTE, tuple(_execute(args)))
        if selector == EXECUTE_BATCH_V06:
            return Decoded(Layout.EXECUTE_BATCH_V06, tuple(_batch_v06(args)))
        if selector == EXECUTE_BATCH_V07:
            return Decoded(Layout.EXECUTE_BATCH_V07, tuple(_batch_v07(args)))
        if selector == EXECUTE_BATCH_CALLS:
            return Decoded(Layout.EXECUTE_BATCH_CALLS, tuple(_call_tuples(args, _tail(args, 0, 0))))
        if selector == EXECUTE_7579:
            layout, calls = _erc7579(args)
            return Decoded(layout, tuple(calls))
    except _Malformed:
        pass
    return Decoded(Layout.OPAQUE, (Call(checksum(sender), 0, selector_of(call_data), call_data, "opaque"),))


def grant_of(call: Call) -> Grant | None:
    """The spending right ``call`` grants, if it is an approval-like call that decodes cleanly."""
    data = call.data
    selector, args = data[:4], data[4:]
    try:
        if selector in (APPROVE, INCREASE_ALLOWANCE):
            kind: Literal["approve", "increaseAllowance"] = "approve" if selector == APPROVE else "increaseAllowance"
            return Grant(kind, call.target, checksum(_address(args, 0)), _word(args, 32))
        if selector == SET_APPROVAL_FOR_ALL:
            approved = _word(args, 32)
            return Grant("setApprovalForAll", call.target, checksum(_address(args, 0)), None) if approved else None
        if selector == PERMIT:
            return Grant("permit", call.target, checksum(_address(args, 32)), _word(args, 64))
    except _Malformed:
        return None
    return None
