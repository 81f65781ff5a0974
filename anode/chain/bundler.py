"""The bundler client: gas estimation for ``pm_sponsorUserOperation``, and the relay's calls.

``relay(method, params)`` passes one of the bundler's own methods through (``api/jsonrpc/relay.py``)
and raises ``BundlerRejected`` with the bundler's error object when it refuses, so its code and
data reach the client unchanged.
"""

from __future__ import annotations

from typing import Any

from anode.chain.client import JsonRpcClient
from anode.errors import BundlerRejected, BundlerUnavailable, UpstreamRejected
from anode.userop.codec import parse_quantity

GAS_FIELDS = (
    "preVerificationGas",
    "verificationGasLimit",
    "callGasLimit",
    "paymasterVerificationGasLimit",
    "paymasterPostOpGasLimit",
)


class BundlerClient(JsonRpcClient):
    unavailable = BundlerUnavailable
    label = "bundler"

    async def estimate_user_operation_gas(self, user_op: dict[str, Any], entry_point: str) -> dict[str, int]:
        """``eth_estimateUserOperationGas``; returns the gas fields it gave, as integers."""
        result = await self.request("eth_estimateUserOperationGas", [user_op, entry_point])
        if not isinstance(result, dict):
            raise UpstreamRejected("bundler returned a malformed gas estimate", data={"result": result})
        estimate: dict[str, int] = {}
        for name in GAS_FIELDS:
            if result.get(name) is not None:
                try:
                    estimate[name] = parse_quantity(result[name])
                except ValueError:
                    raise UpstreamRejected(f"bundler returned a malformed {name}", data={"result": result}) from None
        return estimate

    async def relay(self, method: str, params: list[Any]) -> Any:
        """``method`` with ``params`` as the client sent them; the bundler's result, or its error."""
        try:
            return await self.request(method, params)
        except BundlerRejected:
            raise
        except UpstreamRejected as exc:
            raise BundlerRejected(exc.data or {}) from None
