"""The ``.sol`` files of this directory, compiled with solc from ``node_modules`` (npm ``solc``)
by ``anode.devchain.solidity.compile_directory``.

The output (ABI and creation code of every contract) is cached in ``build/<digest>.json``, keyed
by the compiler version, the settings and every source: a second run reads the JSON and starts
no compiler. ``build/`` is git-ignored.
"""

from __future__ import annotations

import functools
from pathlib import Path

from anode.devchain.artifacts import Artifact
from anode.devchain.solidity import compile_directory

HERE = Path(__file__).resolve().parent


@functools.cache
def compiled() -> dict[str, Artifact]:
    """Every contract of ``tests/contracts/*.sol`` by name."""
    return compile_directory(HERE, HERE / "build")
