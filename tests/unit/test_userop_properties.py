"""Property tests for UserOperation parsing, packing, userOp hashes and paymaster ``getHash``.

Every hash here is checked against a reference written independently of ``anode.userop`` with
``eth_abi`` (the ABI encoder the contracts' ``abi.encode`` follows) and, for v0.8, eth-account's
EIP-712 encoder. Cross-checks against the contracts' own ``getHash`` on anvil live in
``tests/integration/test_paymasters_onchain.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
from eth_abi import decode
from eth_account.messages import defunct_hash_message
from eth_utils.address import to_checksum_address
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anode.errors import InvalidRequest
from anode.paymasters.base import (
    GasDefaults,
    ValidityWindow,
    dummy_signature,
    eip191_digest,
)
from anode.paymasters.singleton import SingletonPaymaster
from anode.paymasters.verifying import VerifyingPaymaster
from anode.signers.base import SECP256K1_N
from anode.userop.hashing import packed_paymaster_and_data, user_op_hash
from anode.userop.models import UserOperationV06, UserOperationV07, parse_user_op
from anode.userop.versions import EntryPointVersion
from tests.unit.reference_hashes import (
    ref_hash_v06,
    ref_hash_v07,
    ref_hash_v08,
    ref_singleton_hash_v06,
    ref_singleton_hash_v07,
    ref_singleton_hash_v08_7702,
    ref_verifying_hash_v06,
    ref_verifying_hash_v07,
)

V06, V07, V08 = EntryPointVersion.V06, EntryPointVersion.V07, EntryPointVersion.V08
UINT256 = 2**256 - 1
UINT128 = 2**128 - 1

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies -------------------------------------------------------------------------------


def _hex(data: bytes, upper: bool = False) -> str:
    body = data.hex()
    return "0x" + (body.upper() if upper else body)


addresses = st.binary(min_size=20, max_size=20)
byte_strings = st.binary(max_size=300)
uint256 = st.integers(0, UINT256)
uint128 = st.integers(0, UINT128)
chain_ids = st.integers(1, 2**64 - 1)


@st.composite
def quantity_value(draw: st.DrawFn, bits: int) -> tuple[int, Any]:
    """A number and one of the wire forms it may take (hex string of any case, or a JSON int)."""
    number = draw(st.integers(0, 2**bits - 1))
    form = draw(st.sampled_from(["hex", "HEX", "int"]))
    if form == "int":
        return number, number
    text = hex(number)
    return number, ("0x" + text[2:].upper()) if form == "HEX" else text


@st.composite
def v06_ops(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """(raw RPC userOp, the native values it must parse to) for EntryPoint v0.6."""
    expected: dict[str, Any] = {
        "sender": draw(addresses),
        "initCode": draw(byte_strings),
        "callData": draw(byte_strings),
        "paymasterAndData": draw(byte_strings),
        "signature": draw(byte_strings),
    }
    raw: dict[str, Any] = {name: _hex(value, draw(st.booleans())) for name, value in expected.items()}
    for name in (
        "nonce",
        "callGasLimit",
        "verificationGasLimit",
        "preVerificationGas",
        "maxFeePerGas",
        "maxPriorityFeePerGas",
    ):
        expected[name], raw[name] = draw(quantity_value(256))
    return raw, expected


@st.composite
def v07_ops(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    """(raw RPC userOp, native values) for EntryPoint v0.7/v0.8, in the unpacked RPC form."""
    expected: dict[str, Any] = {
        "sender": draw(addresses),
        "callData": draw(byte_strings),
        "signature": draw(byte_strings),
    }
    raw: dict[str, Any] = {name: _hex(value) for name, value in expected.items()}
    expected["nonce"], raw["nonce"] = draw(quantity_value(256))
    expected["preVerificationGas"], raw["preVerificationGas"] = draw(quantity_value(256))
    for name in ("callGasLimit", "verificationGasLimit", "maxFeePerGas", "maxPriorityFeePerGas"):
        expected[name], raw[name] = draw(quantity_value(128))
    if draw(st.booleans()):
        expected["factory"] = draw(addresses)
        expected["factoryData"] = draw(byte_strings)
        raw["factory"], raw["factoryData"] = _hex(expected["factory"]), _hex(expected["factoryData"])
    else:
        expected["factory"], expected["factoryData"] = None, b""
    if draw(st.booleans()):
        expected["paymaster"] = draw(addresses)
        expected["paymasterData"] = draw(byte_strings)
        raw["paymaster"], raw["paymasterData"] = _hex(expected["paymaster"]), _hex(expected["paymasterData"])
        for name in ("paymasterVerificationGasLimit", "paymasterPostOpGasLimit"):
            expected[name], raw[name] = draw(quantity_value(128))
    else:
        expected["paymaster"], expected["paymasterData"] = None, b""
        expected["paymasterVerificationGasLimit"] = expected["paymasterPostOpGasLimit"] = None
    return raw, expected


def _v06(draw_result: tuple[dict[str, Any], dict[str, Any]]) -> UserOperationV06:
    op = parse_user_op(draw_result[0], V06)
    assert isinstance(op, UserOperationV06)
    return op


def _v07(draw_result: tuple[dict[str, Any], dict[str, Any]]) -> UserOperationV07:
    op = parse_user_op(draw_result[0], V07)
    assert isinstance(op, UserOperationV07)
    return op


windows = st.builds(ValidityWindow, valid_until=st.integers(0, 2**48 - 1), valid_after=st.integers(0, 2**48 - 1))

# -- parsing ----------------------------------------------------------------------------------


@FAST
@given(v06_ops())
def test_v06_parse_reads_every_field_and_round_trips(case: tuple[dict[str, Any], dict[str, Any]]) -> None:
    raw, expected = case
    op = parse_user_op(raw, V06)
    dumped = op.model_dump(by_alias=True)
    for name, value in expected.items():
        assert getattr(op, _attribute(UserOperationV06, name)) == value, name
    assert dumped["sender"] == _checksum(expected["sender"])
    assert parse_user_op(dumped, V06) == op


@FAST
@given(v07_ops(), st.sampled_from([V07, V08]))
def test_v07_parse_reads_every_field_and_round_trips(
    case: tuple[dict[str, Any], dict[str, Any]], version: EntryPointVersion
) -> None:
    raw, expected = case
    op = parse_user_op(raw, version)
    for name, value in expected.items():
        assert getattr(op, _attribute(UserOperationV07, name)) == value, name
    dumped = op.model_dump(by_alias=True)
    assert parse_user_op(dumped, version) == op
    # the wire form without None fields (what aNode sends to bundlers) parses back too
    assert parse_user_op(op.model_dump(by_alias=True, exclude_none=True), version) == op


def _checksum(address: bytes) -> str:
    return to_checksum_address(address)


def _attribute(model: type[UserOperationV06] | type[UserOperationV07], wire_name: str) -> str:
    """The model attribute behind a wire (alias) name."""
    for name, info in model.model_fields.items():
        if (info.alias or name) == wire_name:
            return name
    raise KeyError(wire_name)


# -- malformed input --------------------------------------------------------------------------

_NON_HEX = "ghijklmnopqrstuvwxyzGXZ!$%&*/:;<=>?@[]^`{|}~"
_HEX = "0123456789abcdefABCDEF"

wrong_types = st.one_of(
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(0, 9), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@st.composite
def non_hex_strings(draw: st.DrawFn) -> str:
    """``0x`` + hex digits with at least one character that is not a hex digit."""
    prefix = draw(st.text(alphabet=_HEX, max_size=10))
    bad = draw(st.text(alphabet=_NON_HEX, min_size=1, max_size=3))
    suffix = draw(st.text(alphabet=_HEX, max_size=10))
    return "0x" + prefix + bad + suffix


odd_hex = st.text(alphabet=_HEX, min_size=1, max_size=81).filter(lambda s: len(s) % 2 == 1).map(lambda s: "0x" + s)
no_prefix = st.binary(min_size=1, max_size=30).map(lambda b: b.hex())

bad_bytes = st.one_of(odd_hex, non_hex_strings(), no_prefix, st.integers(), wrong_types)
bad_addresses = st.one_of(
    bad_bytes,
    st.binary(max_size=40).filter(lambda b: len(b) != 20).map(_hex),
)


def bad_quantities(bits: int) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.integers(max_value=-1),
        st.integers(min_value=2**bits, max_value=2**300),
        st.integers(min_value=2**bits, max_value=2**300).map(hex),
        st.just("0x"),
        st.just(""),
        non_hex_strings(),
        st.text(alphabet=_HEX, min_size=1, max_size=8),  # no 0x prefix
        wrong_types,
        st.none(),
    )


V06_BAD: dict[str, st.SearchStrategy[Any]] = {
    "sender": bad_addresses,
    "nonce": bad_quantities(256),
    "initCode": bad_bytes,
    "callData": bad_bytes,
    "callGasLimit": bad_quantities(256),
    "verificationGasLimit": bad_quantities(256),
    "preVerificationGas": bad_quantities(256),
    "maxFeePerGas": bad_quantities(256),
    "maxPriorityFeePerGas": bad_quantities(256),
    "paymasterAndData": bad_bytes,
    "signature": bad_bytes,
}
V07_BAD: dict[str, st.SearchStrategy[Any]] = {
    "sender": bad_addresses,
    "nonce": bad_quantities(256),
    "factory": bad_addresses,
    "factoryData": bad_bytes,
    "callData": bad_bytes,
    "callGasLimit": bad_quantities(128),
    "verificationGasLimit": bad_quantities(128),
    "preVerificationGas": bad_quantities(256),
    "maxFeePerGas": bad_quantities(128),
    "maxPriorityFeePerGas": bad_quantities(128),
    "paymaster": bad_addresses,
    "paymasterVerificationGasLimit": bad_quantities(128),
    "paymasterPostOpGasLimit": bad_quantities(128),
    "paymasterData": bad_bytes,
    "signature": bad_bytes,
}


#: fields with a default: null is how an RPC userOp leaves them out (tests/unit/test_userop_nulls.py)
_OPTIONAL = {
    info.alias or name
    for model in (UserOperationV06, UserOperationV07)
    for name, info in model.model_fields.items()
    if not info.is_required()
}


@st.composite
def corrupted(draw: st.DrawFn, ops: st.SearchStrategy[Any], table: dict[str, st.SearchStrategy[Any]]) -> Any:
    raw, _ = draw(ops)
    name = draw(st.sampled_from(sorted(table)))
    value = draw(table[name])
    if value is None and name in _OPTIONAL:  # null is how an RPC userOp leaves these out
        value = -1
    bad = dict(raw)
    bad[name] = value
    if name == "factoryData":  # with a factory, so only factoryData's own form is wrong
        bad.setdefault("factory", "0x" + "11" * 20)
    return name, bad


def _assert_refused(raw: Any, version: EntryPointVersion, field: str) -> None:
    try:
        parse_user_op(raw, version)
    except InvalidRequest as exc:
        assert exc.field == field, (exc.field, exc.message)
        assert exc.data == {"field": field}
        assert exc.message.startswith(field), exc.message
    else:  # pragma: no cover - the assertion message is the point
        pytest.fail(f"accepted malformed {field}: {raw.get(field.removeprefix('userOp.'))!r}")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corrupted(v06_ops(), V06_BAD))
def test_v06_malformed_field_is_refused_naming_it(case: tuple[str, dict[str, Any]]) -> None:
    name, raw = case
    _assert_refused(raw, V06, f"userOp.{name}")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corrupted(v07_ops(), V07_BAD), st.sampled_from([V07, V08]))
def test_v07_malformed_field_is_refused_naming_it(case: tuple[str, dict[str, Any]], version: EntryPointVersion) -> None:
    name, raw = case
    _assert_refused(raw, version, f"userOp.{name}")


@pytest.mark.parametrize("version", [V06, V07])
@pytest.mark.parametrize("missing", ["sender", "nonce", "callData"])
def test_missing_required_field_is_named(version: EntryPointVersion, missing: str) -> None:
    raw = {"sender": "0x" + "11" * 20, "nonce": "0x0", "callData": "0x"}
    del raw[missing]
    with pytest.raises(InvalidRequest) as caught:
        parse_user_op(raw, version)
    assert caught.value.field == f"userOp.{missing}"
    assert "is required" in caught.value.message


@pytest.mark.parametrize("raw", [None, [], ["0x"], "0x1234", 7, True, 1.5])
@pytest.mark.parametrize("version", [V06, V07, V08])
def test_user_op_that_is_not_an_object_is_refused(raw: Any, version: EntryPointVersion) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_user_op(raw, version)
    assert caught.value.field == "userOp"


@pytest.mark.parametrize("version", [V07, V08])
def test_factory_data_without_factory_names_factory_data(version: EntryPointVersion) -> None:
    """A wallet that forgot ``factory`` must be told which field is wrong, not just "userOp"."""
    raw = {"sender": "0x" + "11" * 20, "nonce": "0x0", "callData": "0x", "factoryData": "0xabcd"}
    with pytest.raises(InvalidRequest) as caught:
        parse_user_op(raw, version)
    assert "factory" in caught.value.message
    assert caught.value.field == "userOp.factoryData"


@pytest.mark.parametrize("text", ["0x1_0", "0x 1", "0x+1", "0x-0", "0x0X1"])
def test_quantities_that_are_not_plain_hex_are_refused(text: str) -> None:
    """Python's ``int(x, 16)`` accepts ``_``, signs, whitespace and a second ``0x``; a hex quantity does not."""
    raw = {"sender": "0x" + "11" * 20, "nonce": text, "callData": "0x"}
    with pytest.raises(InvalidRequest) as caught:
        parse_user_op(raw, V07)
    assert caught.value.field == "userOp.nonce"


