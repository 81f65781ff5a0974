"""A small synchronous JSON-RPC client for the dev chain (anvil): deploy scripts and tests.

It is not the server's node client (that one is async and lives in ``anode.chain``). It speaks
the handful of methods a deploy script needs, uses anvil's unlocked accounts through
``eth_sendTransaction`` and waits for receipts, raising :class:`RpcError` (with the revert data,
when the node returns any) for JSON-RPC errors and :class:`TransactionFailed` for reverted
transactions.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import httpx
from eth_abi.abi import decode, encode
from eth_utils.abi import function_signature_to_4byte_selector

# anvil picks the nonce of an ``eth_sendTransaction`` from its pool as the request arrives; two
# sends from one account at the same moment can get the same nonce, and the second is refused as
# "replacement transaction underpriced". Sends from one account to one node go one at a time.
_SEND_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_SEND_LOCKS_GUARD = threading.Lock()


def _send_lock(url: str, sender: str) -> threading.Lock:
    key = (url, sender.lower())
    with _SEND_LOCKS_GUARD:
        return _SEND_LOCKS.setdefault(key, threading.Lock())


class RpcError(RuntimeError):
    """A JSON-RPC error answer; ``data`` holds revert data when the node sent it."""

    def __init__(self, method: str, code: int, message: str, data: bytes | None) -> None:
        super().__init__(f"{method}: {message} (code {code})")
        self.method = method
        self.code = code
        self.message = message
        self.data = data


class TransactionFailed(RuntimeError):
    """A mined transaction whose receipt says status 0."""

    def __init__(self, tx_hash: str, receipt: dict[str, Any]) -> None:
        super().__init__(f"transaction {tx_hash} reverted")
        self.tx_hash = tx_hash
        self.receipt = receipt


def encode_call(fn_signature: str, arg_types: Sequence[str] = (), args: Sequence[Any] = ()) -> bytes:
    """Calldata: the 4-byte selector of ``fn_signature`` ("depositTo(address)") and the encoded args."""
    selector = function_signature_to_4byte_selector(fn_signature)
    return selector + (encode(list(arg_types), list(args)) if arg_types else b"")


def _hex(value: bytes | int | str) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, int):
        return hex(value)
    return value


def _revert_data(data: object) -> bytes | None:
    if isinstance(data, dict):  # some nodes nest it: {"data": "0x..."}
        data = data.get("data")
    if isinstance(data, str) and data.startswith("0x"):
        try:
            return bytes.fromhex(data[2:])
        except ValueError:
            return None
    return None


class DevRpc:
    """Blocking JSON-RPC over HTTP; close it (or use ``with``) to release the connection pool."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url
        self._http = httpx.Client(timeout=timeout)
        self._ids = itertools.count(1)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def call(self, method: str, *params: Any) -> Any:
        """One request; returns ``result`` or raises :class:`RpcError`."""
        payload = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)}
        response = self._http.post(self.url, json=payload)
        response.raise_for_status()
        body = response.json()
        error = body.get("error")
        if error is not None:
            code = int(error.get("code", 0))
            raise RpcError(method, code, str(error.get("message", "")), _revert_data(error.get("data")))
        return body.get("result")

    def chain_id(self) -> int:
        return int(self.call("eth_chainId"), 16)

    def accounts(self) -> list[str]:
        return list(self.call("eth_accounts"))

    def get_code(self, address: str) -> bytes:
        return bytes.fromhex(self.call("eth_getCode", address, "latest")[2:])

    def get_balance(self, address: str) -> int:
        return int(self.call("eth_getBalance", address, "latest"), 16)

    def set_balance(self, address: str, wei: int) -> None:
        self.call("anvil_setBalance", address, hex(wei))

    def set_code(self, address: str, code: bytes) -> None:
        self.call("anvil_setCode", address, _hex(code))

    def eth_call(self, to: str, data: bytes, sender: str | None = None) -> bytes:
        """``eth_call`` at the latest block; raises :class:`RpcError` (with revert data) on revert."""
        tx: dict[str, str] = {"to": to, "data": _hex(data)}
        if sender is not None:
            tx["from"] = sender
        return bytes.fromhex(self.call("eth_call", tx, "latest")[2:])

    def call_function(
        self,
        to: str,
        fn_signature: str,
        arg_types: Sequence[str] = (),
        args: Sequence[Any] = (),
        return_types: Sequence[str] = (),
    ) -> tuple[Any, ...]:
        """``eth_call`` a contract function and decode its return values."""
        result = self.eth_call(to, encode_call(fn_signature, arg_types, args))
        return tuple(decode(list(return_types), result)) if return_types else ()

    def transact(
        self,
        sender: str,
        to: str | None,
        data: bytes = b"",
        value: int = 0,
        gas: int | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Send from an unlocked (or impersonated) account, wait for the receipt, raise if it reverted."""
        tx: dict[str, str] = {"from": sender, "data": _hex(data), "value": hex(value)}
        if to is not None:
            tx["to"] = to
        if gas is not None:
            tx["gas"] = hex(gas)
        with _send_lock(self.url, sender):
            tx_hash: str = self.call("eth_sendTransaction", tx)
        receipt = self.wait_for_receipt(tx_hash, timeout)
        if int(receipt["status"], 16) != 1:
            raise TransactionFailed(tx_hash, receipt)
        return receipt

    def wait_for_receipt(self, tx_hash: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            receipt = self.call("eth_getTransactionReceipt", tx_hash)
            if receipt is not None:
                return dict(receipt)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no receipt for {tx_hash} after {timeout}s (is the chain mining?)")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
