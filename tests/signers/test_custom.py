"""``signer: {type: <name>}`` for a backend outside aNode, found through the ``anode.signers`` entry points.

A temporary ``anode_test_plugin-0.1.dist-info`` directory on ``sys.path`` (and on the server's
``PYTHONPATH``) declares ``plugin_demo = tests.signers.plugin_demo``, exactly what installing a
plugin distribution leaves behind; no aNode file names the plugin.
"""

from __future__ import annotations

import os
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from anode.errors import ConfigError
from anode.signers.registry import BACKENDS, ENTRY_POINT_GROUP, build_signer, signer_settings
from tests.support.signer_contract import SignerContract

REPO = Path(__file__).resolve().parents[2]
SECRET_KEY = "0x" + "7e57ab1e" * 8


def write_distribution(root: Path, name: str, entry_points_txt: str) -> None:
    dist_info = root / f"{name}-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(entry_points_txt)


ENTRY_POINTS = f"""[{ENTRY_POINT_GROUP}]
plugin_demo = tests.signers.plugin_demo
plugin_broken = tests.signers.no_such_module
"""


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory holding the plugin's dist-info, on ``sys.path`` for one test."""
    write_distribution(tmp_path, "anode_test_plugin", ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


class TestCustomPluginSigner(SignerContract):
    backend = "plugin_demo"

    @pytest.fixture
    def signer_config(self, plugin_path: Path) -> dict[str, Any]:
        return {"type": "plugin_demo", "secret_key": SECRET_KEY, "label": "contract"}

    @pytest.fixture
    def signer_env(self, plugin_path: Path) -> dict[str, str]:
        inherited = [os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []
        return {"PYTHONPATH": os.pathsep.join([str(plugin_path), str(REPO), *inherited])}

    @pytest.fixture
    def signer_secrets(self) -> list[str]:
        return [SECRET_KEY[2:]]


def test_the_plugin_is_an_entry_point_not_a_built_in(plugin_path: Path) -> None:
    assert "plugin_demo" not in BACKENDS
    names = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert names["plugin_demo"] == "tests.signers.plugin_demo"


def test_an_unknown_type_lists_built_ins_and_plugins(plugin_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown signer type 'nope'") as caught:
        signer_settings({"type": "nope"})
    for name in ("local", "keystore", "mnemonic", "aws_kms", "pkcs11", "plugin_demo"):
        assert name in caught.value.message


def test_a_plugin_that_cannot_be_imported_is_a_config_error(plugin_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"signer\.type plugin_broken: cannot import tests\.signers\.no_such_module"):
        signer_settings({"type": "plugin_broken"})


def test_the_plugin_validates_its_own_settings(plugin_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"signer\.secret_key: Field required"):
        signer_settings({"type": "plugin_demo"})
    with pytest.raises(ConfigError, match=r"signer\.colour: Extra inputs are not permitted"):
        signer_settings({"type": "plugin_demo", "secret_key": SECRET_KEY, "colour": "blue"})


async def test_without_the_distribution_the_plugin_is_unknown() -> None:
    """Outside ``plugin_path`` the name resolves to nothing: discovery is what registers it."""
    assert not any(ep.name == "plugin_demo" for ep in entry_points(group=ENTRY_POINT_GROUP))
    with pytest.raises(ConfigError, match="unknown signer type 'plugin_demo'"):
        build_signer(signer_settings({"type": "plugin_demo", "secret_key": SECRET_KEY}))
