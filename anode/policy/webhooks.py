"""Custom policies: ask the operator's webhook whether to sponsor an operation.

The request is a JSON ``POST`` that both Pimlico- and Alchemy-style receivers understand::

    {"type": "user_operation.sponsorship.requested", "id": "<delivery id>", "timestamp": 1763721600,
     "stage": "stub" | "final" | "dry_run",
     "data": {"object": {"userOperation", "entryPoint", "chainId", "sponsorshipPolicyId", "apiKey"}},
     "userOperation", "entryPoint", "chainId", "policyId", "webhookData"}

Headers: ``X-Anode-Signature: sha256=<hex>`` is HMAC-SHA256 of the raw body under the policy's
secret; ``X-Anode-Timestamp`` (also in the body, so the signature covers it) lets the receiver
refuse replays (``verify_signature`` refuses anything older than five minutes); ``X-Anode-Delivery``
is unique per request. The answer is ``200`` with ``{"sponsor": bool}`` (Pimlico) or
``{"approved": bool}`` (Alchemy), optionally with a ``reason`` shown to the user on refusal.

Anything else — no answer within the policy's ``timeout``, a non-2xx status, a body without one
of those booleans — is a *failure*, and the policy's ``fail_mode`` decides: ``closed`` refuses,
``open`` sponsors. Redirects are not followed. Neither the secret nor the URL (which may carry a
token) ever appears in a log line or an error message.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from anode.outbound import HttpClient, OutboundError, OutboundTimeout
from anode.policy.models import Policy

log = logging.getLogger("anode.policy")

SIGNATURE_HEADER = "X-Anode-Signature"
TIMESTAMP_HEADER = "X-Anode-Timestamp"
DELIVERY_HEADER = "X-Anode-Delivery"
EVENT_TYPE = "user_operation.sponsorship.requested"
REPLAY_TOLERANCE_SECONDS = 300
_MAX_REASON = 200
_DEFAULT_TIMEOUT = 30.0  # the longest a policy may set; each request passes its own


def signature(secret: bytes, body: bytes) -> str:
    """The ``X-Anode-Signature`` value for ``body``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(
    secret: bytes, body: bytes, headers: Any, *, now: float | None = None, tolerance: int = REPLAY_TOLERANCE_SECONDS
) -> bool:
    """For receivers (and tests): the body is signed with ``secret`` and fresh."""
    presented = headers.get(SIGNATURE_HEADER) or ""
    if not hmac.compare_digest(presented, signature(secret, body)):
        return False
    try:
        sent = int(headers.get(TIMESTAMP_HEADER) or "")
        stamped = orjson.loads(body).get("timestamp")
    except (ValueError, AttributeError, orjson.JSONDecodeError):
        return False
    current = time.time() if now is None else now
    return sent == stamped and abs(current - sent) <= tolerance


@dataclass(frozen=True, slots=True)
class WebhookQuery:
    """The operation as a webhook sees it."""

    user_operation: dict[str, Any]
    entry_point: str
    chain_id: int
    api_key_id: str | None
    stage: str


@dataclass(frozen=True, slots=True)
class WebhookAnswer:
    sponsor: bool
    #: the webhook's reason for a refusal, or what went wrong when it failed
    reason: str | None = None
    #: no usable answer: ``sponsor`` was decided by the policy's ``fail_mode``
    failed: bool = False


class WebhookClient:
    """Posts to policy webhooks (``anode.outbound``: no redirects, no proxies from the environment,
    no URL in any log, since a webhook URL may carry a token). Nothing is sent twice."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._http = HttpClient(timeout=_DEFAULT_TIMEOUT, max_connections=64)
        self._clock = clock

    def body(self, policy: Policy, query: WebhookQuery) -> bytes:
        assert policy.webhook is not None
        stamp = int(self._clock())
        obj = {
            "userOperation": query.user_operation,
            "entryPoint": query.entry_point,
            "chainId": query.chain_id,
            "sponsorshipPolicyId": policy.id,
            "apiKey": query.api_key_id,
        }
        return orjson.dumps(
            {
                "type": EVENT_TYPE,
                "id": uuid.uuid4().hex,
                "timestamp": stamp,
                "stage": query.stage,
                "data": {"object": obj},
                "userOperation": query.user_operation,
                "entryPoint": query.entry_point,
                "chainId": query.chain_id,
                "policyId": policy.id,
                "webhookData": policy.webhook.data,
            }
        )

    async def ask(self, policy: Policy, query: WebhookQuery) -> WebhookAnswer:
        """The webhook's decision, or the policy's ``fail_mode`` when there is none."""
        hook = policy.webhook
        assert hook is not None
        body = self.body(policy, query)
        parsed = orjson.loads(body)
        headers = {
            "content-type": "application/json",
            SIGNATURE_HEADER: signature(hook.secret.get_secret_value().encode(), body),
            TIMESTAMP_HEADER: str(parsed["timestamp"]),
            DELIVERY_HEADER: parsed["id"],
        }
        try:
            reply = await self._http.request("POST", hook.url, body=body, headers=headers, timeout=hook.timeout)
            return _decision(reply.status, reply.body)
        except OutboundTimeout:
            problem = f"did not answer within {hook.timeout:g} s"
        except OutboundError as exc:
            problem = f"could not be reached ({exc.reason})"
        except _BadReply as exc:
            problem = str(exc)
        log.warning("policy %s: webhook %s; fail_mode %s", policy.id, problem, hook.fail_mode)
        return WebhookAnswer(sponsor=hook.fail_mode == "open", reason=problem, failed=True)

    async def aclose(self) -> None:
        await self._http.aclose()


class _BadReply(Exception):
    pass


def _decision(status: int, content: bytes) -> WebhookAnswer:
    if not 200 <= status < 300:
        raise _BadReply(f"answered HTTP {status}")
    try:
        answer = orjson.loads(content)
    except orjson.JSONDecodeError:
        raise _BadReply("answered with a body that is not JSON") from None
    if not isinstance(answer, dict):
        raise _BadReply('answered without {"sponsor": true|false} or {"approved": true|false}')
    decision = answer.get("sponsor", answer.get("approved"))
    if not isinstance(decision, bool):
        raise _BadReply('answered without {"sponsor": true|false} or {"approved": true|false}')
    reason = answer.get("reason", answer.get("message"))
    return WebhookAnswer(decision, reason[:_MAX_REASON] if isinstance(reason, str) and reason else None)
