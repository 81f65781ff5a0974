"""The callData decoder against eth_abi: every layout round-trips, nothing ever raises.

Calls are encoded with ``eth_abi`` (what the wallets' ``abi.encode`` produces) in each account
layout and must decode to exactly what went in; arbitrary and corrupted bytes must decode to an
opaque call (or no call), never an exception.
"""

from __future__ import annotations

from typing import Any

from eth_abi import encode
from eth_utils.abi import function_signature_to_4byte_selector
from eth_utils.address import to_checksum_address
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anode.pipeline.security.decode import (
    APPROVE,
    EXECUTE,
    EXECUTE_7579,
    EXECUTE_BATCH_CALLS,
    EXECUTE_BATCH_V06,
    EXECUTE_BATCH_V07,
    INCREASE_ALLOWANCE,
    PERMIT,
    SET_APPROVAL_FOR_ALL,
    Call,
    Layout,
    decode_call_data,
    grant_of,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SENDER = bytes.fromhex("a1" * 20)
UINT256 = 2**256 - 1

addresses = st.binary(min_size=20, max_size=20)
values = st.integers(0, UINT256)
datas = st.binary(max_size=120)
calls = st.lists(st.tuples(addresses, values, datas), max_size=6)


def expected(target: bytes, value: int, data: bytes, kind: str = "call") -> Call:
    selector = "0x" + data[:4].hex() if len(data) >= 4 else None
    return Call(to_checksum_address(target), value, selector, data, kind)  # type: ignore[arg-type]


def mode(call_type: int, exec_type: int = 0, selector: bytes = b"\x00" * 4) -> bytes:
    return bytes([call_type, exec_type]) + b"\x00" * 4 + selector + b"\x00" * 22


def erc7579(mode_word: bytes, execution: bytes) -> bytes:
    return EXECUTE_7579 + encode(["bytes32", "bytes"], [mode_word, execution])


def batch_tuples(items: list[tuple[bytes, int, bytes]]) -> bytes:
    return encode(["(address,uint256,bytes)[]"], [[(to_checksum_address(t), v, d) for t, v, d in items]])


# -- round trips ------------------------------------------------------------------------------


def test_selectors_are_those_of_the_account_sources() -> None:
    for selector, signature in (
        (EXECUTE, "execute(address,uint256,bytes)"),
        (EXECUTE_BATCH_V06, "executeBatch(address[],bytes[])"),
        (EXECUTE_BATCH_V07, "executeBatch(address[],uint256[],bytes[])"),
        (EXECUTE_BATCH_CALLS, "executeBatch((address,uint256,bytes)[])"),
        (EXECUTE_7579, "execute(bytes32,bytes)"),
        (APPROVE, "approve(address,uint256)"),
        (INCREASE_ALLOWANCE, "increaseAllowance(address,uint256)"),
        (SET_APPROVAL_FOR_ALL, "setApprovalForAll(address,bool)"),
        (PERMIT, "permit(address,address,uint256,uint256,uint8,bytes32,bytes32)"),
    ):
        assert selector == function_signature_to_4byte_selector(signature), signature


@FAST
@given(addresses, values, datas)
def test_execute(target: bytes, value: int, data: bytes) -> None:
    call_data = EXECUTE + encode(["address", "uint256", "bytes"], [to_checksum_address(target), value, data])
    decoded = decode_call_data(SENDER, call_data)
    assert decoded.layout is Layout.EXECUTE
    assert decoded.calls == (expected(target, value, data),)


@FAST
@given(st.lists(st.tuples(addresses, datas), max_size=6))
def test_execute_batch_v06(items: list[tuple[bytes, bytes]]) -> None:
    targets = [to_checksum_address(t) for t, _ in items]
    call_data = EXECUTE_BATCH_V06 + encode(["address[]", "bytes[]"], [targets, [d for _, d in items]])
    decoded = decode_call_data(SENDER, call_data)
    assert decoded.layout is Layout.EXECUTE_BATCH_V06
    assert decoded.calls == tuple(expected(t, 0, d) for t, d in items)


@FAST
@given(calls, st.booleans())
def test_execute_batch_v07(items: list[tuple[bytes, int, bytes]], omit_values: bool) -> None:
    targets = [to_checksum_address(t) for t, _, _ in items]
    amounts = [] if omit_values else [v for _, v, _ in items]
    call_data = EXECUTE_BATCH_V07 + encode(
        ["address[]", "uint256[]", "bytes[]"], [targets, amounts, [d for *_, d in items]]
    )
    decoded = decode_call_data(SENDER, call_data)
    assert decoded.layout is Layout.EXECUTE_BATCH_V07
    assert decoded.calls == tuple(expected(t, 0 if omit_values else v, d) for t, v, d in items)


@FAST
@given(calls)
def test_execute_batch_of_call_structs(items: list[tuple[bytes, int, bytes]]) -> None:
    decoded = decode_call_data(SENDER, EXECUTE_BATCH_CALLS + batch_tuples(items))
    assert decoded.layout is Layout.EXECUTE_BATCH_CALLS
    assert decoded.calls == tuple(expected(t, v, d) for t, v, d in items)


@FAST
@given(addresses, values, datas, st.sampled_from([0, 1]))
def test_erc7579_single(target: bytes, value: int, data: bytes, exec_type: int) -> None:
    execution = target + value.to_bytes(32, "big") + data
    decoded = decode_call_data(SENDER, erc7579(mode(0x00, exec_type), execution))
    assert decoded.layout is Layout.ERC7579_SINGLE
    assert decoded.calls == (expected(target, value, data),)


@FAST
@given(calls, st.sampled_from([0, 1]))
def test_erc7579_batch(items: list[tuple[bytes, int, bytes]], exec_type: int) -> None:
    decoded = decode_call_data(SENDER, erc7579(mode(0x01, exec_type), batch_tuples(items)))
    assert decoded.layout is Layout.ERC7579_BATCH
    assert decoded.calls == tuple(expected(t, v, d) for t, v, d in items)


@FAST
@given(addresses, datas)
def test_erc7579_delegatecall(target: bytes, data: bytes) -> None:
    decoded = decode_call_data(SENDER, erc7579(mode(0xFF), target + data))
    assert decoded.layout is Layout.ERC7579_DELEGATECALL
    assert decoded.calls == (expected(target, 0, data, "delegatecall"),)


# -- nothing raises ---------------------------------------------------------------------------

known_selectors = st.sampled_from([EXECUTE, EXECUTE_BATCH_V06, EXECUTE_BATCH_V07, EXECUTE_BATCH_CALLS, EXECUTE_7579])


def _check_never_raises(call_data: bytes) -> None:
    decoded = decode_call_data(SENDER, call_data)
    if decoded.opaque:
        (call,) = decoded.calls
        assert call.target == to_checksum_address(SENDER) and call.data == call_data and call.kind == "opaque"
    for call in decoded.calls:
        grant_of(call)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise(call_data: bytes) -> None:
    _check_never_raises(call_data)


@settings(max_examples=400, deadline=None)
@given(known_selectors, st.lists(st.integers(0, UINT256) | st.sampled_from([0, 0x20, 0x40, 0x60, 2**64]), max_size=12))
def test_known_selectors_with_arbitrary_words_never_raise(selector: bytes, words: list[int]) -> None:
    _check_never_raises(selector + b"".join(w.to_bytes(32, "big") for w in words))


@settings(max_examples=300, deadline=None)
@given(calls, st.data())
def test_corrupted_encodings_never_raise(items: list[tuple[bytes, int, bytes]], data: st.DataObject) -> None:
    valid = EXECUTE_BATCH_CALLS + batch_tuples(items)
    cut = data.draw(st.integers(0, len(valid)))
    flip = data.draw(st.integers(0, max(0, len(valid) - 1)))
    corrupted = bytearray(valid[:cut] + valid[cut:])
    if corrupted:
        corrupted[flip % len(corrupted)] ^= data.draw(st.integers(1, 255))
    _check_never_raises(bytes(corrupted[: data.draw(st.integers(0, len(corrupted)))]))


@settings(max_examples=50, deadline=None)
@given(st.integers(2**32, UINT256))
def test_a_huge_array_length_is_opaque_not_a_long_loop(length: int) -> None:
    call_data = EXECUTE_BATCH_CALLS + (32).to_bytes(32, "big") + length.to_bytes(32, "big")
    assert decode_call_data(SENDER, call_data).opaque


# -- what is opaque, what is not --------------------------------------------------------------


def test_empty_call_data_makes_no_call() -> None:
    decoded = decode_call_data(SENDER, b"")
    assert decoded.layout is Layout.EMPTY and decoded.calls == () and not decoded.opaque


def test_unknown_selector_is_one_opaque_call_to_the_sender() -> None:
    call_data = bytes.fromhex("8dd7712f") + b"\x01" * 64  # executeUserOp: the account reads the userOp itself
    decoded = decode_call_data(SENDER, call_data)
    assert decoded.opaque
    assert decoded.calls == (Call(to_checksum_address(SENDER), 0, "0x8dd7712f", call_data, "opaque"),)
    assert decode_call_data(SENDER, b"\x01\x02").calls[0].selector is None


def test_layouts_the_account_would_refuse_are_opaque() -> None:
    target = to_checksum_address("0x" + "11" * 20)
    valid = EXECUTE + encode(["address", "uint256", "bytes"], [target, 1, b"\x01" * 40])
    dirty_address = EXECUTE + (1 << 200 | 0x11).to_bytes(32, "big") + valid[36:]
    assert not decode_call_data(SENDER, valid).opaque
    v07_types = ["address[]", "uint256[]", "bytes[]"]
    cases: dict[str, bytes] = {
        "v0.6 lengths differ": EXECUTE_BATCH_V06 + encode(["address[]", "bytes[]"], [[target, target], [b""]]),
        "v0.7 value count": EXECUTE_BATCH_V07 + encode(v07_types, [[target], [1, 2], [b""]]),
        "truncated execute": valid[:-40],  # into the data, not only its padding (which no one checks)
        "dirty address bits": dirty_address,
        "7579 static call": erc7579(mode(0xFE), bytes(52)),
        "7579 unknown exec type": erc7579(mode(0x00, 0x02), bytes(52)),
        "7579 mode selector (ERC-7821 opData)": erc7579(mode(0x01, 0, bytes.fromhex("78210001")), batch_tuples([])),
        "7579 single too short": erc7579(mode(0x00), bytes(51)),
    }
    for name, call_data in cases.items():
        assert decode_call_data(SENDER, call_data).opaque, name


def test_offsets_are_followed_as_solidity_does() -> None:
    """A non-canonical encoding (the bytes placed after a gap) decodes to what the account executes."""
    target = bytes.fromhex("22" * 20)
    args = (
        b"\x00" * 12 + target
        + (5).to_bytes(32, "big")
        + (0x80).to_bytes(32, "big")  # offset: skip one word of garbage
        + b"\xff" * 32
        + (3).to_bytes(32, "big")
        + b"abc" + b"\x00" * 29
    )  # fmt: skip
    assert decode_call_data(SENDER, EXECUTE + args).calls == (expected(target, 5, b"abc"),)


# -- grants -----------------------------------------------------------------------------------

TOKEN = "0x" + "70" * 20
SPENDER = to_checksum_address("0x" + "5e" * 20)


def call_to_token(signature: str, types: list[str], args: list[Any]) -> Call:
    data = function_signature_to_4byte_selector(signature) + encode(types, args)
    return expected(bytes.fromhex(TOKEN[2:]), 0, data)


def test_grants_are_recognised() -> None:
    approve = grant_of(call_to_token("approve(address,uint256)", ["address", "uint256"], [SPENDER, UINT256]))
    assert approve is not None and approve.kind == "approve" and approve.spender == SPENDER and approve.unlimited
    limited = grant_of(call_to_token("approve(address,uint256)", ["address", "uint256"], [SPENDER, 10**18]))
    assert limited is not None and not limited.unlimited
    half = grant_of(call_to_token("increaseAllowance(address,uint256)", ["address", "uint256"], [SPENDER, 2**255]))
    assert half is not None and half.kind == "increaseAllowance" and half.unlimited
    every = grant_of(call_to_token("setApprovalForAll(address,bool)", ["address", "bool"], [SPENDER, True]))
    assert every is not None and every.amount is None and every.unlimited
    assert grant_of(call_to_token("setApprovalForAll(address,bool)", ["address", "bool"], [SPENDER, False])) is None
    permit_types = ["address", "address", "uint256", "uint256", "uint8", "bytes32", "bytes32"]
    owner = to_checksum_address("0x" + "0e" * 20)
    permit = grant_of(
        call_to_token(
            "permit(address,address,uint256,uint256,uint8,bytes32,bytes32)",
            permit_types,
            [owner, SPENDER, UINT256, 2**40, 27, b"\x01" * 32, b"\x02" * 32],
        )
    )
    assert permit is not None and permit.kind == "permit" and permit.spender == SPENDER and permit.unlimited
    assert grant_of(call_to_token("transfer(address,uint256)", ["address", "uint256"], [SPENDER, UINT256])) is None
    assert grant_of(expected(bytes.fromhex(TOKEN[2:]), 0, APPROVE + b"\x00" * 10)) is None  # truncated