@pytest.mark.parametrize("text", ["0x  0011", "0x00 11 "])
def test_byte_strings_with_whitespace_are_refused(text: str) -> None:
    """``bytes.fromhex`` skips spaces; ``callData`` with spaces is malformed, not data."""
    raw = {"sender": "0x" + "11" * 20, "nonce": "0x0", "callData": text}
    with pytest.raises(InvalidRequest) as caught:
        parse_user_op(raw, V07)
    assert caught.value.field == "userOp.callData"


def test_require_gas_fields_names_the_first_missing_one() -> None:
    raw = {"sender": "0x" + "11" * 20, "nonce": "0x0", "callData": "0x", "callGasLimit": "0x1"}
    op = parse_user_op(raw, V07)
    with pytest.raises(InvalidRequest) as caught:
        op.require_gas_fields(raw)
    assert caught.value.field == "userOp.verificationGasLimit"


# -- packing ----------------------------------------------------------------------------------


@FAST
@given(v07_ops(), st.none() | byte_strings)
def test_v07_packing_unpacks_to_the_rpc_fields(case: tuple[dict[str, Any], dict[str, Any]], data: bytes | None) -> None:
    op, expected = _v07(case), case[1]
    limits, fees = op.account_gas_limits, op.gas_fees
    assert len(limits) == len(fees) == 32
    assert int.from_bytes(limits[:16], "big") == expected["verificationGasLimit"]
    assert int.from_bytes(limits[16:], "big") == expected["callGasLimit"]
    assert int.from_bytes(fees[:16], "big") == expected["maxPriorityFeePerGas"]
    assert int.from_bytes(fees[16:], "big") == expected["maxFeePerGas"]

    if expected["factory"] is None:
        assert op.init_code == b""
    else:
        assert op.init_code[:20] == expected["factory"]
        assert op.init_code[20:] == expected["factoryData"]

    packed = packed_paymaster_and_data(op, data)
    if expected["paymaster"] is None:
        assert packed == b""
        return
    assert packed[:20] == expected["paymaster"]
    assert int.from_bytes(packed[20:36], "big") == expected["paymasterVerificationGasLimit"]
    assert int.from_bytes(packed[36:52], "big") == expected["paymasterPostOpGasLimit"]
    assert packed[52:] == (expected["paymasterData"] if data is None else data)


