"""Settings an operator can get wrong, and what aNode says: nothing accepted and then ignored,
unquoted hex, unknown environment variables, secrets that never print, commands that need only
part of a config (or say how to give one)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from anode.cli import main
from anode.config import HEX_NEEDS_QUOTES, load_settings, load_signer_settings, validate_settings
from anode.errors import ConfigError
from anode.keyserver.config import load_keyserver_settings
from anode.wiring import build, refuse_ineffective

EP_V07 = "0x0000000071727De22E5E9d8BAf0edAc6f37da032"
PAYMASTER = "0x" + "ab" * 20
PRIVATE_KEY = "0x" + "4c" * 32
SIGNER_ADDRESS = "0xdB00079cad3e665853Bf766eFe26F4C38cdbdCDA"  # of PRIVATE_KEY
POLICY = {"id": "budget", "name": "a budget", "type": "global", "rate_limits": [{"type": "request", "limit": 10}]}


def base_tree(tmp_path: Path | None = None) -> dict[str, Any]:
    tree: dict[str, Any] = {
        "signer": {"type": "local", "private_key": PRIVATE_KEY},
        "chains": [
            {
                "chain_id": 31337,
                "rpc_url": "http://127.0.0.1:1",
                "paymasters": [{"entry_point": EP_V07, "address": PAYMASTER, "contract": "verifying"}],
            }
        ],
    }
    if tmp_path is not None:
        tree["database_url"] = f"sqlite:///{tmp_path / 'anode.db'}"
    return tree


def modules(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"modules": [*entries, {"name": "paymaster_signer"}]}


def refusal(tree: dict[str, Any], workers: int | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        refuse_ineffective(validate_settings(tree), workers=workers)
    return caught.value.message


@pytest.fixture
def no_anode_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ANODE_") and not name.startswith("ANODE_TEST_"):
            monkeypatch.delenv(name)


# -- accepted, then without effect: refused ---------------------------------------------------


def test_policies_without_the_policy_engine_refuse_to_start_naming_it(tmp_path: Path) -> None:
    tree = {**base_tree(tmp_path), "policies": [POLICY]}  # the default pipeline: the signer alone
    with pytest.raises(ConfigError) as caught:
        build(validate_settings(tree))
    assert "\n" not in caught.value.message
    assert "policies:" in caught.value.message and "policy_engine" in caught.value.message


def test_policies_with_a_disabled_policy_engine_are_refused() -> None:
    tree = {**base_tree(), "policies": [POLICY], "pipeline": modules({"name": "policy_engine", "enabled": False})}
    assert "no enabled policy_engine" in refusal(tree)


def test_policies_with_the_policy_engine_are_accepted() -> None:
    refuse_ineffective(
        validate_settings({**base_tree(), "policies": [POLICY], "pipeline": modules({"name": "policy_engine"})})
    )


@pytest.mark.parametrize("workers_in", ["settings", "command line"])
def test_a_memory_limiter_with_several_workers_is_refused(workers_in: str) -> None:
    tree = {**base_tree(), "pipeline": modules({"name": "policy_engine", "config": {"limiter": "memory"}})}
    if workers_in == "settings":
        tree["server"] = {"workers": 2}
        message = refusal(tree)
    else:
        message = refusal(tree, workers=3)
    assert message.startswith("policy_engine.config.limiter is memory, but ")
    assert "use limiter: sql or redis, or one worker" in message


def test_a_memory_limiter_with_one_worker_is_accepted() -> None:
    tree = {**base_tree(), "pipeline": modules({"name": "policy_engine", "config": {"limiter": "memory"}})}
    refuse_ineffective(validate_settings(tree))


def test_redis_url_with_nothing_that_uses_redis_is_refused() -> None:
    assert refusal({**base_tree(), "redis_url": "redis://127.0.0.1:6379/0"}).startswith("redis_url is set, but no ")


def test_a_module_listed_twice_is_refused() -> None:
    tree = {**base_tree(), "pipeline": modules({"name": "policy_engine"}, {"name": "policy_engine", "enabled": False})}
    assert refusal(tree) == "pipeline.modules[1]: policy_engine is listed twice (list each module once)"


@pytest.mark.parametrize("limiter", ["sql", "memory", "auto"])
def test_a_redis_prefix_for_a_limiter_without_redis_is_refused(limiter: str) -> None:
    engine = {"name": "policy_engine", "config": {"limiter": limiter, "redis_prefix": "mine:"}}
    assert refusal({**base_tree(), "pipeline": modules(engine)}).startswith("policy_engine.config.redis_prefix is set")


def test_an_unknown_log_level_is_a_config_error_not_a_traceback_later() -> None:
    with pytest.raises(ConfigError, match="log_level"):
        validate_settings({**base_tree(), "log_level": "LOUD"})
    assert validate_settings({**base_tree(), "log_level": "debug"}).log_level == "DEBUG"


# -- unquoted hex -------------------------------------------------------------------------------

HEX_FILE = f"""\
signer: {{type: local, private_key: {PRIVATE_KEY}}}
chains:
  - chain_id: 31337
    rpc_url: http://127.0.0.1:1
    paymasters: [{{entry_point: {EP_V07}, address: {PAYMASTER}, contract: verifying}}]
