"""Compile the ``.sol`` files of this directory with solc from ``node_modules`` (npm ``solc``).

The output (ABI and creation code of every contract) is cached in ``build/<digest>.json``, keyed
by the compiler version, the settings and every source: a second run reads the JSON and starts
no compiler. ``build/`` is git-ignored.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from anode.devchain.artifacts import Artifact, find_node_modules

HERE = Path(__file__).resolve().parent
SETTINGS: dict[str, Any] = {
    "optimizer": {"enabled": True, "runs": 200},
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
}
_COMPILE_JS = """
const solc = require(process.argv[1]);
let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => { input += chunk; });
process.stdin.on("end", () => { process.stdout.write(solc.compile(input)); });
"""


def _solc_package() -> Path:
    package = find_node_modules() / "solc"
    if not (package / "package.json").is_file():
        raise RuntimeError(f"npm package solc not found under {package.parent}: run `npm install`")
    return package


@functools.cache
def compiled() -> dict[str, Artifact]:
    """Every contract of ``tests/contracts/*.sol`` by name."""
    package = _solc_package()
    version = json.loads((package / "package.json").read_text())["version"]
    sources = {path.name: {"content": path.read_text()} for path in sorted(HERE.glob("*.sol"))}
    request = {"language": "Solidity", "sources": sources, "settings": SETTINGS}
    encoded = json.dumps(request, sort_keys=True)
    digest = hashlib.sha256(f"solc {version}\n{encoded}".encode()).hexdigest()[:20]
    cache = HERE / "build" / f"{digest}.json"
    if not cache.is_file():
        cache.parent.mkdir(exist_ok=True)
        contracts = _compile(package, encoded)
        with tempfile.NamedTemporaryFile("w", dir=cache.parent, suffix=".tmp", delete=False) as tmp:
            json.dump(contracts, tmp)
        os.replace(tmp.name, cache)  # atomic: parallel sessions never read half a file
    contracts = json.loads(cache.read_text())
    return {
        name: Artifact(
            name=name,
            abi=tuple(entry["abi"]),
            bytecode=bytes.fromhex(entry["bytecode"]),
            deployed_bytecode=bytes.fromhex(entry["deployedBytecode"]),
        )
        for name, entry in contracts.items()
    }


def _compile(package: Path, request: str) -> dict[str, dict[str, Any]]:
    result = subprocess.run(
        ["node", "-e", _COMPILE_JS, str(package)], input=request, capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        raise RuntimeError(f"solc failed to run: {result.stderr[-2000:]}")
    output = json.loads(result.stdout)
    errors = [e["formattedMessage"] for e in output.get("errors", []) if e["severity"] == "error"]
    if errors:
        raise RuntimeError("solc rejected tests/contracts:\n" + "\n".join(errors))
    return {
        name: {
            "abi": entry["abi"],
            "bytecode": entry["evm"]["bytecode"]["object"],
            "deployedBytecode": entry["evm"]["deployedBytecode"]["object"],
        }
        for unit in output["contracts"].values()
        for name, entry in unit.items()
    }