# -- userOp hashes ---------------------------------------------------------------------------


@FAST
@given(v06_ops(), addresses, chain_ids)
def test_v06_user_op_hash_matches_reference(
    case: tuple[dict[str, Any], dict[str, Any]], entry_point: bytes, chain_id: int
) -> None:
    op = _v06(case)
    assert user_op_hash(op, V06, entry_point, chain_id) == ref_hash_v06(op, entry_point, chain_id)


@FAST
@given(v07_ops(), addresses, chain_ids)
def test_v07_user_op_hash_matches_reference(
    case: tuple[dict[str, Any], dict[str, Any]], entry_point: bytes, chain_id: int
) -> None:
    op = _v07(case)
    assert user_op_hash(op, V07, entry_point, chain_id) == ref_hash_v07(op, entry_point, chain_id)


@FAST
@given(v07_ops(), addresses, chain_ids)
def test_v08_user_op_hash_is_the_eip712_digest(
    case: tuple[dict[str, Any], dict[str, Any]], entry_point: bytes, chain_id: int
) -> None:
    op = _v07(case)
    got = user_op_hash(op, V08, entry_point, chain_id)
    assert got == ref_hash_v08(op, entry_point, chain_id)
    assert got != ref_hash_v07(op, entry_point, chain_id)


def test_hash_binds_entry_point_and_chain() -> None:
    op = parse_user_op({"sender": "0x" + "11" * 20, "nonce": "0x0", "callData": "0x"}, V07)
    ep = bytes.fromhex("0000000071727De22E5E9d8BAf0edAc6f37da032")
    base = user_op_hash(op, V07, ep, 1)
    assert user_op_hash(op, V07, ep, 2) != base
    assert user_op_hash(op, V07, b"\x01" * 20, 1) != base


