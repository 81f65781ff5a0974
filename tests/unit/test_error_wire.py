"""Errors become wire responses in one place, ``anode/api/errors.py``.

An ``AnodeError`` declares its JSON-RPC code and HTTP status (``rpc_code``, ``http_status``);
only ``api/errors.py`` reads them, and only it builds a JSON-RPC error object or aNode's REST
error body. Outside it, no module reads those attributes or writes ``{"error": {...}}`` /
``{"jsonrpc": ..., "error": ...}`` itself. (``keyserver/`` is a service of its own with its own
error shape; ``devchain/`` only reads other servers' errors.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import anode

PACKAGE = Path(anode.__file__).parent
THE_PLACE = Path("api/errors.py")
ELSEWHERE = ("keyserver", "devchain")


def _key(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def wire_mappings(root: Path = PACKAGE) -> list[str]:
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if relative == THE_PLACE or relative.parts[0] in ELSEWHERE:
            continue
        where = f"{root.name}/{relative}"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                if node.attr in ("rpc_code", "http_status"):
                    found.append(f"{where}:{node.lineno}: reads .{node.attr}")
            elif isinstance(node, ast.Dict):
                keys = {_key(k): v for k, v in zip(node.keys, node.values, strict=True)}
                error = keys.get("error")
                if error is None:
                    continue
                built = isinstance(error, ast.Dict) or (
                    isinstance(error, ast.Call)
                    and getattr(error.func, "attr", getattr(error.func, "id", None)) == "rpc_error"
                )
                if built or "jsonrpc" in keys:
                    found.append(f"{where}:{node.lineno}: builds an error response")
    return found


def test_errors_become_wire_responses_only_in_api_errors() -> None:
    found = wire_mappings()
    assert not found, "map errors to the wire in anode/api/errors.py:\n" + "\n".join(found)


def test_the_check_sees_each_way_of_mapping_an_error(tmp_path: Path) -> None:
    root = tmp_path / "anode"
    (root / "api").mkdir(parents=True)
    (root / "api" / "errors.py").write_text("x = {'error': {'code': -32600}}\ny = exc.http_status\n")
    (root / "api" / "route.py").write_text(
        "a = exc.http_status\n"  # 1
        "b = {'jsonrpc': '2.0', 'id': None, 'error': rpc_error(exc)}\n"  # 2
        "c = {'error': {'code': exc.code}}\n"  # 3
        "d = errors.rpc_error(exc)['code'] if exc.rpc_code else 0\n"  # 4
        "e = {'error': node_error}\n"  # fine: data read from a node
    )
    assert wire_mappings(root) == [
        "anode/api/route.py:1: reads .http_status",
        "anode/api/route.py:2: builds an error response",
        "anode/api/route.py:3: builds an error response",
        "anode/api/route.py:4: reads .rpc_code",
    ]
