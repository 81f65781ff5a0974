"""Settings: a YAML file, then ``ANODE_…`` environment overrides, validated at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from anode.config import MAX_VALIDITY_SECONDS, Settings, load_settings, validate_settings
from anode.errors import ConfigError

EP_V07 = "0x0000000071727De22E5E9d8BAf0edAc6f37da032"
EP_V06 = "0x5FF137D4b0FDCD49DcA30c7CF57E578a026d2789"
PAYMASTER = "0x" + "ab" * 20
PRIVATE_KEY = "0x" + "4c" * 32
API_KEY = "api-key-that-must-not-leak"
KEYSTORE_PASSWORD = "keystore-password-that-must-not-leak"
DB_PASSWORD = "db-password-that-must-not-leak"


def base_tree() -> dict[str, Any]:
    return {
        "signer": {"type": "local", "private_key": PRIVATE_KEY},
        "chains": [
            {
                "chain_id": 31337,
                "rpc_url": "http://127.0.0.1:8545",
                "paymasters": [{"entry_point": EP_V07, "address": PAYMASTER, "contract": "verifying"}],
            }
        ],
    }


def write_yaml(tmp_path: Path, tree: dict[str, Any]) -> Path:
    path = tmp_path / "anode.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def config_error(tree: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        validate_settings(tree)
    return caught.value.message


# -- loading ----------------------------------------------------------------------------------


def test_yaml_file_alone_gives_settings_with_defaults(tmp_path: Path) -> None:
    settings = load_settings(write_yaml(tmp_path, base_tree()), environ={})
    assert settings.signer.private_key is not None
    assert settings.signer.private_key.get_secret_value() == PRIVATE_KEY
    assert settings.chains[0].chain_id == 31337
    assert settings.chains[0].paymasters[0].verification_gas_limit == 100_000
    assert settings.sponsorship.valid_for_seconds == 600
    assert settings.auth.api_keys == []
    assert settings.server.port == 8080


def test_env_overrides_nested_keys_and_list_items(tmp_path: Path) -> None:
    env = {
        "ANODE_SIGNER__PRIVATE_KEY": "0x" + "11" * 32,
        "ANODE_CHAINS__0__RPC_URL": "http://node.internal:8545",
        "ANODE_CHAINS__0__PAYMASTERS__0__POST_OP_GAS_LIMIT": "40000",
        "ANODE_SPONSORSHIP__VALID_FOR_SECONDS": "120",
        "ANODE_SERVER__PORT": "9000",
        "ANODE_LOG_LEVEL": "DEBUG",
        "HOME": "/ignored",  # not ours
    }
    settings = load_settings(write_yaml(tmp_path, base_tree()), environ=env)
    assert settings.signer.private_key is not None
    assert settings.signer.private_key.get_secret_value() == "0x" + "11" * 32
    assert settings.chains[0].rpc_url.get_secret_value() == "http://node.internal:8545"
    # the rest of the list item survives the override
    assert settings.chains[0].chain_id == 31337
    assert settings.chains[0].paymasters[0].address == PAYMASTER
    assert settings.chains[0].paymasters[0].post_op_gas_limit == 40_000
    assert settings.sponsorship.valid_for_seconds == 120
    assert settings.server.port == 9000
    assert settings.log_level == "DEBUG"


def test_env_adds_a_list_item_the_file_does_not_have(tmp_path: Path) -> None:
    env = {
        "ANODE_CHAINS__1__CHAIN_ID": "10",
        "ANODE_CHAINS__1__RPC_URL": "http://op.internal",
        "ANODE_CHAINS__1__PAYMASTERS__0__ENTRY_POINT": EP_V06,
        "ANODE_CHAINS__1__PAYMASTERS__0__ADDRESS": PAYMASTER,
        "ANODE_CHAINS__1__PAYMASTERS__0__CONTRACT": "singleton",
    }
    settings = load_settings(write_yaml(tmp_path, base_tree()), environ=env)
    assert [chain.chain_id for chain in settings.chains] == [31337, 10]
    assert settings.chains[1].paymasters[0].contract == "singleton"


def test_env_value_in_brackets_is_read_as_yaml(tmp_path: Path) -> None:
    env = {"ANODE_AUTH__API_KEYS": '["k1", "k2"]'}
    settings = load_settings(write_yaml(tmp_path, base_tree()), environ=env)
    assert [key.get_secret_value() for key in settings.auth.api_keys] == ["k1", "k2"]


def test_env_yaml_mapping_replaces_a_section(tmp_path: Path) -> None:
    env = {"ANODE_SPONSORSHIP": "{valid_for_seconds: 30, sponsor_name: Acme}"}
    settings = load_settings(write_yaml(tmp_path, base_tree()), environ=env)
    assert settings.sponsorship.valid_for_seconds == 30
    assert settings.sponsorship.sponsor_name == "Acme"


def test_environment_alone_is_a_complete_configuration() -> None:
    env = {
        "ANODE_SIGNER__PRIVATE_KEY": PRIVATE_KEY,
        "ANODE_CHAINS__0__CHAIN_ID": "1",
        "ANODE_CHAINS__0__RPC_URL": "http://mainnet",
        "ANODE_CHAINS__0__PAYMASTERS__0__ENTRY_POINT": EP_V07,
        "ANODE_CHAINS__0__PAYMASTERS__0__ADDRESS": PAYMASTER,
        "ANODE_CHAINS__0__PAYMASTERS__0__CONTRACT": "verifying",
        "ANODE_CONFIG": "/this/is/the/path/variable/not/a/setting",
        # the test suite's own variables reach servers it starts: they are not settings
        "ANODE_TEST_REQUIRE_ALL": "1",
        "ANODE_TEST_REDIS_URL": "redis://127.0.0.1:6379/15",
    }
    settings = load_settings(None, environ=env)
    assert settings.chains[0].chain_id == 1


def test_env_index_into_a_list_of_strings_is_a_config_error(tmp_path: Path) -> None:
    """A typo'd override (``API_KEYS__0__X``) must be reported, not crash start-up with a TypeError."""
    tree = base_tree() | {"auth": {"api_keys": ["k1"]}}
    with pytest.raises(ConfigError) as caught:
        load_settings(write_yaml(tmp_path, tree), environ={"ANODE_AUTH__API_KEYS__0__X": "1"})
    assert "api_keys" in caught.value.message


