"""A SoftHSM2 token in a temporary directory (Debian's ``softhsm2``), for the PKCS#11 tests.

SoftHSM2 reads ``SOFTHSM2_CONF`` when the library is initialised, and a process loads a PKCS#11
library once: so a test session has one token directory (the session fixture ``softhsm`` in
``tests/signers/conftest.py``), and a library loaded before it was set up is re-initialised to
see it. ``env`` points another process (``anode serve``) at the same token.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
TOKEN = "anode-test"
PIN = "735190246813"
SO_PIN = "so-pin-4711-0815"


def available() -> str | None:
    """Why SoftHSM2 tests cannot run here, or None."""
    try:
        import pkcs11  # noqa: F401
    except ImportError:
        return "python-pkcs11 is not installed"
    if not MODULE.exists() or shutil.which("softhsm2-util") is None:
        return "SoftHSM2 is not installed (apt-get install softhsm2)"
    return None


@dataclass(frozen=True)
class SoftHsm:
    module: Path
    token_label: str
    pin: str
    env: dict[str, str]

    def signer_config(self, key_label: str, **extra: Any) -> dict[str, Any]:
        """A ``signer: {type: pkcs11}`` mapping for a key on this token."""
        fields = {"module": str(self.module), "token_label": self.token_label, "pin": self.pin}
        return {"type": "pkcs11", **fields, "key_label": key_label, **extra}


@contextmanager
def softhsm_token(root: Path) -> Iterator[SoftHsm]:
    """Initialise one token under ``root`` and point this process at it while the block runs."""
    (root / "tokens").mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {root / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SOFTHSM2_CONF", str(conf))
        command = ["softhsm2-util", "--init-token", "--free", "--label", TOKEN, "--pin", PIN, "--so-pin", SO_PIN]
        subprocess.run(command, check=True, capture_output=True)
        loaded = sys.modules.get("pkcs11")
        if loaded is not None and str(MODULE) in getattr(loaded, "_loaded", {}):
            loaded.lib(str(MODULE)).reinitialize()
        yield SoftHsm(MODULE, TOKEN, PIN, {"SOFTHSM2_CONF": str(conf)})
