"""A small async JSON-RPC client for the node: the few reads aNode needs, with clear errors."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, TypeVar

import orjson

from anode.errors import ChainUnavailable, ServiceUnavailable, UpstreamRejected
from anode.outbound import HttpClient, OutboundError
from anode.redact import redacted
from anode.userop.codec import parse_bytes, parse_quantity

T = TypeVar("T")

_BALANCE_OF = bytes.fromhex("70a08231")  # balanceOf(address): EntryPoint deposits
_SENDER_NONCE = bytes.fromhex("9c90b443")  # senderNonce(address): VerifyingPaymaster v0.6


def parse_result(
    method: str,
    result: Any,
    parse: Callable[[Any], T],
    where: str = "the node",
    unavailable: type[ServiceUnavailable] = ChainUnavailable,
) -> T:
    """``parse(result)``, or ``unavailable`` naming ``method``: a result of the wrong shape (null,
    not hex) is the node's fault, never a bug of aNode's (a 500)."""
    try:
        return parse(result)
    except ValueError as exc:
        reason = "null" if result is None else str(exc)
        raise unavailable(f"{where} answered {method} with a malformed result ({reason})") from None


class JsonRpcClient:
    """JSON-RPC 2.0 over HTTP with a pooled connection; transport failures become ``unavailable``."""

    unavailable: type[ServiceUnavailable] = ChainUnavailable
    label = "node"

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url
        #: what messages show: never the path or query, where provider keys live
        self.display_url = redacted(url)
        # reads and estimates only: safe to send again on a kept-alive connection the node dropped
        self._http = HttpClient(url, timeout=timeout, max_connections=32, retry_disconnected=True)
        self._ids = itertools.count(1)

    async def request(self, method: str, params: list[Any]) -> Any:
        body = orjson.dumps({"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params})
        try:
            response = await self._http.post_json("", body)
        except OutboundError as exc:
            raise self.unavailable(f"{self.label} at {self.display_url} is unreachable ({exc.reason})") from None
        try:
            payload = orjson.loads(response.body)
        except orjson.JSONDecodeError:
            raise self.unavailable(
                f"{self.label} at {self.display_url} answered HTTP {response.status} without JSON"
            ) from None
        if not isinstance(payload, dict):
            raise self.unavailable(f"{self.label} at {self.display_url} answered with a malformed JSON-RPC reply")
        error = payload.get("error")
        if error is not None:
            message = error.get("message", "error") if isinstance(error, dict) else str(error)
            data = error if isinstance(error, dict) else {"error": error}
            raise UpstreamRejected(f"{self.label} refused {method}: {message}", data=data)
        if "result" not in payload:
            raise self.unavailable(f"{self.label} at {self.display_url} answered {method} without a result")
        return payload["result"]

    def parsed(self, method: str, result: Any, parse: Callable[[Any], T]) -> T:
        """``parse(result)``; a result of the wrong shape (null, not hex) is the node's fault: ``unavailable``."""
        return parse_result(method, result, parse, f"{self.label} at {self.display_url}", self.unavailable)

    async def aclose(self) -> None:
        await self._http.aclose()


class ChainClient(JsonRpcClient):
    """Reads from the chain's node."""

    async def chain_id(self) -> int:
        return self.parsed("eth_chainId", await self.request("eth_chainId", []), parse_quantity)

    async def call(self, to: bytes, data: bytes) -> bytes:
        result = await self.request("eth_call", [{"to": "0x" + to.hex(), "data": "0x" + data.hex()}, "latest"])
        return self.parsed("eth_call", result, parse_bytes)

    async def _uint_of(self, contract: bytes, selector: bytes, account: bytes) -> int:
        raw = await self.call(contract, selector + b"\x00" * 12 + account)
        if len(raw) < 32:
            raise ChainUnavailable(f"contract 0x{contract.hex()} returned no value: is it deployed on this chain?")
        return int.from_bytes(raw[:32], "big")

    async def deposit_of(self, entry_point: bytes, account: bytes) -> int:
        return await self._uint_of(entry_point, _BALANCE_OF, account)

    async def sender_nonce(self, paymaster: bytes, sender: bytes) -> int:
        return await self._uint_of(paymaster, _SENDER_NONCE, sender)