# -- file problems ----------------------------------------------------------------------------


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "nope.yaml", environ={})


def test_invalid_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("chains: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(path, environ={})


def test_yaml_that_is_not_a_mapping_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_settings(path, environ={})


@pytest.mark.parametrize(
    ("text", "where"),
    [
        # a colon inside an unquoted key value: "mapping values are not allowed here"
        (f"environment: development\nsigner:\n  private_key: {PRIVATE_KEY}: oops\n", "line 3, column"),
        # an unclosed quote: the problem is at the end, the quote opened on the key's line
        (f'signer:\n  private_key: "{PRIVATE_KEY}\nchains: []\n', "from line 2, column 16"),
        # the key written as a tag: PyYAML names the tag in its problem text
        (f"signer:\n  private_key: !{PRIVATE_KEY[2:]} 1\n", "line 2, column 16"),
        # a tab before the key
        (f"signer:\n  private_key:\t{PRIVATE_KEY}\n", "line 2, column 15"),
    ],
)
def test_a_yaml_error_on_a_secret_line_gives_its_position_not_the_secret(tmp_path: Path, text: str, where: str) -> None:
    """PyYAML quotes the offending line; the message must say where and what, never what is written there."""
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="not valid YAML") as caught:
        load_settings(path, environ={})
    message = caught.value.message
    assert where in message
    assert PRIVATE_KEY[2:10] not in message and "private_key" not in message


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"signer:\n  private_key: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 24\)"):
        load_settings(path, environ={})


@pytest.mark.parametrize(
    "value", [f"{{private_key: {PRIVATE_KEY}: x}}", f"[{PRIVATE_KEY}", f'{{type: "{PRIVATE_KEY}}}']
)
def test_an_env_override_that_is_not_valid_yaml_names_the_variable_not_the_value(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write_yaml(tmp_path, base_tree()), environ={"ANODE_SIGNER": value})
    message = caught.value.message
    assert message.startswith("environment variable ANODE_SIGNER starts with")
    assert "is not valid YAML" in message and "line 1, column" in message
    assert PRIVATE_KEY[2:10] not in message


def test_an_env_override_that_indexes_a_list_by_name_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="environment variable ANODE_CHAINS__MAIN__RPC_URL: 'main' must be a list"):
        load_settings(write_yaml(tmp_path, base_tree()), environ={"ANODE_CHAINS__MAIN__RPC_URL": "http://x"})


# -- validation names the field ---------------------------------------------------------------


def test_valid_for_seconds_above_a_day_is_refused() -> None:
    tree = base_tree() | {"sponsorship": {"valid_for_seconds": MAX_VALIDITY_SECONDS + 1}}
    message = config_error(tree)
    assert "sponsorship.valid_for_seconds" in message
    assert str(MAX_VALIDITY_SECONDS) in message
    tree["sponsorship"]["valid_for_seconds"] = MAX_VALIDITY_SECONDS
    assert validate_settings(tree).sponsorship.valid_for_seconds == MAX_VALIDITY_SECONDS


