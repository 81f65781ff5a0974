"""Compiled contracts for the local dev chain, read from the npm packages in ``node_modules``.

``npm install`` (in the repository root) fetches them:

- ``aa-contracts-v06|v07|v08`` (``@account-abstraction/contracts`` 0.6.0 / 0.7.0 / 0.8.0):
  EntryPoint, SimpleAccountFactory, SimpleAccount and, for 0.6 / 0.7 only, VerifyingPaymaster.
- ``@pimlico/mock-paymaster``: Pimlico's SingletonPaymaster V6 / V7 / V8 creation code, kept as
  hex string literals in ``constants.ts``. We take only the creation code and ABI-encode the
  constructor ``(address entryPoint, address owner, address manager, address[] signers)``
  ourselves, so the signer list is ours.
- ``@foundry-rs/anvil``: the ``anvil`` binary.

The directory is ``$ANODE_NODE_MODULES`` when set, else the first ``node_modules`` found walking up
from this package and from the current directory.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_abi.abi import encode

#: EntryPoint versions the dev chain deploys, mapped to their npm alias.
PACKAGES: dict[str, str] = {
    "v0.6": "aa-contracts-v06",
    "v0.7": "aa-contracts-v07",
    "v0.8": "aa-contracts-v08",
}
VERSIONS: tuple[str, ...] = tuple(PACKAGES)

_SINGLETON_FUNCTIONS = {"v0.6": "06", "v0.7": "07", "v0.8": "08"}
_INSTALL_HINT = "run `npm install` in the aNode repository root (or set ANODE_NODE_MODULES)"


class DevChainSetupError(RuntimeError):
    """The local chain tooling (node_modules, anvil, artifacts) is missing or unusable."""


@dataclass(frozen=True, slots=True)
class Artifact:
    """One compiled contract: its ABI, creation code and runtime code."""

    name: str
    abi: tuple[dict[str, Any], ...]
    bytecode: bytes
    deployed_bytecode: bytes

    def creation_code(self, arg_types: Sequence[str] = (), args: Sequence[Any] = ()) -> bytes:
        """Creation code followed by the ABI-encoded constructor arguments."""
        return self.bytecode + (encode(list(arg_types), list(args)) if arg_types else b"")


def find_node_modules() -> Path:
    """The ``node_modules`` directory holding the contract packages; raises if there is none."""
    env = os.environ.get("ANODE_NODE_MODULES")
    if env:
        path = Path(env)
        if not path.is_dir():
            raise DevChainSetupError(f"ANODE_NODE_MODULES={env} is not a directory; {_INSTALL_HINT}")
        return path
    starts = [Path(__file__).resolve().parent, Path.cwd().resolve()]
    for start in starts:
        for directory in (start, *start.parents):
            candidate = directory / "node_modules"
            if (candidate / PACKAGES["v0.7"]).is_dir():
                return candidate
    raise DevChainSetupError(f"no node_modules with the ERC-4337 contracts found; {_INSTALL_HINT}")


def node_modules_available() -> bool:
    """Whether :func:`find_node_modules` would succeed (for skipping tests cleanly)."""
    try:
        find_node_modules()
    except DevChainSetupError:
        return False
    return True


def anvil_binary() -> Path:
    """The native anvil executable (not the Node wrapper, so stopping it leaves no orphan)."""
    env = os.environ.get("ANODE_ANVIL")
    if env:
        return Path(env)
    root = find_node_modules()
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    system = platform.system().lower()
    native = root / "@foundry-rs" / f"anvil-{system}-{arch}" / "bin" / "anvil"
    if native.is_file():
        return native
    wrapper = root / ".bin" / "anvil"
    if wrapper.exists():
        return wrapper
    raise DevChainSetupError(f"anvil not found under {root}; {_INSTALL_HINT}")


@functools.cache
def load_artifact(version: str, name: str) -> Artifact:
    """A contract from ``@account-abstraction/contracts`` for an EntryPoint version ("v0.7")."""
    if version not in PACKAGES:
        raise DevChainSetupError(f"unknown EntryPoint version {version!r}; expected one of {VERSIONS}")
    path = find_node_modules() / PACKAGES[version] / "artifacts" / f"{name}.json"
    if not path.is_file():
        raise DevChainSetupError(f"artifact {name} for EntryPoint {version} not found at {path}; {_INSTALL_HINT}")
    data = json.loads(path.read_text())
    return Artifact(
        name=name,
        abi=tuple(data["abi"]),
        bytecode=bytes.fromhex(data["bytecode"].removeprefix("0x")),
        deployed_bytecode=bytes.fromhex(data["deployedBytecode"].removeprefix("0x")),
    )


def has_artifact(version: str, name: str) -> bool:
    """Whether the package for ``version`` ships ``name`` (0.8.0 has no VerifyingPaymaster)."""
    return (find_node_modules() / PACKAGES[version] / "artifacts" / f"{name}.json").is_file()


@functools.cache
def singleton_paymaster_bytecode(version: str) -> bytes:
    """Pimlico SingletonPaymaster creation code for ``version``, without constructor arguments."""
    if version not in _SINGLETON_FUNCTIONS:
        raise DevChainSetupError(f"unknown EntryPoint version {version!r}; expected one of {VERSIONS}")
    path = find_node_modules() / "@pimlico" / "mock-paymaster" / "constants.ts"
    if not path.is_file():
        raise DevChainSetupError(f"{path} not found; {_INSTALL_HINT}")
    suffix = _SINGLETON_FUNCTIONS[version]
    pattern = rf'getSingletonPaymaster{suffix}InitCode\b.*?concat\(\[\s*"0x([0-9a-fA-F]+)"'
    match = re.search(pattern, path.read_text(), re.DOTALL)
    if match is None:
        raise DevChainSetupError(f"no SingletonPaymaster{suffix} init code found in {path}")
    return bytes.fromhex(match.group(1))


def singleton_paymaster_init_code(
    version: str, entry_point: str, owner: str, manager: str, signers: Sequence[str]
) -> bytes:
    """SingletonPaymaster creation code with its constructor arguments encoded."""
    args = (entry_point, owner, manager, list(signers))
    return singleton_paymaster_bytecode(version) + encode(["address", "address", "address", "address[]"], args)
