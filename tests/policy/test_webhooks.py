"""Custom (webhook) policies against a real HTTP server on 127.0.0.1, run in a thread.

The server checks every request's HMAC signature and timestamp with the policy's secret (it
answers 401 to anything unsigned or stale) and answers according to its path: approve, decline
(with a reason), Alchemy's ``approved``, slow, HTTP 500, garbled. Each failing kind is tried in
both fail modes. The secret and the URL's token never show in a log line or a refusal.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import sqlalchemy as sa

from anode.policy.engine import Operation, PolicyEngine
from anode.policy.evaluate import WEBHOOK_REJECTED
from anode.policy.limits import MemoryLimiter
from anode.policy.repository import PolicyRepository
from anode.policy.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookClient, signature, verify_signature
from tests.policy.conftest import SENDER, facts, policy

SECRET = "whsec-0123456789abcdef"
URL_TOKEN = "tok-5ecret-in-url"
EP07 = "0x0000000071727De22E5E9d8BAf0edAc6f37da032"


class Hook:
    """A webhook receiver; ``received`` keeps (path, headers, body) of every signed request."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if not verify_signature(SECRET.encode(), body, self.headers):
                    return self._answer(401, b'{"error": "bad signature"}')
                path = self.path.split("?")[0]
                hook.received.append((path, dict(self.headers), json.loads(body)))
                if path == "/slow":
                    time.sleep(1.0)
                answers = {
                    "/approve": (200, b'{"sponsor": true}'),
                    "/decline": (200, b'{"sponsor": false, "reason": "not on the guest list"}'),
                    "/alchemy": (200, b'{"approved": true}'),
                    "/slow": (200, b'{"sponsor": true}'),
                    "/error": (500, b"oops"),
                    "/garbled": (200, b'{"ok": 1}'),
                }
                self._answer(*answers.get(path, (404, b"{}")))

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def url(self, path: str) -> str:
        return f"{self.base}{path}?token={URL_TOKEN}"


@pytest.fixture(scope="module")
def hook() -> Iterator[Hook]:
    receiver = Hook()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()
    thread.join(5)


@pytest.fixture
async def engine(sqlite_engine: sa.Engine) -> AsyncIterator[PolicyEngine]:
    engine = PolicyEngine(PolicyRepository(sqlite_engine, refresh_seconds=0), MemoryLimiter(), WebhookClient())
    yield engine
    await engine.aclose()


def custom(hook: Hook, path: str, *, fail_mode: str = "closed", **fields: Any) -> dict[str, Any]:
    webhook = {"url": hook.url(path), "secret": SECRET, "timeout": 0.3, "fail_mode": fail_mode, "data": {"tier": 1}}
    return policy(name=f"hook {path}", type="custom", webhook=webhook, **fields)


OP = Operation(facts(), {"sender": SENDER, "nonce": "0x1"}, EP07, api_key_id="key-1")


async def test_an_approving_webhook_gets_a_signed_request_with_the_operation(
    engine: PolicyEngine, hook: Hook, caplog: pytest.LogCaptureFixture
) -> None:
    engine.repository.seed([custom(hook, "/approve", id="hook-approve")])
    before = len(hook.received)
    with caplog.at_level(logging.DEBUG):
        decision = await engine.decide(OP, final=True)
    assert decision.sponsored
    assert SECRET not in caplog.text and URL_TOKEN not in caplog.text
    path, headers, body = hook.received[before]
    assert path == "/approve"
    assert headers[SIGNATURE_HEADER].startswith("sha256=") and int(headers[TIMESTAMP_HEADER]) == body["timestamp"]
    assert body["type"] == "user_operation.sponsorship.requested" and body["stage"] == "final"
    assert body["userOperation"] == OP.user_operation and body["data"]["object"]["userOperation"] == OP.user_operation
    assert body["policyId"] == body["data"]["object"]["sponsorshipPolicyId"] == "hook-approve"
    assert (body["chainId"], body["entryPoint"], body["webhookData"]) == (31337, EP07, {"tier": 1})
    assert body["data"]["object"]["apiKey"] == "key-1"