"""


def test_unquoted_hex_keys_and_addresses_say_to_quote_them(tmp_path: Path) -> None:
    path = tmp_path / "anode.yaml"
    path.write_text(HEX_FILE)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    lines = caught.value.message.splitlines()[1:]
    assert lines == [
        f"  signer.private_key: {HEX_NEEDS_QUOTES}",
        f"  chains.0.paymasters.0.entry_point: {HEX_NEEDS_QUOTES}",
        f"  chains.0.paymasters.0.address: {HEX_NEEDS_QUOTES}",
    ]
    assert PRIVATE_KEY[2:12] not in caught.value.message


def test_unquoted_hex_in_a_managed_signer_says_to_quote_it(tmp_path: Path) -> None:
    path = tmp_path / "anode.yaml"
    path.write_text(HEX_FILE.replace("signer: {type", "signer:\n  primary: {type"))
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert f"  signer.primary.private_key: {HEX_NEEDS_QUOTES}" in caught.value.message.splitlines()


def test_unquoted_hex_in_a_module_config_says_to_quote_it(tmp_path: Path) -> None:
    path = tmp_path / "anode.yaml"
    contracts = "{contracts: [{address: 0x" + "11" * 20 + ", type: identity}], required_types: [identity]}"
    path.write_text(
        HEX_FILE.replace(f"private_key: {PRIVATE_KEY}", f"private_key: '{PRIVATE_KEY}'").replace(
            f"entry_point: {EP_V07}, address: {PAYMASTER}", f"entry_point: '{EP_V07}', address: '{PAYMASTER}'"
        )
        + f"database_url: sqlite:///{tmp_path / 'anode.db'}\n"
        + f"pipeline:\n  modules:\n    - {{name: sbt_validator, config: {contracts}}}\n"
    )
    with pytest.raises(ConfigError) as caught:
        build(load_settings(path, environ={}))
    assert caught.value.message == (
        f"pipeline.modules[0] (sbt_validator).config.contracts.0.address: {HEX_NEEDS_QUOTES}"
    )


def test_hex_numbers_where_numbers_belong_still_work(tmp_path: Path) -> None:
    path = tmp_path / "anode.yaml"
    path.write_text(yaml.safe_dump(base_tree()).replace("chain_id: 31337", "chain_id: 0x7a69"))
    assert load_settings(path, environ={}).chains[0].chain_id == 31337


def test_the_key_server_reads_its_file_with_the_same_loader(tmp_path: Path) -> None:
    """One loader for both: the key server's file gets the same hex advice."""
    path = tmp_path / "keyserver.yaml"
    path.write_text(
        f"keys:\n  - id: paymaster\n    signer: {{type: local, private_key: {PRIVATE_KEY}}}\n"
        "    allowed_callers: [anode]\n"
        "tokens: [{id: anode, token: a-token-of-some-length}]\n"
        f"audit_log: {tmp_path / 'audit.jsonl'}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_keyserver_settings(path)
    assert caught.value.message.splitlines() == [
        "invalid key server configuration:",
        f"  keys.0.signer.private_key: {HEX_NEEDS_QUOTES}",
    ]


# -- ANODE_* environment variables ---------------------------------------------------------------


def test_a_variable_that_names_no_setting_is_ignored_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    env = {f"ANODE_{k.upper()}": v for k, v in {"bin": "/opt/anode/bin", "keystore_password": "x"}.items()}
    tree = base_tree()
    with caplog.at_level(logging.DEBUG, logger="anode"):
        settings = validate_settings(tree)
        from anode.config import apply_env_overrides

        assert apply_env_overrides(tree, env) == base_tree()
    assert settings.server.port == 8080
    logged = [r.getMessage() for r in caplog.records if r.name == "anode.config"]
    assert "environment variable ANODE_BIN names no aNode setting: ignored" in logged
    from anode.config import ignored_variables

    assert ignored_variables({**env, "ANODE_SERVER__PORT": "1", "ANODE_CONFIG": "x"}) == list(env)


def test_a_variable_naming_an_unknown_setting_of_a_known_section_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "anode.yaml"
    path.write_text(yaml.safe_dump(base_tree()))
    cases = {
        "ANODE_SERVER__PROT": "environment variable ANODE_SERVER__PROT: server has no setting 'prot'",
        "ANODE_CHAINS__0__RPC": "environment variable ANODE_CHAINS__0__RPC: chains.0 has no setting 'rpc'",
        "ANODE_AUTH__API_KEY": "environment variable ANODE_AUTH__API_KEY: auth has no setting 'api_key'",
    }
    for name, message in cases.items():
        with pytest.raises(ConfigError) as caught:
            load_settings(path, environ={name: "1"})
        assert caught.value.message == message


def test_an_invalid_value_from_a_variable_names_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "anode.yaml"
    path.write_text(yaml.safe_dump(base_tree()))
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={"ANODE_SERVER__PORT": "eighty"})
    assert "  environment variable ANODE_SERVER__PORT: server.port: " in caught.value.message


