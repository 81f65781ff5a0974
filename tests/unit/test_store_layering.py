"""``anode/store`` is the bottom of the line ``api → pipeline → policy/chain → paymasters → signers →
store``: it imports nothing of aNode but itself and the modules every layer shares
(``tests/unit/test_layers.py`` checks every layer; this one says it for the store alone)."""

from __future__ import annotations

import ast
from pathlib import Path

import anode.store

#: what the store may import of aNode: itself and the modules every layer shares
ALLOWED = ("anode.store", "anode.userop", "anode.errors", "anode.metrics", "anode.outbound", "anode.redact")


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
    return found


def test_the_store_imports_nothing_above_it() -> None:
    root = Path(anode.store.__file__).parent
    upward = [
        f"{path.relative_to(root.parent.parent)}:{line}: {module}"
        for path in sorted(root.rglob("*.py"))
        for line, module in _imports(path)
        if (module == "anode" or module.startswith("anode."))
        and not any(module == allowed or module.startswith(allowed + ".") for allowed in ALLOWED)
    ]
    assert upward == []
