"""The dev chain's own small contracts (``contracts/*.sol``), compiled with npm's ``solc``
(``compile_directory`` compiles the tests' contracts too).

``TestToken`` (an ERC-20 of any decimals that anyone may mint) and ``PriceFeed`` (a Chainlink
``AggregatorV3Interface`` whose owner sets each round) give ``anode sandbox`` and the tests an
ERC-20 mode to price. The compiler output is cached under ``node_modules/.cache/anode-solc/``,
keyed by the compiler version, the settings and the sources: a second run starts no compiler.
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

from anode.devchain.artifacts import Artifact, DevChainSetupError, find_node_modules

CONTRACTS = Path(__file__).resolve().parent / "contracts"
_SETTINGS: dict[str, Any] = {
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


@functools.cache
def dev_contracts() -> dict[str, Artifact]:
    """Every contract of ``anode/devchain/contracts/*.sol`` by name."""
    return compile_directory(CONTRACTS, find_node_modules() / ".cache" / "anode-solc")


def compile_directory(directory: Path, cache_dir: Path) -> dict[str, Artifact]:
    """Every contract of ``directory/*.sol`` by name, compiled once per set of sources into ``cache_dir``."""
    modules = find_node_modules()
    package = modules / "solc"
    if not (package / "package.json").is_file():
        raise DevChainSetupError(f"npm package solc not found under {modules}: run `npm install`")
    version = json.loads((package / "package.json").read_text())["version"]
    sources = {path.name: {"content": path.read_text()} for path in sorted(directory.glob("*.sol"))}
    request = json.dumps({"language": "Solidity", "sources": sources, "settings": _SETTINGS}, sort_keys=True)
    digest = hashlib.sha256(f"solc {version}\n{request}".encode()).hexdigest()[:20]
    cache = cache_dir / f"{digest}.json"
    if not cache.is_file():
        cache.parent.mkdir(parents=True, exist_ok=True)
        output = _compile(package, request, directory)
        with tempfile.NamedTemporaryFile("w", dir=cache.parent, suffix=".tmp", delete=False) as tmp:
            json.dump(output, tmp)
        os.replace(tmp.name, cache)  # atomic: parallel runs never read half a file
    return {
        name: Artifact(
            name=name,
            abi=tuple(entry["abi"]),
            bytecode=bytes.fromhex(entry["bytecode"]),
            deployed_bytecode=bytes.fromhex(entry["deployedBytecode"]),
        )
        for name, entry in json.loads(cache.read_text()).items()
    }


def _compile(package: Path, request: str, directory: Path) -> dict[str, dict[str, Any]]:
    result = subprocess.run(
        ["node", "-e", _COMPILE_JS, str(package)], input=request, capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        raise DevChainSetupError(f"solc failed to run: {result.stderr[-2000:]}")
    output = json.loads(result.stdout)
    errors = [e["formattedMessage"] for e in output.get("errors", []) if e["severity"] == "error"]
    if errors:
        raise DevChainSetupError(f"solc rejected {directory}:\n" + "\n".join(errors))
    return {
        name: {
            "abi": entry["abi"],
            "bytecode": entry["evm"]["bytecode"]["object"],
            "deployedBytecode": entry["evm"]["deployedBytecode"]["object"],
        }
        for unit in output["contracts"].values()
        for name, entry in unit.items()
    }
