"""``anode_preparePasskeyOperation [userOp, entryPoint, chainId, {accountId, ...context}]``: step 1 of
the passkey flow (docs/kms.md, "aNode's side").

The pipeline judges the operation and its paymaster data is signed and recorded, as for
``pm_getPaymasterData`` (gas estimated through the chain's bundler when the operation carries no
gas limits); the answer is that operation, its userOpHash and the KMS's challenge for the
account's passkey. The rest of the object is the usual sponsorship context.
"""

from __future__ import annotations

from typing import Any

from anode.api.jsonrpc.context import CallContext, passkey_flow
from anode.api.jsonrpc.params import CHAIN_ID, ENTRY_POINT, USER_OP, Param, bind
from anode.api.jsonrpc.results import signed_extras
from anode.sponsorship import SponsorRequest

NAME = "anode_preparePasskeyOperation"
PARAMS = (USER_OP, ENTRY_POINT, CHAIN_ID, Param("context", kinds=(dict,), expected="an object with accountId"))


async def handle(params: Any, ctx: CallContext) -> dict[str, Any]:
    p = bind(NAME, params, PARAMS)
    prepared = await passkey_flow(ctx).prepare(
        SponsorRequest(p["userOp"], p["entryPoint"], p["chainId"], p["context"], NAME, ctx.api_key_id, ctx.request_id)
    )
    challenge = prepared.challenge
    return {
        "userOperation": prepared.user_operation,
        **signed_extras(prepared.sponsored),
        "entryPoint": prepared.sponsored.route.entry_point_hex,
        "chainId": hex(prepared.sponsored.route.chain_id),
        "accountId": prepared.account_id,
        "challenge": challenge.get("challenge"),
        "kmsNonce": challenge.get("kmsNonce"),
        "expiresAt": challenge.get("expiresAt"),
        "options": challenge.get("options"),
    }
