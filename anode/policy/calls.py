"""The calls an operation makes: what ``contract`` policies and ``function``/``target``/``value`` conditions see.

The security filter decodes callData thoroughly (SimpleAccount, ERC-7579) and leaves the calls in
``ctx.facts["calls"]``; when it is not in the pipeline, this module decodes the common minimum
itself: SimpleAccount ``execute`` and ``executeBatch`` (the v0.6, v0.7 and v0.8 forms). Anything
else is ``None``: the calls are unknown, so no contract policy applies and call conditions fail.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from eth_abi.abi import decode
from eth_abi.exceptions import DecodingError
from eth_hash.auto import keccak

from anode.userop.codec import parse_address

EXECUTE = bytes.fromhex("b61d27f6")  # execute(address,uint256,bytes)
EXECUTE_BATCH_V06 = bytes.fromhex("18dfb3c7")  # executeBatch(address[],bytes[])
EXECUTE_BATCH_V07 = bytes.fromhex("47e1da2a")  # executeBatch(address[],uint256[],bytes[])
EXECUTE_BATCH_V08 = bytes.fromhex("34fcd5be")  # executeBatch((address,uint256,bytes)[])
#: the selector of a call that carries no data (a plain transfer)
NO_FUNCTION = "0x"


@dataclass(frozen=True, slots=True)
class Call:
    target: str  # checksum address
    value: int
    selector: str  # "0xa9059cbb", or "0x" for no data


@lru_cache(maxsize=65_536)
def checksum_of(address: bytes) -> str:
    """EIP-55 checksum of a 20-byte address; cached, since the same senders and contracts recur."""
    lower = address.hex()
    digest = keccak(lower.encode()).hex()
    return "0x" + "".join(c.upper() if c > "9" and digest[i] >= "8" else c for i, c in enumerate(lower))


def _call(target: str | bytes, value: int, data: bytes) -> Call:
    selector = "0x" + data[:4].hex() if len(data) >= 4 else NO_FUNCTION
    return Call(checksum_of(target if isinstance(target, bytes) else bytes.fromhex(target[2:])), value, selector)


def _word(body: bytes, offset: int) -> int:
    return int.from_bytes(body[offset : offset + 32], "big")


def _execute(body: bytes) -> Call | None:
    """``execute(address,uint256,bytes)`` by its fixed layout (the common case: no generic ABI decoder)."""
    if len(body) < 128 or any(body[:12]):
        return None
    offset = _word(body, 64)
    if offset % 32 or offset + 32 > len(body):
        return None
    length = _word(body, offset)
    if offset + 32 + length > len(body):
        return None
    return _call(body[12:32], _word(body, 32), body[offset + 32 : offset + 32 + length])


def decode_calls(call_data: bytes) -> tuple[Call, ...] | None:
    """The calls of a SimpleAccount ``execute``/``executeBatch``; ``None`` for anything else."""
    selector, body = call_data[:4], call_data[4:]
    try:
        if selector == EXECUTE:
            call = _execute(body)
            return None if call is None else (call,)
        if selector == EXECUTE_BATCH_V06:
            targets, datas = decode(["address[]", "bytes[]"], body)
            if datas and len(datas) != len(targets):
                return None
            return tuple(_call(t, 0, d) for t, d in zip(targets, datas or [b""] * len(targets), strict=True))
        if selector == EXECUTE_BATCH_V07:
            targets, values, datas = decode(["address[]", "uint256[]", "bytes[]"], body)
            values = values or [0] * len(targets)
            if len(values) != len(targets) or len(datas) != len(targets):
                return None
            return tuple(_call(t, v, d) for t, v, d in zip(targets, values, datas, strict=True))
        if selector == EXECUTE_BATCH_V08:
            (calls,) = decode(["(address,uint256,bytes)[]"], body)
            return tuple(_call(t, v, d) for t, v, d in calls)
    except (DecodingError, ValueError, OverflowError):
        return None
    return None


def normalise_calls(found: Iterable[Any]) -> tuple[Call, ...] | None:
    """Calls another module decoded (objects with ``target``, ``value``, ``selector``) in this module's form.

    The security filter stands an undecodable callData in as one ``kind="opaque"`` call: unknown calls.
    """
    calls = []
    for item in found:
        if getattr(item, "kind", "call") == "opaque":
            return None
        selector = (getattr(item, "selector", None) or NO_FUNCTION).lower()
        try:
            target = parse_address(item.target)
        except ValueError:
            return None
        calls.append(Call(checksum_of(target), int(item.value), selector))
    return tuple(calls)
