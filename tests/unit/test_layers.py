"""No module reaches back up the request's line (docs/architecture.md):

    cli, custody_cli, deposit_cli          the command line
    sandbox, keyserver, kms, devchain      beside the request path
    api, wiring, serving                   HTTP in and out; the composition root; serving it
    sponsorship(_erc20), custody, watch,   the orchestration of the whole path; key rotation; the
    passkey                                EntryPoint follower; the passkey flow and its KMS client
    pipeline                               checks and policies, in order
    policy, chain, pricing                 limits and policies; node reads; token prices
    config                                 settings: it composes each signer backend's Settings
                                           and knows the paymaster families by name
    paymasters                             byte layouts and getHash
    signers                                keys
    store                                  repositories
    userop, errors, metrics, outbound,     shared by all
    redact, progress

A module may import its own package, its layer's other packages and anything below; never a
layer above. Every ``import`` counts: at module level, inside functions, under
``TYPE_CHECKING`` (a type is a dependency too). A failure lists every offending file:line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import anode

PACKAGE = Path(anode.__file__).parent

LAYERS: list[set[str]] = [
    {"cli", "custody_cli", "deposit_cli", "policy_cli"},
    {"sandbox", "keyserver", "kms", "devchain"},
    {"api", "wiring", "serving"},
    {"sponsorship", "sponsorship_erc20", "custody", "watch", "passkey"},
    {"pipeline"},
    {"policy", "chain", "pricing"},
    {"config"},
    {"paymasters"},
    {"signers"},
    {"store"},
    {"userop", "errors", "metrics", "outbound", "redact", "progress", "__init__"},
]
RANK = {name: len(LAYERS) - i for i, layer in enumerate(LAYERS) for name in layer}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top(module: str) -> str:
    """``anode.pipeline.modules.sbt`` → ``pipeline``; ``anode`` → ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import of ``anode`` in the file, relative ones resolved."""
    here = module_name(path, root).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.append((node.lineno, module))
    return [(line, module) for line, module in found if module == "anode" or module.startswith("anode.")]


def violations(root: Path = PACKAGE) -> list[str]:
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        source = top(module_name(path, root))
        if source not in RANK:
            found.append(
                f"{path.relative_to(root.parent)}:1: anode.{source} is in no layer of tests/unit/test_layers.py"
            )
            continue
        for line, module in imports(path, root):
            target = top(module)
            if target == source:
                continue
            if target not in RANK:
                found.append(f"{path.relative_to(root.parent)}:{line}: imports {module}, which is in no layer")
            elif RANK[target] > RANK[source]:
                found.append(f"{path.relative_to(root.parent)}:{line}: anode.{source} imports {module} (a layer above)")
    return found


def test_no_module_reaches_back_up_the_line() -> None:
    found = violations()
    assert not found, "imports against the layers:\n" + "\n".join(found)


def test_the_check_sees_every_kind_of_import(tmp_path: Path) -> None:
    """A package of its own with one upward import of each kind: each is reported with its line."""
    root = tmp_path / "anode"
    (root / "store").mkdir(parents=True)
    (root / "store" / "__init__.py").write_text("")
    (root / "store" / "bad.py").write_text(
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "import anode.pipeline.runner\n"  # 3
        "from anode.api import app\n"  # 4
        "from anode.errors import AnodeError\n"  # fine: below
        "from anode.store import ledger\n"  # fine: its own package
        "from ..policy import tables\n"  # 7: relative, upward
        "from . import schema\n"  # fine: its own package
        "if TYPE_CHECKING:\n"
        "    from anode.chain.client import ChainClient\n"  # 10
        "def later():\n"
        "    from anode.sponsorship import SponsorRequest\n"  # 12
    )
    found = violations(root)
    lines = sorted(int(entry.split(":")[1]) for entry in found)
    assert lines == [3, 4, 7, 10, 12], found
    assert "anode/store/bad.py:7: anode.store imports anode.policy (a layer above)" in found