# -- paymaster getHash ----------------------------------------------------------------------

signatures65 = st.binary(min_size=65, max_size=65)
gas_defaults = st.builds(GasDefaults, verification_gas_limit=uint128, post_op_gas_limit=uint128)


@FAST
@given(v06_ops(), addresses, windows, chain_ids, uint256, signatures65)
def test_verifying_v06_digest_matches_reference(
    case: tuple[dict[str, Any], dict[str, Any]],
    paymaster: bytes,
    window: ValidityWindow,
    chain_id: int,
    sender_nonce: int,
    real_signature: bytes,
) -> None:
    family = VerifyingPaymaster(paymaster, V06, GasDefaults(0, 0))
    op = _v06(case)
    placeholder = family.attach(op, family.encode(window, dummy_signature()))
    digest = family.digest(placeholder, window, chain_id, sender_nonce)
    # the contract hashes the op as submitted, with the real signature: pack() stops before it
    submitted = family.attach(op, family.encode(window, real_signature))
    assert isinstance(submitted, UserOperationV06)
    assert digest == ref_verifying_hash_v06(
        submitted, paymaster, window.valid_until, window.valid_after, chain_id, sender_nonce
    )


@FAST
@given(v07_ops(), addresses, windows, chain_ids, gas_defaults, signatures65)
def test_verifying_v07_digest_matches_reference(
    case: tuple[dict[str, Any], dict[str, Any]],
    paymaster: bytes,
    window: ValidityWindow,
    chain_id: int,
    gas: GasDefaults,
    real_signature: bytes,
) -> None:
    family = VerifyingPaymaster(paymaster, V07, gas)
    op = _v07(case)
    placeholder = family.attach(op, family.encode(window, dummy_signature()))
    digest = family.digest(placeholder, window, chain_id, 0)
    submitted = family.attach(op, family.encode(window, real_signature))
    assert isinstance(submitted, UserOperationV07)
    assert digest == ref_verifying_hash_v07(submitted, paymaster, window.valid_until, window.valid_after, chain_id)


