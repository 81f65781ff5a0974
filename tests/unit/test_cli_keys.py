"""``anode keys generate`` / ``anode keys address`` for a keystore, and the production guard for
in-memory keys, as an operator runs them (the real CLI, in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support.cli import CHAINS, anode


def test_generate_a_keystore_then_print_its_address(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    keystore = tmp_path / "key.json"
    signer = {"type": "keystore", "keystore_path": str(keystore), "password_env": "TEST_KEYSTORE_PW"}
    config.write_text(yaml.safe_dump({"signer": signer, "chains": CHAINS}))
    env = {"TEST_KEYSTORE_PW": "correct horse"}
    made = anode("keys", "generate", "--config", str(config), env=env)
    assert made.returncode == 0, made.stderr
    created = made.stdout.strip().rsplit(" ", 1)[-1]
    assert keystore.stat().st_mode & 0o777 == 0o600
    shown = anode("keys", "address", "--config", str(config), env=env)
    assert shown.stdout.strip() == created
    again = anode("keys", "generate", "--config", str(config), env=env)
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    wrong = anode("keys", "address", "--config", str(config), env={"TEST_KEYSTORE_PW": "wrong"})
    assert wrong.returncode == 2 and "wrong password" in wrong.stderr and "wrong" not in wrong.stdout


def test_generate_creates_the_keystore_owner_only_and_never_through_a_symlink(tmp_path: Path) -> None:
    """The file is created 0600 (whatever the umask), and only where nothing is: a dangling
    symlink planted at ``keystore_path`` is refused, not followed to write the key elsewhere."""
    config = tmp_path / "config.yaml"
    keystore = tmp_path / "key.json"
    elsewhere = tmp_path / "elsewhere.json"
    keystore.symlink_to(elsewhere)
    signer = {"type": "keystore", "keystore_path": str(keystore), "password_env": "TEST_KEYSTORE_PW"}
    config.write_text(yaml.safe_dump({"signer": signer, "chains": CHAINS}))
    env = {"TEST_KEYSTORE_PW": "correct horse"}
    refused = anode("keys", "generate", "--config", str(config), env=env)
    assert refused.returncode == 2, refused.stderr
    assert (
        refused.stderr
        == f"anode: {keystore} exists: refusing to overwrite a key (set signer.keystore_path to a new file)\n"
    )
    assert not elsewhere.exists()

    keystore.unlink()
    made = subprocess.run(
        [sys.executable, "-m", "anode.cli", "keys", "generate", "--config", str(config)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        preexec_fn=lambda: os.umask(0),
    )
    assert made.returncode == 0, made.stderr
    assert keystore.stat().st_mode & 0o777 == 0o600


def test_an_in_memory_key_is_refused_in_production_unless_allowed(tmp_path: Path) -> None:
    key = "0x" + "5a" * 32
    config = tmp_path / "config.yaml"
    tree = {"environment": "production", "signer": {"type": "local", "private_key": key}, "chains": CHAINS}
    config.write_text(yaml.safe_dump(tree))
    refused = anode("serve", "--config", str(config))
    assert refused.returncode == 2 and "refused in environment: production" in refused.stderr
    assert key[2:] not in refused.stderr
    tree["signer"]["allow_in_production"] = True
    config.write_text(yaml.safe_dump(tree))
    assert anode("keys", "address", "--config", str(config)).returncode == 0
