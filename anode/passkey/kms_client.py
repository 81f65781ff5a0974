"""The KMS client: aNode's calls to the dual-signature KMS, with failover across its replicas.

    kms:
      urls: [https://kms-a.internal:9200, https://kms-b.internal:9200]
      timeout_seconds: 10

The URLs are replicas of one KMS (one database, one custody backend): a call goes to the first,
and to the next only when a replica gives no decision (no answer in ``timeout_seconds``, a
refused connection, HTTP 5xx). A replica's refusal (HTTP 4xx) is the KMS's decision: it is
passed on with the KMS's own code (``ANODE_KMS_…``) and no other replica is asked. There is no
fallback to any other signer: only the KMS, which holds the account's own key, signs for it.

Each attempt at ``/kms/sign-user-operation`` is built afresh (``build``): the KMS uses up a
paymaster nonce on every decision, refusals included, so a replica tried after another one is
sent a new nonce and a new approval.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from anode.config import KmsClientSettings
from anode.errors import (
    AnodeError,
    InvalidRequest,
    KmsNotFound,
    KmsRefused,
    KmsReplay,
    KmsStale,
    KmsUnauthenticated,
    ServiceUnavailable,
    UnsupportedEntryPoint,
)
from anode.outbound import HttpClient, OutboundError

#: one attempt's body and extra headers
Attempt = tuple[dict[str, Any], dict[str, str]]

_CODE = re.compile(r"^ANODE_[A-Z0-9_]{1,64}$")
_JSON = {"content-type": "application/json"}
#: the KMS's refusals by HTTP status (docs/kms.md, "Refusals"); each keeps the KMS's own code
_BY_STATUS: dict[int, type[KmsRefused]] = {
    400: KmsStale,
    401: KmsUnauthenticated,
    403: KmsRefused,
    404: KmsNotFound,
    409: KmsReplay,
}
#: codes the KMS shares with aNode: the same error as aNode's own
_SHARED: dict[str, type[InvalidRequest]] = {
    "ANODE_INVALID_PARAMS": InvalidRequest,
    "ANODE_UNSUPPORTED_ENTRYPOINT": UnsupportedEntryPoint,
}


class KmsClient:
    def __init__(self, settings: KmsClientSettings) -> None:
        self._replicas = [HttpClient(url.get_secret_value(), timeout=settings.timeout_seconds) for url in settings.urls]

    async def authentication_options(self, account_id: str, user_op_hash: str) -> dict[str, Any]:
        """``POST /webauthn/authenticate/options``: the challenge the account's passkey signs."""
        body = {"accountId": account_id, "userOpHash": user_op_hash}

        async def same() -> Attempt:
            return body, {}

        return await self._call("/webauthn/authenticate/options", same)

    async def sign_user_operation(self, build: Callable[[], Awaitable[Attempt]]) -> dict[str, Any]:
        """``POST /kms/sign-user-operation``; ``build`` makes each attempt's body and paymaster headers."""
        return await self._call("/kms/sign-user-operation", build)

    async def aclose(self) -> None:
        for replica in self._replicas:
            await replica.aclose()

    async def _call(self, path: str, build: Callable[[], Awaitable[Attempt]]) -> dict[str, Any]:
        failures: list[str] = []
        for number, replica in enumerate(self._replicas, 1):
            body, headers = await build()
            try:
                reply = await replica.request("POST", path, body=orjson.dumps(body), headers={**_JSON, **headers})
            except OutboundError as exc:
                failures.append(f"replica {number}: {exc.reason}")
                continue
            try:
                answer = orjson.loads(reply.body)
            except orjson.JSONDecodeError:
                answer = None
            if not isinstance(answer, dict):
                failures.append(f"replica {number}: HTTP {reply.status} without a JSON object")
                continue
            if reply.status == 200:
                return answer
            refusal = _refusal(reply.status, answer)
            if reply.status >= 500:
                failures.append(f"replica {number}: {refusal.code} ({refusal.message})")
                continue
            raise refusal
        raise ServiceUnavailable(f"the KMS is unavailable: {'; '.join(failures)}", code="ANODE_KMS_UNAVAILABLE")


def _refusal(status: int, answer: dict[str, Any]) -> AnodeError:
    """The KMS's ``{"error": {"code", "message"}}`` as aNode's error, with the KMS's code."""
    error = answer.get("error")
    error = error if isinstance(error, dict) else {}
    code, message = error.get("code"), error.get("message")
    code = code if isinstance(code, str) and _CODE.match(code) else "ANODE_KMS_REFUSED"
    text = f"KMS: {message[:500] if isinstance(message, str) else f'HTTP {status}'}"
    shared = _SHARED.get(code)
    if shared is not None:
        return shared(text)
    if status >= 500:
        return ServiceUnavailable(text, code=code)
    return _BY_STATUS.get(status, KmsRefused)(text, code=code)
