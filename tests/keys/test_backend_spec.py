"""``anode keys rotate --new …``: a backend given inline or as a file, and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from anode.custody_cli import backend_spec
from anode.errors import ConfigError


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("type=local", r"^signer type=local: private_key: Field required$"),
        ("type=keystore,keystore_path=/k.json", r"^signer type=keystore: a keystore needs password, password_env"),
        ("type=nonesuch", r"unknown signer type 'nonesuch' \(known: .*local"),
        ("type=local,private_key=0x01,name=bad name", r"^signer type=local: name: String should match pattern"),
    ],
)
def test_a_bad_inline_spec_names_what_to_fix(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        backend_spec(spec)
    assert "pydantic.dev" not in caught.value.message and "0x01" not in caught.value.message


def test_a_spec_file_holding_a_signer_section_is_read(tmp_path: Path) -> None:
    path = tmp_path / "new.yaml"
    path.write_text("signer:\n  type: local\n  private_key: '0x" + "42" * 32 + "'\n  name: next\n")
    entry = backend_spec(str(path))
    assert entry.signer.type == "local" and entry.name == "next"
    path.write_text("signer: [unclosed\n")
    with pytest.raises(ConfigError, match="is not YAML"):
        backend_spec(str(path))