@FAST
@given(v06_ops(), addresses, windows, chain_ids, signatures65)
def test_singleton_v6_digest_matches_reference(
    case: tuple[dict[str, Any], dict[str, Any]],
    paymaster: bytes,
    window: ValidityWindow,
    chain_id: int,
    real_signature: bytes,
) -> None:
    family = SingletonPaymaster(paymaster, V06, GasDefaults(0, 0))
    op = _v06(case)
    digest = family.digest(family.attach(op, family.encode(window, dummy_signature())), window, chain_id, 0)
    submitted = family.attach(op, family.encode(window, real_signature))
    assert isinstance(submitted, UserOperationV06)
    assert digest == ref_singleton_hash_v06(submitted, chain_id)


@FAST
@given(
    v07_ops(),
    addresses,
    windows,
    chain_ids,
    gas_defaults,
    signatures65,
    st.sampled_from([(V07, False), (V08, False), (V08, True)]),
)
def test_singleton_v7_v8_digest_matches_reference(
    case: tuple[dict[str, Any], dict[str, Any]],
    paymaster: bytes,
    window: ValidityWindow,
    chain_id: int,
    gas: GasDefaults,
    real_signature: bytes,
    variant: tuple[EntryPointVersion, bool],
) -> None:
    """V7 and the plain V8 build hash alike; the other V8 build wraps that with the 7702 override."""
    version, bind_7702 = variant
    family = SingletonPaymaster(paymaster, version, gas, bind_7702_override=bind_7702)
    op = _v07(case)
    digest = family.digest(family.attach(op, family.encode(window, dummy_signature())), window, chain_id, 0)
    submitted = family.attach(op, family.encode(window, real_signature))
    assert isinstance(submitted, UserOperationV07)
    reference = ref_singleton_hash_v08_7702 if bind_7702 else ref_singleton_hash_v07
    assert digest == reference(submitted, chain_id)


