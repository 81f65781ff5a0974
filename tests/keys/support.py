"""An aNode app in this process (``httpx`` over ASGI, lifecycle run by hand) and an async wallet
that asks it for paymaster data and submits the result to the real EntryPoint on anvil."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from eth_account import Account
from eth_account.messages import encode_defunct

from anode.api.app import create_app
from anode.config import validate_settings
from anode.devchain.anvil import Anvil
from anode.devchain.deploy import Deployment
from anode.wiring import Anode, build
from tests.support.onchain import HandleOpsResult, UserOp, call_contract, user_op_type
from tests.support.wallet import Client, rpc_op, server_config, with_paymaster

API_KEY = "keys-test-api-key"
_ids = itertools.count(1)


def app_config(
    anvil: Anvil, deployment: Deployment, signer: dict[str, Any], tmp_path: Path, pairs: list[tuple[str, str]]
) -> dict[str, Any]:
    tree = server_config(anvil, deployment, "0x" + "11" * 32, pairs)
    tree["signer"] = signer
    tree["database_url"] = f"sqlite:///{tmp_path / 'anode.db'}"
    tree["auth"] = {"api_keys": [API_KEY]}
    return tree


@dataclass
class App:
    anode: Anode
    http: httpx.AsyncClient

    async def rpc(self, method: str, params: list[Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
        body = {"jsonrpc": "2.0", "id": next(_ids), "method": method, "params": params}
        reply = await self.http.post("/api/v1/rpc", json=body, headers=headers or {})
        answer: dict[str, Any] = reply.json()
        return answer


@asynccontextmanager
async def running_app(tree: dict[str, Any]) -> AsyncIterator[App]:
    """Build, start (chain checks, signer health and acceptance), serve over ASGI, close."""
    anode = build(validate_settings(tree))
    app = create_app(anode, manage_lifecycle=False)
    await anode.start()
    headers = {"authorization": f"Bearer {API_KEY}"}
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://anode.test", headers=headers) as http:
            yield App(anode, http)
    finally:
        await anode.aclose()


class Wallet:
    """Counterfactual SimpleAccount operations for one EntryPoint version, as a wallet builds them."""

    def __init__(self, anvil: Anvil, deployment: Deployment, version: str) -> None:
        self.client = Client("http://unused", anvil, deployment, version)
        self.version = version
        self.entry_point = deployment.entry_points[version]
        self.chain_hex = hex(deployment.chain_id)

    def new_op(self) -> UserOp:
        return self.client.new_op()

    def params(self, op: UserOp) -> list[Any]:
        return [rpc_op(op, self.version), self.entry_point, self.chain_hex, {}]

    async def sponsor(self, app: App, op: UserOp) -> tuple[UserOp, dict[str, Any]]:
        """``pm_getPaymasterData`` for ``op``; the op carrying the answer, and the answer."""
        reply = await app.rpc("pm_getPaymasterData", self.params(op))
        assert "result" in reply, reply
        return with_paymaster(op, self.version, reply["result"]), reply["result"]

    async def submit(self, op: UserOp) -> HandleOpsResult:
        return await asyncio.to_thread(self.client.submit, op)

    def paymaster_signer(self, op: UserOp, paymaster: str) -> str:
        """Who signed ``op``'s paymaster data, by the contract's own ``getHash`` (SingletonPaymaster V7)."""
        tuple_type = user_op_type(self.version)
        (digest,) = call_contract(
            self.client.anvil.rpc_url, paymaster, f"getHash(uint8,{tuple_type})", ["uint8", tuple_type],
            [0, op.to_tuple(self.version)], ["bytes32"],
        )  # fmt: skip
        return str(Account.recover_message(encode_defunct(primitive=bytes(digest)), signature=op.paymaster_data[-65:]))