async def test_alchemy_style_answers_are_understood(engine: PolicyEngine, hook: Hook) -> None:
    engine.repository.seed([custom(hook, "/alchemy")])
    assert (await engine.decide(OP, final=True)).sponsored


async def test_a_declining_webhook_refuses_with_its_reason_in_either_fail_mode(
    engine: PolicyEngine, hook: Hook
) -> None:
    engine.repository.seed([custom(hook, "/decline", fail_mode="open")])
    decision = await engine.decide(OP, final=True)
    assert decision.refusal is not None and decision.refusal.code == WEBHOOK_REJECTED
    assert decision.refusal.message.endswith("declined to sponsor this operation (not on the guest list)")
    assert decision.refusal.data["webhookFailed"] is False


@pytest.mark.parametrize(
    ("path", "problem"),
    [("/slow", "did not answer within 0.3 s"), ("/error", "HTTP 500"), ("/garbled", 'without {"sponsor"')],
)
async def test_a_failing_webhook_refuses_when_fail_closed(
    engine: PolicyEngine, hook: Hook, path: str, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine.repository.seed([custom(hook, path, fail_mode="closed")])
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG):
        decision = await engine.decide(OP, final=True)
    assert time.monotonic() - started < 0.9  # the timeout, not the slow server, decides
    assert decision.refusal is not None and decision.refusal.code == WEBHOOK_REJECTED
    assert problem in decision.refusal.message and "fail_mode: closed" in decision.refusal.message
    assert decision.refusal.data["webhookFailed"] is True
    for text in (caplog.text, decision.refusal.message, json.dumps(decision.refusal.data)):
        assert SECRET not in text and URL_TOKEN not in text


@pytest.mark.parametrize("path", ["/slow", "/error", "/garbled"])
async def test_a_failing_webhook_sponsors_when_fail_open(engine: PolicyEngine, hook: Hook, path: str) -> None:
    engine.repository.seed([custom(hook, path, fail_mode="open")])
    assert (await engine.decide(OP, final=True)).sponsored


async def test_an_unreachable_webhook_follows_the_fail_mode(engine: PolicyEngine, unused_port: int) -> None:
    webhook = {"url": f"http://127.0.0.1:{unused_port}/", "secret": SECRET, "timeout": 1, "fail_mode": "closed"}
    engine.repository.seed([policy(id="down", type="custom", webhook=webhook)])
    decision = await engine.decide(OP, final=True)
    assert decision.refusal is not None and "could not be reached" in decision.refusal.message


async def test_webhooks_are_asked_before_counters_so_a_refusal_costs_no_quota(engine: PolicyEngine, hook: Hook) -> None:
    engine.repository.seed(
        [custom(hook, "/decline", id="gate", rate_limits=[{"type": "request", "limit": 1, "window": 60}])]
    )
    for _ in range(3):
        assert (await engine.decide(OP, final=True)).refusal.code == WEBHOOK_REJECTED  # type: ignore[union-attr]
    assert (await engine.status("gate"))["limits"][0]["used"] == 0


async def test_stub_and_dry_run_requests_say_which_they_are(engine: PolicyEngine, hook: Hook) -> None:
    engine.repository.seed([custom(hook, "/approve", id="stages")])
    before = len(hook.received)
    await engine.decide(OP, final=False)
    assert [p.id for p in await engine.would_sponsor(OP, ["stages"])] == ["stages"]
    assert [body["stage"] for _, _, body in hook.received[before:]] == ["stub", "dry_run"]


def test_signatures_are_bound_to_the_body_and_fresh() -> None:
    body = json.dumps({"timestamp": 1_000_000, "x": 1}).encode()
    headers = {SIGNATURE_HEADER: signature(b"k" * 16, body), TIMESTAMP_HEADER: "1000000"}
    assert verify_signature(b"k" * 16, body, headers, now=1_000_100)
    assert not verify_signature(b"k" * 16, body, headers, now=1_000_400)  # a replay, five minutes later
    assert not verify_signature(b"x" * 16, body, headers, now=1_000_100)  # another secret
    assert not verify_signature(b"k" * 16, body.replace(b"1}", b"2}"), headers, now=1_000_100)
    assert not verify_signature(b"k" * 16, body, {**headers, TIMESTAMP_HEADER: "1000050"}, now=1_000_100)