def test_singleton_v8_offers_the_other_build_as_alternative() -> None:
    plain = SingletonPaymaster(b"\x01" * 20, V08, GasDefaults(0, 0))
    (other,) = plain.alternatives()
    assert isinstance(other, SingletonPaymaster)
    assert (plain.bind_7702_override, other.bind_7702_override) == (False, True)
    assert SingletonPaymaster(b"\x01" * 20, V07, GasDefaults(0, 0), bind_7702_override=True).alternatives() == []
    # the flag means nothing before V8
    assert not SingletonPaymaster(b"\x01" * 20, V07, GasDefaults(0, 0), bind_7702_override=True).bind_7702_override


@FAST
@given(windows, signatures65)
def test_paymaster_data_layouts(window: ValidityWindow, signature: bytes) -> None:
    verifying = VerifyingPaymaster(b"\x01" * 20, V07, GasDefaults(0, 0)).encode(window, signature)
    assert len(verifying) == 64 + 65
    assert decode(["uint48", "uint48"], verifying[:64]) == (window.valid_until, window.valid_after)
    assert verifying[64:] == signature

    singleton = SingletonPaymaster(b"\x01" * 20, V07, GasDefaults(0, 0)).encode(window, signature)
    assert len(singleton) == 1 + 6 + 6 + 65
    assert singleton[0] == 0b01  # verifying mode (0) << 1 | allowAllBundlers
    assert int.from_bytes(singleton[1:7], "big") == window.valid_until
    assert int.from_bytes(singleton[7:13], "big") == window.valid_after
    assert singleton[13:] == signature


@FAST
@given(v07_ops(), gas_defaults)
def test_attach_keeps_the_wallets_paymaster_gas_limits_and_fills_defaults(
    case: tuple[dict[str, Any], dict[str, Any]], gas: GasDefaults
) -> None:
    op, expected = _v07(case), case[1]
    family = VerifyingPaymaster(b"\x02" * 20, V07, gas)
    attached = family.attach(op, b"\xaa\xbb")
    assert isinstance(attached, UserOperationV07)
    assert attached.paymaster == b"\x02" * 20
    assert attached.paymaster_data == b"\xaa\xbb"
    given_pvgl = expected["paymasterVerificationGasLimit"]
    given_post = expected["paymasterPostOpGasLimit"]
    want_pvgl = gas.verification_gas_limit if given_pvgl is None else given_pvgl
    want_post = gas.post_op_gas_limit if given_post is None else given_post
    assert attached.paymaster_verification_gas_limit == want_pvgl
    assert attached.paymaster_post_op_gas_limit == want_post


@given(st.binary(min_size=32, max_size=32))
def test_eip191_digest_is_to_eth_signed_message_hash(message_hash: bytes) -> None:
    assert eip191_digest(message_hash) == bytes(defunct_hash_message(primitive=message_hash))


def test_dummy_signature_is_well_formed_and_has_no_zero_byte() -> None:
    sig = dummy_signature()
    assert len(sig) == 65
    assert 0 not in sig
    assert sig[64] in (27, 28)
    assert int.from_bytes(sig[32:64], "big") <= SECP256K1_N // 2


def test_verifying_paymaster_does_not_exist_for_v08() -> None:
    with pytest.raises(ValueError, match=r"v0\.6, v0\.7"):
        VerifyingPaymaster(b"\x01" * 20, V08, GasDefaults(0, 0))


def test_eip7702_factory_is_refused_before_signing() -> None:
    family = SingletonPaymaster(b"\x01" * 20, V08, GasDefaults(0, 0))
    raw = {"sender": "0x" + "11" * 20, "nonce": "0x0", "callData": "0x", "factory": "0x7702" + "00" * 18}
    with pytest.raises(InvalidRequest) as caught:
        family.check(parse_user_op(raw, V08))
    assert caught.value.field == "userOp.factory"
