"""A paymaster contract family is one module and one line in ``anode/paymasters/registry.py``:
the configuration accepts every registered name (and only those), and the routes build it."""

from __future__ import annotations

import pytest

from anode.config import validate_settings
from anode.errors import ConfigError
from anode.paymasters.base import GasDefaults
from anode.paymasters.registry import FAMILIES
from anode.paymasters.verifying import VerifyingPaymaster
from anode.pipeline.routes import build_family
from anode.userop.versions import EntryPointVersion

EP_V07 = "0x0000000071727De22E5E9d8BAf0edAc6f37da032"
PAYMASTER = "0x" + "ab" * 20


class ThirdFamily(VerifyingPaymaster):
    """A family nobody ships: the verifying layout under another name."""

    name = "third"


def tree(contract: str) -> dict[str, object]:
    return {
        "signer": {"type": "local", "private_key": "0x" + "4c" * 32},
        "chains": [
            {
                "chain_id": 31337,
                "rpc_url": "http://127.0.0.1:8545",
                "paymasters": [{"entry_point": EP_V07, "address": PAYMASTER, "contract": contract}],
            }
        ],
    }


def test_a_registered_family_is_configurable_and_built_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(FAMILIES, ThirdFamily.name, ThirdFamily)
    settings = validate_settings(tree("third"))
    (paymaster,) = settings.chains[0].paymasters
    assert paymaster.contract == "third"
    family = build_family(paymaster.contract, bytes.fromhex("ab" * 20), EntryPointVersion.V07, GasDefaults(0, 0))
    assert isinstance(family, ThirdFamily)


def test_an_unknown_family_is_refused_naming_the_registered_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        validate_settings(tree("magic"))
    message = caught.value.message
    assert "chains.0.paymasters.0.contract" in message
    assert "singleton, verifying" in message
