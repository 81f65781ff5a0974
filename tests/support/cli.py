"""The ``anode`` command as an operator runs it, and the least configuration it needs."""

from __future__ import annotations

import os
import subprocess
import sys

#: one chain and paymaster, never contacted: enough for commands that read no chain
CHAINS = [
    {
        "chain_id": 1,
        "rpc_url": "http://127.0.0.1:1",
        "paymasters": [
            {
                "entry_point": "0x0000000071727De22E5E9d8BAf0edAc6f37da032",
                "address": "0x0000000071727De22E5E9d8BAf0edAc6f37da032",
                "contract": "verifying",
            }
        ],
    }
]


def anode(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m anode.cli ARGS`` in a subprocess, with ``env`` added to this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "anode.cli", *args], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