# -- secrets never print ------------------------------------------------------------------------

SECRETS = {
    "private_key": "0x" + "5e" * 32,
    "mnemonic": "legal winner thank year wave sausage worth useful legal winner thank yellow",
    "passphrase": "mnemonic-passphrase-must-not-leak",
    "remote_token": "remote-token-must-not-leak",
    "vault_token": "vault-token-must-not-leak",
    "vault_secret_id": "vault-secret-id-must-not-leak",
    "aws_secret": "aws-secret-access-key-must-not-leak",
    "aws_session": "aws-session-token-must-not-leak",
    "pin": "hsm-pin-must-not-leak",
    "cloudflare": "cloudflare-token-must-not-leak",
    "keystore_password": "keystore-password-must-not-leak",
    "api_key": "project-api-key-must-not-leak",
    "admin_key": "admin-api-key-must-not-leak",
    "webhook": "webhook-secret-must-not-leak",
    "webhook_url_token": "webhook-url-token-must-not-leak",
    "db_password": "db-password-must-not-leak",
    "redis_password": "redis-password-must-not-leak",
    "node_key": "node-provider-key-must-not-leak",
    "bundler_key": "bundler-provider-key-must-not-leak",
    "module_token": "module-token-must-not-leak",
    "remote_url_password": "remote-url-password-must-not-leak",
    "vault_url_password": "vault-url-password-must-not-leak",
}


def every_secret_tree(tmp_path: Path) -> dict[str, Any]:
    keystore = tmp_path / "key.json"
    keystore.write_text("{}")
    s = SECRETS
    vault = "http://127.0.0.1:1"
    tree = base_tree()
    tree["signer"] = {
        "primary": {"type": "local", "private_key": s["private_key"]},
        "backups": [
            {"type": "mnemonic", "mnemonic": s["mnemonic"], "passphrase": s["passphrase"]},
            {"type": "remote", "url": f"http://ks:{s['remote_url_password']}@127.0.0.1:1", "token": s["remote_token"],
             "key_id": "k"},
            {"type": "hashicorp_vault", "address": f"http://v:{s['vault_url_password']}@127.0.0.1:1",
             "token": s["vault_token"], "path": "anode/key"},
            {"type": "hashicorp_vault", "address": vault, "role_id": "r", "secret_id": s["vault_secret_id"],
             "path": "anode/key"},
            {"type": "aws_kms", "key_id": "alias/anode", "region": "eu-west-1", "access_key_id": "AKIAEXAMPLE",
             "secret_access_key": s["aws_secret"], "session_token": s["aws_session"]},
            {"type": "pkcs11", "module": "/nonexistent/libsofthsm2.so", "token_label": "t", "pin": s["pin"],
             "key_label": "k"},
            {"type": "cloudflare_secrets", "url": "https://signer.example", "token": s["cloudflare"]},
            {"type": "keystore", "keystore_path": str(keystore), "password": s["keystore_password"]},
        ],
    }  # fmt: skip
    tree["auth"] = {"api_keys": [s["api_key"]], "admin_keys": [s["admin_key"]]}
    tree["database_url"] = f"postgresql://anode:{s['db_password']}@127.0.0.1/test"
    tree["redis_url"] = f"redis://:{s['redis_password']}@127.0.0.1:6379/0"
    tree["chains"][0]["rpc_url"] = f"https://eth.example/v2/{s['node_key']}"
    tree["chains"][0]["bundler_url"] = f"https://bundler.example/rpc?apikey={s['bundler_key']}"
    tree["pipeline"] = modules({"name": "policy_engine", "config": {"api_token": s["module_token"]}})
    hook = {"url": f"https://hooks.example/check?token={s['webhook_url_token']}", "secret": s["webhook"]}
    tree["policies"] = [{**POLICY, "type": "custom", "webhook": hook}]
    return tree