def test_duplicate_chain_ids_are_refused() -> None:
    tree = base_tree()
    tree["chains"].append(dict(tree["chains"][0]))
    message = config_error(tree)
    assert "chain_id" in message
    assert "once" in message


def test_keystore_without_any_password_source_is_refused(tmp_path: Path) -> None:
    tree = base_tree() | {"signer": {"type": "keystore", "keystore_path": str(tmp_path / "k.json")}}
    message = config_error(tree)
    assert message.count("\n") == 1, message  # one problem, one line
    assert "signer" in message
    assert "password" in message


def test_keystore_without_path_is_refused() -> None:
    message = config_error(base_tree() | {"signer": {"type": "keystore", "password": "x"}})
    assert "keystore_path" in message


def test_local_signer_without_key_is_refused() -> None:
    message = config_error(base_tree() | {"signer": {"type": "local"}})
    assert "signer" in message
    assert "private_key" in message


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda t: t["chains"][0]["paymasters"][0].update(address="0x1234"), "chains.0.paymasters.0.address"),
        (lambda t: t["chains"][0]["paymasters"][0].update(entry_point="nope"), "chains.0.paymasters.0.entry_point"),
        (lambda t: t["chains"][0]["paymasters"][0].update(contract="magic"), "chains.0.paymasters.0.contract"),
        (lambda t: t["chains"][0]["paymasters"][0].update(post_op_gas_limit=-1), "paymasters.0.post_op_gas_limit"),
        (lambda t: t["chains"][0].update(chain_id=0), "chains.0.chain_id"),
        (lambda t: t["chains"][0].update(paymasters=[]), "chains.0.paymasters"),
        (lambda t: t["chains"][0].pop("rpc_url"), "chains.0.rpc_url"),
        (lambda t: t.update(chains=[]), "chains"),
        (lambda t: t.update(server={"port": 70000}), "server.port"),
        (lambda t: t.update(environment="staging"), "environment"),
        (lambda t: t.update(unknown_setting=1), "unknown_setting"),
        (lambda t: t["signer"].update(type="hsm"), "signer.type"),
    ],
)
def test_validation_errors_name_the_field(change: Any, where: str) -> None:
    tree = base_tree()
    change(tree)
    assert where in config_error(tree)


def test_every_problem_is_listed() -> None:
    tree = base_tree() | {"sponsorship": {"valid_for_seconds": 0}, "server": {"port": -1}}
    message = config_error(tree)
    assert "sponsorship.valid_for_seconds" in message
    assert "server.port" in message


# -- secrets never print ----------------------------------------------------------------------


def _secret_settings(tmp_path: Path) -> Settings:
    tree = base_tree() | {"auth": {"api_keys": [API_KEY]}}
    return validate_settings(tree)


def test_private_key_and_api_keys_never_print(tmp_path: Path) -> None:
    settings = _secret_settings(tmp_path)
    for text in (repr(settings), str(settings), repr(settings.signer), str(settings.auth), repr(settings.model_dump())):
        assert PRIVATE_KEY not in text
        assert PRIVATE_KEY[2:] not in text
        assert API_KEY not in text
    # ...while the values stay usable
    assert settings.auth.api_keys[0].get_secret_value() == API_KEY


def test_keystore_password_never_prints(tmp_path: Path) -> None:
    tree = base_tree() | {
        "signer": {"type": "keystore", "keystore_path": str(tmp_path / "k.json"), "password": KEYSTORE_PASSWORD}
    }
    settings = validate_settings(tree)
    assert KEYSTORE_PASSWORD not in repr(settings)
    assert KEYSTORE_PASSWORD not in str(settings)


def test_secrets_stay_out_of_validation_errors() -> None:
    tree = base_tree() | {"auth": {"api_keys": [API_KEY]}, "sponsorship": {"valid_for_seconds": 10**9}}
    tree["signer"]["password"] = KEYSTORE_PASSWORD
    message = config_error(tree | {"chains": "not a list"})
    for secret in (PRIVATE_KEY, API_KEY, KEYSTORE_PASSWORD):
        assert secret not in message


def test_database_password_never_prints() -> None:
    """``database_url`` carries the database password; printing Settings must not show it."""
    tree = base_tree() | {"database_url": f"postgresql://anode:{DB_PASSWORD}@db.internal:5432/anode"}
    settings = validate_settings(tree)
    assert DB_PASSWORD not in repr(settings)
    assert DB_PASSWORD not in str(settings)
