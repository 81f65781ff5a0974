"""Hex codecs shared by every wire model: quantities, byte strings and addresses.

The JSON-RPC world writes numbers as ``0x``-prefixed hex quantities and byte strings as
``0x``-prefixed even-length hex. These validators turn them into ``int`` and ``bytes`` once, at
the edge, with messages that say what is wrong; everything inside aNode works on native types.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

from anode.userop.keccak import keccak

UINT256_MAX = (1 << 256) - 1
UINT128_MAX = (1 << 128) - 1
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def parse_quantity(value: Any, *, bits: int = 256) -> int:
    """A hex quantity (``"0x1a"``) or a non-negative integer, at most ``bits`` wide."""
    if isinstance(value, bool):
        raise ValueError("expected a hex quantity such as '0x1a', got a boolean")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        if not value.startswith(("0x", "0X")) or len(value) < 3:
            raise ValueError(f"expected a hex quantity such as '0x1a', got {value[:80]!r}")
        if not _HEX_DIGITS.issuperset(value[2:]):  # int(_, 16) also takes "_", "+", "-" and spaces
            raise ValueError(f"not a hex quantity: {value[:80]!r}")
        number = int(value[2:], 16)
    else:
        raise ValueError(f"expected a hex quantity such as '0x1a', got {type(value).__name__}")
    if number < 0 or number >> bits:
        raise ValueError(f"quantity out of range for uint{bits}")
    return number


def parse_bytes(value: Any) -> bytes:
    """A ``0x``-prefixed even-length hex string (``"0x"`` is empty)."""
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str) or not value.startswith(("0x", "0X")):
        raise ValueError("expected 0x-prefixed hex bytes")
    body = value[2:]
    if len(body) % 2:
        raise ValueError("hex bytes must have an even number of digits")
    if not _HEX_DIGITS.issuperset(body):  # bytes.fromhex also skips spaces
        raise ValueError(f"not hex bytes: {value[:80]!r}")
    return bytes.fromhex(body)


def parse_address(value: Any) -> bytes:
    """A 20-byte address in hex (checksum not required)."""
    raw = parse_bytes(value)
    if len(raw) != 20:
        raise ValueError(f"expected a 20-byte address, got {len(raw)} bytes")
    return raw


def to_hex(value: bytes) -> str:
    return "0x" + value.hex()


def to_quantity(value: int) -> str:
    return hex(value)


@lru_cache(maxsize=4096)
def checksum(address: bytes) -> str:
    """EIP-55 mixed-case hex of a 20-byte address.

    Cached, because the same few addresses (EntryPoints, paymasters, the signer) come back on every
    request, and written out rather than ``eth_utils.to_checksum_address``, whose input checks
    cost more than the one keccak this needs.
    """
    lower = address.hex()
    nibbles = keccak(lower.encode()).hex()[: len(lower)]
    return "0x" + "".join(c.upper() if n >= "8" else c for c, n in zip(lower, nibbles, strict=True))


Quantity = Annotated[int, BeforeValidator(parse_quantity), PlainSerializer(to_quantity, return_type=str)]
Uint128 = Annotated[
    int,
    BeforeValidator(lambda v: parse_quantity(v, bits=128)),
    PlainSerializer(to_quantity, return_type=str),
]
HexBytes = Annotated[bytes, BeforeValidator(parse_bytes), PlainSerializer(to_hex, return_type=str)]
Address = Annotated[bytes, BeforeValidator(parse_address), PlainSerializer(checksum, return_type=str)]
