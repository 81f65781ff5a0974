"""The fixed-layout calldata of ``anode/chain/reads.py`` against eth-abi's encoding of the same calls,
and a bad module configuration stopping the server's start-up with the field named."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from eth_abi.abi import encode
from eth_utils.abi import function_signature_to_4byte_selector

from anode.chain import reads
from anode.config import validate_settings
from anode.errors import ConfigError
from anode.wiring import build
from tests.checks.conftest import CHAIN_ID, EP07, PM07


@pytest.mark.parametrize(
    ("selector", "signature"),
    [
        (reads.BALANCE_OF, "balanceOf(address)"),
        (reads.STAKED_BALANCE_OF, "stakedBalanceOf(address)"),
        (reads.LOCKED_BALANCE_OF, "lockedBalanceOf(address)"),
    ],
)
async def test_calldata_is_the_abi_encoding(selector: bytes, signature: str) -> None:
    account = secrets.token_bytes(20)
    sent: list[bytes] = []

    class Recorder:
        async def call(self, to: bytes, data: bytes) -> bytes:
            sent.append(data)
            return (7).to_bytes(32, "big")

    assert await reads.uint_of_address(Recorder(), b"\x01" * 20, selector, account, signature) == 7  # type: ignore[arg-type]
    expected = function_signature_to_4byte_selector(signature) + encode(["address"], ["0x" + account.hex()])
    assert sent == [expected]


def test_a_bad_module_config_stops_start_up_naming_the_field(tmp_path: Path) -> None:
    tree = {
        "database_url": f"sqlite:///{tmp_path / 'anode.db'}",
        "signer": {"type": "local", "private_key": "0x" + "5a" * 32},
        "chains": [
            {
                "chain_id": CHAIN_ID,
                "rpc_url": "http://127.0.0.1:1",
                "paymasters": [{"entry_point": EP07, "address": PM07, "contract": "verifying"}],
            }
        ],
        "pipeline": {
            "modules": [
                {
                    "name": "sbt_validator",
                    "config": {
                        "contracts": [{"address": "0x" + "11" * 20, "type": "identity"}],
                        "required_types": ["kyc"],
                    },
                }
            ]
        },
    }
    with pytest.raises(ConfigError, match=r"sbt_validator.*required_types.*no contract of type kyc"):
        build(validate_settings(tree))
    tree["pipeline"]["modules"] = [{"name": "pnt_balance_validator", "config": {"contract_address": "0x" + "22" * 20}}]  # type: ignore[index]
    with pytest.raises(ConfigError, match=r"pnt_balance_validator.*min_balance"):
        build(validate_settings(tree))
