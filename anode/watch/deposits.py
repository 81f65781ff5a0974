"""The deposit monitor: each paymaster's EntryPoint deposit, read every ``deposits.poll_seconds``.

Each pass reads ``balanceOf(paymaster)`` on every configured EntryPoint and

1. sets ``anode_paymaster_deposit_wei{chain,entry_point,paymaster}`` (and ``…_deposit_low``);
2. keeps the value in memory: the refusal guard (:meth:`DepositMonitor.guard`) reads it, so no
   request waits for the node;
3. writes a sample to ``deposit_samples`` (one per interval whichever process reads it,
   ``store/deposits.py``), deleting samples past ``deposits.retention_days``;
4. below the paymaster's ``low_balance_wei``: logs a WARNING and ``POST``\\s the alert to
   ``alerts.webhook_url``, at most once per ``alerts.repeat_minutes`` per paymaster across every
   process on the database, and once more as soon as it drops again after it had recovered.

The alert body is JSON signed like a policy webhook (``policy/webhooks.py``): the header
``X-Anode-Signature: sha256=<hex HMAC-SHA256 of the raw body under alerts.webhook_secret>``,
``X-Anode-Timestamp`` (also the body's ``timestamp``) and ``X-Anode-Delivery``::

    {"type": "paymaster.deposit.low", "id": "<delivery id>", "timestamp": 1763721600,
     "chainId": 31337, "entryPoint": "0x…", "paymaster": "0x…",
     "depositWei": "4000000000000000", "lowBalanceWei": "100000000000000000"}

The guard: an operation whose maximum cost is above the deposit *minus what this process signed
since the deposit was read* is refused with ``ANODE_050_DEPOSIT_TOO_LOW``; the EntryPoint would
refuse it (AA31) and every bundler with it. Each read starts the count again (the operations
included meanwhile are paid out of the new value). Before the first good read there is nothing to
compare with, and nothing is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
import sqlalchemy as sa

from anode.chain.client import ChainClient
from anode.config import AlertSettings, DepositSettings
from anode.errors import AnodeError, DepositTooLow
from anode.metrics import Metrics
from anode.outbound import HttpClient, OutboundError, OutboundTimeout
from anode.policy.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, signature
from anode.store.deposits import DepositKey, DepositStore
from anode.userop.codec import checksum

log = logging.getLogger("anode.deposits")

ALERT_TYPE = "paymaster.deposit.low"


@dataclass(frozen=True)
class WatchedDeposit:
    chain_id: int
    node: ChainClient
    entry_point: bytes
    paymaster: bytes
    #: below this deposit (wei) the paymaster is low; ``None``: never
    low_balance_wei: int | None = None

    @property
    def key(self) -> DepositKey:
        return DepositKey(self.chain_id, checksum(self.entry_point), checksum(self.paymaster))


@dataclass(frozen=True, slots=True)
class Reading:
    """The last read of one deposit: ``deposit_wei`` is the last good value, ``error`` the last failure."""

    deposit_wei: int | None
    #: Unix time of the last good read
    read_at: float | None
    error: str | None = None


class DepositMonitor:
    def __init__(
        self,
        watched: Sequence[WatchedDeposit],
        settings: DepositSettings,
        alerts: AlertSettings,
        engine: sa.Engine,
        metrics: Metrics | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.watched = list(watched)
        self.settings = settings
        self.alerts = alerts
        self.metrics = metrics if metrics is not None else Metrics()
        self.store = DepositStore(engine)
        self._clock = clock
        self._readings: dict[tuple[int, bytes], Reading] = {}
        #: maximum costs the guard let through since the last good read, per (chain, EntryPoint)
        self._in_flight: dict[tuple[int, bytes], int] = {}
        self._http = HttpClient(timeout=alerts.timeout_seconds, max_connections=4)

    def reading(self, chain_id: int, entry_point: bytes) -> Reading | None:
        return self._readings.get((chain_id, entry_point))

    def guard(self, chain_id: int, entry_point: bytes, max_cost: int) -> None:
        """Refuse (``DepositTooLow``) an operation the deposit cannot pay for; else count it as in flight."""
        if not self.settings.refuse_below_cost:
            return
        key = (chain_id, entry_point)
        reading = self._readings.get(key)
        if reading is None or reading.deposit_wei is None:
            return
        promised = self._in_flight.get(key, 0)
        available = reading.deposit_wei - promised
        if max_cost > available:
            watched = next(w for w in self.watched if (w.chain_id, w.entry_point) == key)
            since = f" ({promised} wei of it promised to operations signed since it was read)" if promised else ""
            raise DepositTooLow(
                f"the paymaster {checksum(watched.paymaster)} has {reading.deposit_wei} wei deposited at EntryPoint "
                f"{checksum(entry_point)} on chain {chain_id}{since}, less than this operation's maximum cost of "
                f"{max_cost} wei: every bundler would refuse it (AA31). Ask the operator to top the deposit up "
                f"(`anode deposit add`), or lower the operation's gas limits or fees",
                data={
                    "depositWei": str(reading.deposit_wei),
                    "inFlightWei": str(promised),
                    "requiredWei": str(max_cost),
                    "paymaster": checksum(watched.paymaster),
                    "entryPoint": checksum(entry_point),
                },
            )
        self._in_flight[key] = promised + max_cost

    async def refresh(self) -> list[Reading]:
        """One pass: read every deposit, export it, sample it, alert on the low ones."""
        return [await self._check(watched) for watched in self.watched]

    async def _check(self, watched: WatchedDeposit) -> Reading:
        key = (watched.chain_id, watched.entry_point)
        labels = (str(watched.chain_id), checksum(watched.entry_point), checksum(watched.paymaster))
        counted = self._in_flight.get(key, 0)  # signed before this read: paid out of the value it gets
        try:
            deposit = await watched.node.deposit_of(watched.entry_point, watched.paymaster)
        except AnodeError as exc:
            log.warning("chain %s: the deposit of %s could not be read: %s", watched.chain_id, labels[2], exc.message)
            previous = self._readings.get(key) or Reading(None, None)
            self._readings[key] = failed = Reading(previous.deposit_wei, previous.read_at, exc.message)
            return failed
        now = self._clock()
        self._readings[key] = reading = Reading(deposit, now)
        self._in_flight[key] = self._in_flight.get(key, 0) - counted  # what was signed while it was read
        low = watched.low_balance_wei is not None and deposit < watched.low_balance_wei
        self.metrics.deposit.labels(*labels).set(deposit)
        self.metrics.deposit_low.labels(*labels).set(1 if low else 0)
        moment = datetime.fromtimestamp(now, UTC)
        every = timedelta(seconds=self.settings.poll_seconds * 0.9)
        keep = timedelta(days=self.settings.retention_days)
        await asyncio.to_thread(self.store.sample, watched.key, deposit, moment, every=every, keep=keep)
        if low:
            await self._alert(watched, deposit, moment)
        elif watched.low_balance_wei is not None:
            await asyncio.to_thread(self.store.clear_alert, watched.key)
        return reading

    async def _alert(self, watched: WatchedDeposit, deposit: int, moment: datetime) -> None:
        repeat = timedelta(minutes=self.alerts.repeat_minutes)
        if not await asyncio.to_thread(self.store.claim_alert, watched.key, moment, repeat):
            return  # alerted less than repeat_minutes ago (by this process or another)
        key = watched.key
        log.warning(
            "chain %s: paymaster %s has %s wei deposited at EntryPoint %s, below its low_balance_wei of %s: "
            "top it up (`anode deposit add`)",
            key.chain_id, key.paymaster, deposit, key.entry_point, watched.low_balance_wei,
        )  # fmt: skip
        if self.alerts.webhook_url is None:
            return
        problem = await self._post(watched, deposit, int(moment.timestamp()))
        result = "sent" if problem is None else "failed"
        self.metrics.deposit_alerts.labels(str(key.chain_id), key.paymaster, result).inc()
        if problem is not None:
            log.warning("chain %s: the low-deposit webhook %s; retrying at the next read", key.chain_id, problem)
            await asyncio.to_thread(self.store.clear_alert, key, moment)

    def body(self, watched: WatchedDeposit, deposit: int, stamp: int) -> bytes:
        key = watched.key
        return orjson.dumps(
            {
                "type": ALERT_TYPE,
                "id": uuid.uuid4().hex,
                "timestamp": stamp,
                "chainId": key.chain_id,
                "entryPoint": key.entry_point,
                "paymaster": key.paymaster,
                "depositWei": str(deposit),
                "lowBalanceWei": str(watched.low_balance_wei),
            }
        )

    async def _post(self, watched: WatchedDeposit, deposit: int, stamp: int) -> str | None:
        """``None`` once the webhook answered 2xx; else what went wrong (never its URL nor the secret)."""
        url, secret = self.alerts.webhook_url, self.alerts.webhook_secret
        assert url is not None and secret is not None
        body = self.body(watched, deposit, stamp)
        headers = {
            "content-type": "application/json",
            SIGNATURE_HEADER: signature(secret.get_secret_value().encode(), body),
            TIMESTAMP_HEADER: str(stamp),
            DELIVERY_HEADER: orjson.loads(body)["id"],
        }
        try:
            reply = await self._http.request(
                "POST", url.get_secret_value(), body=body, headers=headers, timeout=self.alerts.timeout_seconds
            )
        except OutboundTimeout:
            return f"did not answer within {self.alerts.timeout_seconds:g} s"
        except OutboundError as exc:
            return f"could not be reached ({exc.reason})"
        return None if 200 <= reply.status < 300 else f"answered HTTP {reply.status}"

    async def run(self, stop: asyncio.Event) -> None:
        """Pass after pass, ``poll_seconds`` apart, until ``stop`` is set; a failed pass is logged and retried."""
        while not stop.is_set():
            try:
                await self.refresh()
            except sa.exc.SQLAlchemyError as exc:
                log.warning("deposits: the database failed (%s); retrying", type(exc).__name__)
            except Exception:  # a bug must not stop the monitor for good, nor the server's shutdown
                log.exception("deposits: the pass failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.poll_seconds)

    async def aclose(self) -> None:
        await self._http.aclose()
