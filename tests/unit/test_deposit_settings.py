"""The deposit settings (``deposits:``, ``alerts:``, ``funding:``, ``low_balance_wei``) and the
``anode deposit`` errors that need no chain: amounts, a missing funding key, an unknown paymaster.
The commands against a real chain are in ``tests/integration/test_deposits_onchain.py``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import yaml

from anode.cli import main
from anode.config import validate_settings
from anode.deposit_cli import amount_wei, ether
from anode.errors import ConfigError
from tests.support.cli import CHAINS

WEBHOOK_SECRET = "webhook-secret-9d2e"
FUNDING_KEY = "0x" + "7c" * 32
PAYMASTER = CHAINS[0]["paymasters"][0]["address"]  # type: ignore[index]


def tree(**sections: Any) -> dict[str, Any]:
    return {"signer": {"type": "local", "private_key": "0x" + "5a" * 32}, "chains": CHAINS, **sections}


def test_secrets_of_alerts_and_funding_never_print() -> None:
    settings = validate_settings(
        tree(
            alerts={"webhook_url": "https://hooks.example/p/tok-123?k=v", "webhook_secret": WEBHOOK_SECRET},
            funding={"private_key": FUNDING_KEY},
        )
    )
    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        assert WEBHOOK_SECRET not in shown and FUNDING_KEY[2:] not in shown and "tok-123" not in shown
    assert settings.alerts.webhook_secret is not None
    assert settings.alerts.webhook_secret.get_secret_value() == WEBHOOK_SECRET


def test_a_webhook_without_a_secret_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        validate_settings(tree(alerts={"webhook_url": "https://hooks.example/"}))
    assert "alerts.webhook_secret" in caught.value.message


def test_low_balance_wei_is_a_paymaster_setting() -> None:
    chains = [{**CHAINS[0], "paymasters": [{**CHAINS[0]["paymasters"][0], "low_balance_wei": 10**17}]}]  # type: ignore[dict-item]
    settings = validate_settings({**tree(), "chains": chains})
    assert settings.chains[0].paymasters[0].low_balance_wei == 10**17
    assert validate_settings(tree()).chains[0].paymasters[0].low_balance_wei is None
    with pytest.raises(ConfigError):
        validate_settings(
            {**tree(), "chains": [{**chains[0], "paymasters": [{**chains[0]["paymasters"][0], "low_balance_wei": -1}]}]}
        )


@pytest.mark.parametrize(
    ("text", "wei"),
    [
        ("1eth", 10**18),
        ("0.5 ETH", 5 * 10**17),
        ("20gwei", 2 * 10**10),
        ("123", 123),
        ("1.000000000000000001eth", 10**18 + 1),
    ],
)
def test_amounts(text: str, wei: int) -> None:
    assert amount_wei(text) == wei


@pytest.mark.parametrize("text", ["", "0", "1.5", "1.5wei", "-1eth", "1 btc", "0.0000000000000000001eth"])
def test_amounts_that_are_not_whole_wei_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        amount_wei(text)


def test_ether_is_exact() -> None:
    assert (ether(15 * 10**17), ether(1), ether(10**20)) == ("1.5 ETH", "0.000000000000000001 ETH", "100 ETH")


def write(tmp_path: Path, config: dict[str, Any]) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_deposit_add_without_a_funding_key_says_how_to_set_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANODE_FUNDING__PRIVATE_KEY", raising=False)
    config = write(tmp_path, tree())
    assert main(["deposit", "add", "--paymaster", PAYMASTER, "--amount", "1eth", "--yes", "--config", config]) == 2
    err = capsys.readouterr().err
    assert "funding.private_key" in err and "ANODE_FUNDING__PRIVATE_KEY" in err


def test_deposit_add_to_an_unknown_paymaster_lists_the_configured_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path, tree(funding={"private_key": FUNDING_KEY}))
    other = "0x" + "ab" * 20
    assert main(["deposit", "add", "--paymaster", other, "--amount", "1eth", "--yes", "--config", config]) == 2
    err = capsys.readouterr().err
    assert "is not configured" in err and PAYMASTER in err and FUNDING_KEY[2:] not in err


def test_deposit_show_names_a_deposit_it_cannot_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path, tree())  # CHAINS' node (127.0.0.1:1) answers nothing
    assert main(["deposit", "show", "--config", config]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if PAYMASTER in line)
    assert " ? " in row and "error: node at http://127.0.0.1:1 is unreachable" in row
