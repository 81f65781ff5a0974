"""A local ERC-4337 chain for tests and ``anode sandbox``: anvil plus the contracts aNode serves.

- :mod:`~anode.devchain.artifacts`: contract artifacts and the anvil binary from ``node_modules``.
- :mod:`~anode.devchain.anvil`: :class:`Anvil`, a managed anvil process.
- :mod:`~anode.devchain.deploy`: :func:`deploy_sandbox`, EntryPoints v0.6-v0.8, factories and paymasters.
- :mod:`~anode.devchain.rpc`: :class:`DevRpc`, a small blocking JSON-RPC client for the above.
"""

from anode.devchain.anvil import Anvil
from anode.devchain.artifacts import DevChainSetupError
from anode.devchain.deploy import CANONICAL_ENTRY_POINTS, Deployment, deploy_sandbox
from anode.devchain.rpc import DevRpc, RpcError, TransactionFailed

__all__ = [
    "CANONICAL_ENTRY_POINTS",
    "Anvil",
    "Deployment",
    "DevChainSetupError",
    "DevRpc",
    "RpcError",
    "TransactionFailed",
    "deploy_sandbox",
]
