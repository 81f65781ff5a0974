"""Backends outside aNode, found through the ``anode.signers`` entry points.

``signer: {type: custom, plugin: <entry point>}`` (the issue's form) and ``signer: {type: <entry
point>}``. A temporary ``anode_test_plugin-0.1.dist-info`` directory on ``sys.path`` (and on the
server's ``PYTHONPATH``) declares the entry points, exactly what installing a plugin distribution
leaves behind; no aNode file names the plugin. One names a module
(``plugin_demo = tests.signers.plugin_demo``), one a class in the standard ``module:attribute``
form (``plugin_class = tests.signers.plugin_demo:ClassDemoSigner``), and the rest are broken in
the ways a plugin can be.
"""

from __future__ import annotations

import os
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from anode.errors import ConfigError
from anode.signers.registry import BACKENDS, ENTRY_POINT_GROUP, PluginSettings, build_signer, signer_settings
from tests.signers.plugin_demo import ClassDemoSigner, DemoSigner
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
plugin_class = tests.signers.plugin_demo:ClassDemoSigner
plugin_broken = tests.signers.no_such_module
plugin_no_class = tests.signers.plugin_demo:NoSuchSigner
plugin_not_a_signer = anode.errors
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


class TestCustomTypeClassPluginSigner(TestCustomPluginSigner):
    """``type: custom`` naming an entry point ``module:Class``: the issue's form, end to end on chain."""

    backend = "plugin_class_demo"

    @pytest.fixture
    def signer_config(self, plugin_path: Path) -> dict[str, Any]:
        return {"type": "custom", "plugin": "plugin_class", "secret_key": SECRET_KEY, "label": "contract"}


async def test_type_custom_and_the_short_form_build_the_same_plugin(plugin_path: Path) -> None:
    fields = {"secret_key": SECRET_KEY, "label": "x"}
    forms = [
        ({"type": "custom", "plugin": "plugin_demo", **fields}, DemoSigner),
        ({"type": "plugin_demo", **fields}, DemoSigner),
        ({"type": "custom", "plugin": "plugin_class", **fields}, ClassDemoSigner),
        ({"type": "plugin_class", **fields}, ClassDemoSigner),
    ]
    addresses = set()
    for config, kind in forms:
        settings = signer_settings(config)
        assert settings.type == config["type"]
        signer = build_signer(settings)
        assert type(signer) is kind
        addresses.add(signer.address)
        await signer.aclose()
    assert len(addresses) == 1


def test_type_custom_settings_name_the_plugin_and_hide_its_secrets(plugin_path: Path) -> None:
    settings = signer_settings({"type": "custom", "plugin": "plugin_class", "secret_key": SECRET_KEY})
    assert repr(settings).endswith("(type='custom', plugin='plugin_class')")
    assert isinstance(settings, PluginSettings) and settings.plugin == "plugin_class"
    assert SECRET_KEY[2:] not in repr(settings) + str(settings) + settings.model_dump_json()


def test_type_custom_without_a_plugin_name_is_a_config_error(plugin_path: Path) -> None:
    for config in ({"type": "custom"}, {"type": "custom", "plugin": ""}, {"type": "custom", "plugin": 7}):
        with pytest.raises(ConfigError, match=r"signer\.plugin: type: custom needs plugin"):
            signer_settings(config)


def test_type_custom_with_an_unknown_plugin_lists_the_installed_ones(plugin_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"signer\.plugin: no signer plugin 'nope'") as caught:
        signer_settings({"type": "custom", "plugin": "nope"})
    assert "plugin_demo" in caught.value.message and "plugin_class" in caught.value.message
    with pytest.raises(ConfigError, match="no signer plugin 'local'"):  # built-ins are not plugins
        signer_settings({"type": "custom", "plugin": "local", "private_key": SECRET_KEY})


def test_type_custom_validates_the_plugins_own_settings(plugin_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"signer\.secret_key: Field required"):
        signer_settings({"type": "custom", "plugin": "plugin_class"})
    with pytest.raises(ConfigError, match=r"signer\.colour: Extra inputs are not permitted"):
        signer_settings({"type": "custom", "plugin": "plugin_class", "secret_key": SECRET_KEY, "colour": "blue"})


def test_broken_entry_points_are_config_errors(plugin_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot import tests\.signers\.plugin_demo:NoSuchSigner"):
        signer_settings({"type": "custom", "plugin": "plugin_no_class"})
    with pytest.raises(ConfigError, match=r"signer plugin plugin_not_a_signer \(anode\.errors\) has no Settings"):
        signer_settings({"type": "plugin_not_a_signer"})


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
    with pytest.raises(ConfigError, match="no signer plugin 'plugin_demo'"):
        build_signer(signer_settings({"type": "custom", "plugin": "plugin_demo", "secret_key": SECRET_KEY}))