def test_no_secret_prints_in_repr_str_or_json(tmp_path: Path) -> None:
    settings = validate_settings(every_secret_tree(tmp_path))
    for shown in (repr(settings), str(settings), settings.model_dump_json(), f"{settings.database_url}"):
        for name, secret in SECRETS.items():
            assert secret not in shown, name
            assert secret.split()[0] not in shown or name != "mnemonic", name
        assert SECRETS["private_key"][2:] not in shown
    assert settings.database_url.get_secret_value() == f"postgresql://anode:{SECRETS['db_password']}@127.0.0.1/test"
    # masked, not hidden: the operator still sees where things point
    assert "SecretUrl('postgresql://anode:***@127.0.0.1/test')" in repr(settings)
    assert "redis://:***@127.0.0.1:6379/0" in settings.model_dump_json()
    assert "https://eth.example/…" in repr(settings)


def test_a_seeded_webhook_secret_is_a_secret_type_the_policy_engine_accepts(tmp_path: Path) -> None:
    from pydantic import SecretStr

    from anode.policy.models import Policy

    settings = validate_settings(every_secret_tree(tmp_path))
    seeded = settings.policies[0]
    assert isinstance(seeded["webhook"]["secret"], SecretStr)
    policy = Policy.model_validate(seeded)
    assert policy.webhook is not None and policy.webhook.secret.get_secret_value() == SECRETS["webhook"]


def test_a_signer_backends_own_settings_hide_credentials_in_its_url() -> None:
    from anode.signers import remote, vault

    password = SECRETS["remote_url_password"]
    url = f"https://ks:{password}@keys.example:8443/tenant-{password}?key={password}"
    parsed = [
        remote.Settings(type="remote", url=url, token=SECRETS["remote_token"], key_id="k"),
        vault.Settings(type="hashicorp_vault", address=url, token=SECRETS["vault_token"], path="anode/key"),
    ]
    for settings in parsed:
        for shown in (repr(settings), str(settings), settings.model_dump_json()):
            assert password not in shown and SECRETS["remote_token"] not in shown
        assert "https://keys.example:8443" in settings.model_dump_json()  # where it points stays visible
    assert parsed[0].url == url  # the code itself gets the URL as written


def test_a_malformed_database_url_error_does_not_quote_its_password() -> None:
    from anode.store.database import create_engine

    with pytest.raises(ConfigError, match="not a SQLAlchemy URL") as raised:
        create_engine(f"postgres ql://anode:{SECRETS['db_password']}@127.0.0.1/test")
    assert SECRETS["db_password"] not in raised.value.message


# -- commands that need (part of) a config --------------------------------------------------------


def test_keys_address_needs_only_the_signer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "signer.yaml"
    path.write_text(yaml.safe_dump({"signer": {"type": "local", "private_key": PRIVATE_KEY}}))
    assert main(["keys", "address", "--config", str(path)]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip() == SIGNER_ADDRESS
    assert load_signer_settings(path, environ={}).type == "local"  # type: ignore[union-attr]


def test_keys_generate_needs_only_the_signer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GENERATED_KEY_PASSWORD", "a-password-for-the-new-keystore")
    keystore = tmp_path / "new-key.json"
    signer = {"type": "keystore", "keystore_path": str(keystore), "password_env": "GENERATED_KEY_PASSWORD"}
    path = tmp_path / "signer.yaml"
    path.write_text(yaml.safe_dump({"signer": signer}))
    assert main(["keys", "generate", "--config", str(path)]) == 0, capsys.readouterr().err
    assert keystore.exists() and f"created keystore {keystore}: 0x" in capsys.readouterr().out


def test_keys_address_without_a_signer_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "signer.yaml"
    path.write_text(yaml.safe_dump({"chains": []}))
    assert main(["keys", "address", "--config", str(path)]) == 2
    assert capsys.readouterr().err == "anode: invalid configuration:\n  signer: Field required\n"


@pytest.mark.parametrize(
    "command", [["ops", "list"], ["keys", "list"], ["keys", "address"], ["db", "upgrade"], ["audit", "verify"]]
)
@pytest.mark.usefixtures("no_anode_environment")
def test_a_command_without_a_config_says_pass_config(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(command) == 2
    err = capsys.readouterr().err
    assert (
        err == f"anode: anode {' '.join(command)} needs a configuration: pass --config FILE (see config.example.yaml)\n"
    )


@pytest.mark.usefixtures("no_anode_environment")
def test_serve_without_a_config_says_pass_config_even_with_unrelated_anode_variables(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ANODE_BIN", "/opt/anode/bin")
    assert main(["serve"]) == 2
    assert "pass --config FILE" in capsys.readouterr().err


# -- layering -------------------------------------------------------------------------------------


def test_the_sandbox_and_the_worker_app_do_not_import_the_cli() -> None:
    code = "import sys, anode.sandbox, anode.api.asgi, anode.serving; print('anode.cli' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
