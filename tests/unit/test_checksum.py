"""EIP-55 checksums: aNode's cached, written-out ``checksum`` agrees with eth_utils on every address."""

from __future__ import annotations

from eth_utils.address import to_checksum_address
from hypothesis import given
from hypothesis import strategies as st

from anode.userop.codec import checksum
from anode.userop.keccak import EMPTY, keccak


@given(st.binary(min_size=20, max_size=20))
def test_checksum_matches_eth_utils(address: bytes) -> None:
    assert checksum(address) == to_checksum_address(address)
    assert checksum(address) == checksum(address)  # and the cached answer is the same


@given(st.binary(max_size=300))
def test_keccak_matches_pycryptodome(data: bytes) -> None:
    from Crypto.Hash import keccak as reference

    assert keccak(data) == reference.new(data=data, digest_bits=256).digest()
    assert keccak(b"") == EMPTY
