"""The KMS client's failover rules, against small aiohttp servers standing in for KMS replicas
(the real KMS, failing over from a closed port, is in tests/kms/test_anode_flow.py).

A replica that gives no decision (a refused connection, no answer in time, HTTP 5xx) is passed
over for the next, which gets an attempt built afresh; a refusal (HTTP 4xx) is the KMS's decision:
it comes back as aNode's error with the KMS's code, and no other replica is asked.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from anode.api.errors import rpc_error
from anode.config import KmsClientSettings, validate_model
from anode.devchain.anvil import free_port
from anode.errors import (
    AnodeError,
    ConfigError,
    InvalidRequest,
    KmsNotFound,
    KmsRefused,
    KmsReplay,
    KmsStale,
    KmsUnauthenticated,
    ServiceUnavailable,
)
from anode.passkey.kms_client import Attempt, KmsClient

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def replica(handler: Handler, seen: list[tuple[str, dict[str, Any]]], name: str) -> AsyncIterator[str]:
    async def record(request: web.Request) -> web.StreamResponse:
        seen.append((name, await request.json()))
        return await handler(request)

    app = web.Application()
    app.router.add_post("/kms/sign-user-operation", record)
    async with TestServer(app, host="127.0.0.1") as server:
        yield f"http://127.0.0.1:{server.port}"


def answering(status: int, body: dict[str, Any]) -> Handler:
    async def handler(_: web.Request) -> web.StreamResponse:
        return web.json_response(body, status=status)

    return handler


async def slow(_: web.Request) -> web.StreamResponse:
    await asyncio.sleep(5)
    return web.json_response({"signature": "0x"})


SIGNED = {"success": True, "signature": "0x01", "userOpHash": "0x02", "ownerAddress": "0x03"}
#: a replica at a port nothing listens on
CLOSED = "closed"


async def sign(handlers: list[Handler | str], timeout: float = 5.0) -> tuple[Any, list[tuple[str, dict[str, Any]]]]:
    """Ask the replicas ``handlers`` in order: the answer (or the error), and which replica saw which attempt."""
    seen: list[tuple[str, dict[str, Any]]] = []
    counter = iter(range(100))

    async def build() -> Attempt:
        return {"nonce": next(counter)}, {"x-paymaster-address": "0xpaymaster"}

    async with AsyncExitStack() as stack:
        urls = []
        for number, handler in enumerate(handlers, 1):
            if callable(handler):
                urls.append(await stack.enter_async_context(replica(handler, seen, str(number))))
            else:
                urls.append(f"http://127.0.0.1:{free_port()}")  # nothing listens there
        client = KmsClient(validate_model(KmsClientSettings, {"urls": urls, "timeout_seconds": timeout}))
        try:
            answer: Any = await client.sign_user_operation(build)
        except AnodeError as exc:
            answer = exc
        finally:
            await client.aclose()
    return answer, seen


async def test_a_closed_port_and_a_5xx_are_passed_over_each_next_replica_with_a_new_attempt() -> None:
    unavailable = answering(503, {"error": {"code": "ANODE_SIGNER_UNAVAILABLE", "message": "HSM down"}})
    answer, seen = await sign([CLOSED, unavailable, answering(200, SIGNED)])
    assert answer == SIGNED
    # attempt 0 went to the closed port; each replica that answered saw its own nonce
    assert seen == [("2", {"nonce": 1}), ("3", {"nonce": 2})]


async def test_a_replica_that_does_not_answer_in_time_is_passed_over() -> None:
    answer, seen = await sign([slow, answering(200, SIGNED)], timeout=0.5)
    assert answer == SIGNED
    assert [name for name, _ in seen] == ["1", "2"]


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (400, "ANODE_KMS_TIMESTAMP_OUT_OF_WINDOW", KmsStale),
        (401, "ANODE_KMS_PASSKEY_INVALID", KmsUnauthenticated),
        (403, "ANODE_KMS_PAYMASTER_UNAUTHORIZED", KmsRefused),
        (404, "ANODE_KMS_ACCOUNT_UNKNOWN", KmsNotFound),
        (409, "ANODE_KMS_CHALLENGE_USED", KmsReplay),
        (400, "ANODE_INVALID_PARAMS", InvalidRequest),
    ],
)
async def test_a_refusal_is_the_kms_decision_with_its_code_and_no_other_replica_is_asked(
    status: int, code: str, kind: type[AnodeError]
) -> None:
    refusal = answering(status, {"error": {"code": code, "message": "what to fix"}})
    answer, seen = await sign([refusal, answering(200, SIGNED)])
    assert isinstance(answer, kind)
    assert (answer.code, answer.message) == (code, "KMS: what to fix")
    assert [name for name, _ in seen] == ["1"]
    wire = rpc_error(answer)
    assert wire["data"]["anodeCode"] == code
    assert wire["code"] == (-32602 if kind is InvalidRequest else -32502)


async def test_no_replica_answering_is_no_signature() -> None:
    unavailable = answering(503, {"error": {"code": "ANODE_STORE_UNAVAILABLE", "message": "database down"}})
    answer, _ = await sign([CLOSED, unavailable, answering(502, {})])
    assert isinstance(answer, ServiceUnavailable)
    assert answer.code == "ANODE_KMS_UNAVAILABLE"
    assert answer.message == (
        "the KMS is unavailable: replica 1: connection refused; "
        "replica 2: ANODE_STORE_UNAVAILABLE (KMS: database down); replica 3: ANODE_KMS_REFUSED (KMS: HTTP 502)"
    )


async def test_an_answer_that_is_no_json_object_is_no_decision() -> None:
    async def html(_: web.Request) -> web.StreamResponse:
        return web.Response(text="<html>proxy error</html>", status=200)

    answer, seen = await sign([html, answering(200, SIGNED)])
    assert answer == SIGNED
    assert [name for name, _ in seen] == ["1", "2"]


def test_the_settings_need_a_url_and_mask_them() -> None:
    with pytest.raises(ConfigError, match="urls"):
        validate_model(KmsClientSettings, {"urls": []})
    settings = validate_model(KmsClientSettings, {"urls": ["https://user:pw@kms.internal:9200/x?key=1"]})
    assert "pw" not in repr(settings) and "key=1" not in settings.model_dump_json()
