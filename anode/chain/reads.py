"""Typed contract reads for the checks: one ``eth_call`` each, with fixed-layout calldata.

Every function here takes a ``(selector ‖ address)`` shape, so the calldata is the 4-byte
selector, 12 zero bytes and the 20-byte address; no ABI encoder runs. Each returns the first
32-byte word of the answer as an unsigned integer.

Failures are ``ChainUnavailable`` (HTTP 503, JSON-RPC -32603), never a zero: a node that is
down, a contract that is not deployed at the configured address (the node answers ``0x``) and
a call that reverts (a misconfigured address, a contract without that function) all stop the
check, so "could not read" is never mistaken for "holds nothing".

The staking interface aNode reads (any contract exposing these two views works):

    function stakedBalanceOf(address account) external view returns (uint256);  // withdrawable stake
    function lockedBalanceOf(address account) external view returns (uint256);  // stake locked in place

The two amounts are disjoint: a holder's total is ``balanceOf + staked + locked``.
"""

from __future__ import annotations

from anode.chain.client import ChainClient
from anode.errors import ChainUnavailable, UpstreamRejected
from anode.userop.codec import checksum

BALANCE_OF = bytes.fromhex("70a08231")  # balanceOf(address): ERC-20 and ERC-721 alike
STAKED_BALANCE_OF = bytes.fromhex("16765391")  # stakedBalanceOf(address)
LOCKED_BALANCE_OF = bytes.fromhex("59355736")  # lockedBalanceOf(address)

_PAD = b"\x00" * 12
_ZERO_ADDRESS = b"\x00" * 20


async def uint_of_address(chain: ChainClient, contract: bytes, selector: bytes, account: bytes, what: str) -> int:
    """``contract.<what>(account)`` as an ``int``; ``what`` names the function in errors."""
    try:
        raw = await chain.call(contract, selector + _PAD + account)
    except UpstreamRejected as exc:
        raise ChainUnavailable(
            f"{what} on {checksum(contract)} reverted ({exc.message.split(': ', 1)[-1]}): "
            "is the configured address the right contract on this chain?",
            data={"contract": checksum(contract)},
        ) from None
    if len(raw) < 32:
        raise ChainUnavailable(
            f"{what}: no contract answers at {checksum(contract)} on this chain (is it deployed here?)",
            data={"contract": checksum(contract)},
        )
    return int.from_bytes(raw[:32], "big")


async def erc721_balance_of(chain: ChainClient, contract: bytes, owner: bytes) -> int:
    """How many tokens of the ERC-721 ``contract`` ``owner`` holds."""
    if owner == _ZERO_ADDRESS:
        # ERC-721 says balanceOf(0) throws (OpenZeppelin: "address zero is not a valid owner"), and no
        # token can be minted to it: the answer is known, and a revert here is no node failure (503)
        return 0
    return await uint_of_address(chain, contract, BALANCE_OF, owner, "ERC-721 balanceOf")


async def erc20_balance_of(chain: ChainClient, token: bytes, owner: bytes) -> int:
    """``owner``'s ERC-20 balance of ``token``, in the token's smallest unit."""
    return await uint_of_address(chain, token, BALANCE_OF, owner, "ERC-20 balanceOf")


async def staked_balance_of(chain: ChainClient, staking: bytes, account: bytes) -> int:
    return await uint_of_address(chain, staking, STAKED_BALANCE_OF, account, "stakedBalanceOf")


async def locked_balance_of(chain: ChainClient, staking: bytes, account: bytes) -> int:
    return await uint_of_address(chain, staking, LOCKED_BALANCE_OF, account, "lockedBalanceOf")
