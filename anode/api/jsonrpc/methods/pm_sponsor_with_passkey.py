"""``pm_sponsor_with_passkey [userOp, entryPoint, chainId, {accountId, userSignature, send?}]``: step 3
of the passkey flow (docs/kms.md, "aNode's side").

``userOp`` is the operation ``anode_preparePasskeyOperation`` answered, unchanged; ``userSignature``
the passkey's assertion (PublicKeyCredential JSON) over the challenge it answered. aNode co-signs
with its paymaster signer, the KMS signs as the account's owner, and the answer is the complete
signed operation; with ``send: true`` it is also handed to the chain's bundler (``sent``: the
userOpHash the bundler answered).
"""

from __future__ import annotations

from typing import Any

from anode.api.jsonrpc.context import CallContext, passkey_flow
from anode.api.jsonrpc.methods import anode_preparePasskeyOperation
from anode.api.jsonrpc.params import CHAIN_ID, ENTRY_POINT, USER_OP, Param, bind
from anode.errors import InvalidRequest
from anode.passkey.flow import PasskeyRequest

NAME = "pm_sponsor_with_passkey"
CONTEXT = Param("context", kinds=(dict,), expected="an object with accountId and userSignature")
PARAMS = (USER_OP, ENTRY_POINT, CHAIN_ID, CONTEXT)


async def handle(params: Any, ctx: CallContext) -> dict[str, Any]:
    p = bind(NAME, params, PARAMS)
    context = p["context"]
    send = context.get("send", False)
    if not isinstance(send, bool):
        raise InvalidRequest(f"{NAME}: context.send must be true or false", field="context.send")
    signed = await passkey_flow(ctx).sponsor(
        PasskeyRequest(
            p["userOp"], p["entryPoint"], p["chainId"], context.get("accountId"), context.get("userSignature"),
            anode_preparePasskeyOperation.NAME, send, ctx.api_key_id,
        )
    )  # fmt: skip
    answer: dict[str, Any] = {
        "userOperation": signed.user_operation,
        "userOpHash": signed.user_op_hash,
        "ownerAddress": signed.owner,
        "verificationProof": signed.proof,
    }
    if send:
        answer["sent"] = signed.sent
    return answer
