"""The relay's choice of chain and its error answers, without a network (the on-chain proof is
``tests/integration/test_relay.py``, with viem and Alto)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from anode.api.errors import rpc_error
from anode.api.jsonrpc.context import CallContext
from anode.api.jsonrpc.relay import bundler_of, chain_of
from anode.errors import BundlerRejected, BundlerUnavailable, RelayChainRequired, UnsupportedChain


def ctx(chains: list[int], chain_id: str | None = None, bundler: Any = None) -> CallContext:
    routes = [SimpleNamespace(chain_id=c, bundler=bundler) for c in chains]
    service: Any = SimpleNamespace(routes=routes)
    return CallContext(service, None, "aNode", None, None, chain_id)


def test_one_chain_needs_no_chain_id_and_several_do() -> None:
    assert chain_of(ctx([8453])) == 8453
    with pytest.raises(RelayChainRequired) as raised:
        chain_of(ctx([1, 8453]))
    error = rpc_error(raised.value)
    assert (error["code"], error["data"]["anodeCode"]) == (-32602, "ANODE_RELAY_CHAIN_REQUIRED")
    assert "?chainId=" in error["message"]
    assert error["data"]["supportedChainIds"] == ["0x1", "0x2105"]


def test_the_chain_id_in_the_url_is_decimal_or_hex_and_must_be_served() -> None:
    assert chain_of(ctx([1, 8453], "8453")) == 8453
    assert chain_of(ctx([1, 8453], "0x2105")) == 8453
    with pytest.raises(UnsupportedChain):
        chain_of(ctx([1, 8453], "10"))
    with pytest.raises(ValueError, match="chainId"):
        chain_of(ctx([1], "eight"))


def test_a_chain_without_a_bundler_says_so() -> None:
    with pytest.raises(BundlerUnavailable, match="bundler_url"):
        bundler_of(ctx([1]), 1)


def test_a_bundler_error_is_answered_unchanged() -> None:
    upstream = {"code": -32500, "message": "AA21 didn't pay prefund", "data": {"reason": "0xdead"}}
    assert rpc_error(BundlerRejected(upstream)) == upstream
    assert rpc_error(BundlerRejected({"message": 7})) == {"code": -32500, "message": "the bundler refused the call"}
