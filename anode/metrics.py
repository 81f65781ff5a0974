"""Prometheus metrics: one ``Metrics`` object per running server, on its own registry.

The registry is passed around (``wiring`` builds it, the signer manager, the sponsorship service
and the HTTP middleware write to it, ``GET /metrics`` renders it), never the process-wide
default: several apps in one process (tests, two servers in a benchmark) keep separate counts.

    anode_signer_signatures_total{backend,type}          signatures a backend produced
    anode_signer_latency_seconds{backend,type}           time to a good signature (histogram)
    anode_signer_errors_total{backend,type,kind}         kind: timeout, unavailable, bad_signature, circuit_open
    anode_signer_failovers_total{backend}                requests that moved on from this backend
    anode_signer_circuit_state{backend}                  0 closed, 1 half-open, 2 open
    anode_signer_healthy{backend}                        last health probe: 1 passed, 0 failed
    anode_sponsorships_total{method,result}              result: ok, or the error's stable code
    anode_http_request_duration_seconds{method,route,status}
    anode_watch_operations_total{chain,outcome}          outcomes the EntryPoint follower recorded: included, expired
    anode_watch_unknown_operations_total{chain,paymaster}  inclusions for a paymaster that the ledger never signed
    anode_watch_block{chain}                             the last block the follower processed
    anode_paymaster_deposit_wei{chain,entry_point,paymaster}  the paymaster's EntryPoint deposit, last read
    anode_paymaster_deposit_low{chain,entry_point,paymaster}  1 while the deposit is below low_balance_wei
    anode_deposit_alerts_total{chain,paymaster,result}   low-balance webhooks: sent, failed
    anode_worker_info{pid}                               1, labelled with the process id: each process
                                                         of ``anode serve --workers N`` counts on its own
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import IntEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from anode.errors import AnodeError

#: signing takes microseconds in process and tens of milliseconds in a KMS or over the network
_SIGNER_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class CircuitState(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class Metrics:
    """Every metric aNode exports, registered on ``registry`` (a fresh one unless given)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.signatures = Counter(
            "anode_signer_signatures", "Signatures produced, per signing backend", ["backend", "type"], registry=r
        )
        self.signer_latency = Histogram(
            "anode_signer_latency_seconds",
            "Time from asking a backend to sign to a verified signature",
            ["backend", "type"],
            buckets=_SIGNER_BUCKETS,
            registry=r,
        )
        self.signer_errors = Counter(
            "anode_signer_errors",
            "Signing attempts that failed, by kind (timeout, unavailable, bad_signature, circuit_open)",
            ["backend", "type", "kind"],
            registry=r,
        )
        self.failovers = Counter(
            "anode_signer_failovers", "Requests that moved on from this backend to the next", ["backend"], registry=r
        )
        self.circuit_state = Gauge(
            "anode_signer_circuit_state", "Circuit breaker: 0 closed, 1 half-open, 2 open", ["backend"], registry=r
        )
        self.healthy = Gauge(
            "anode_signer_healthy", "Last health probe of the backend: 1 passed, 0 failed", ["backend"], registry=r
        )
        self.sponsorships = Counter(
            "anode_sponsorships", "Sponsorship requests, by method and result", ["method", "result"], registry=r
        )
        self._sponsorship_children: dict[tuple[str, str], Counter] = {}
        #: called with (method, result) for every sponsorship answer (the dashboard's hourly counts)
        self.sponsorship_listeners: list[Callable[[str, str], None]] = []
        self.worker = Gauge("anode_worker_info", "This server process (one per --workers process)", ["pid"], registry=r)
        self.worker.labels(str(os.getpid())).set(1)
        self.request_latency = Histogram(
            "anode_http_request_duration_seconds",
            "HTTP request latency, by method, route template and status",
            ["method", "route", "status"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )

        self.watched_operations = Counter(
            "anode_watch_operations", "Ledger outcomes the follower recorded", ["chain", "outcome"], registry=r
        )
        self.unknown_operations = Counter(
            "anode_watch_unknown_operations",
            "Operations included for a configured paymaster that the ledger never signed",
            ["chain", "paymaster"],
            registry=r,
        )
        self.watched_block = Gauge("anode_watch_block", "Last block the follower processed", ["chain"], registry=r)
        deposit_labels = ["chain", "entry_point", "paymaster"]
        self.deposit = Gauge(
            "anode_paymaster_deposit_wei", "The paymaster's EntryPoint deposit, last read", deposit_labels, registry=r
        )
        self.deposit_low = Gauge(
            "anode_paymaster_deposit_low", "1 while the deposit is below low_balance_wei", deposit_labels, registry=r
        )
        self.deposit_alerts = Counter(
            "anode_deposit_alerts", "Low-deposit webhooks, by result (sent, failed)", ["chain", "paymaster", "result"],
            registry=r,
        )  # fmt: skip

    @contextmanager
    def sponsorship(self, method: str) -> Iterator[None]:
        """Count one sponsorship call: ``ok``, or the stable code of the error it raised."""
        try:
            yield
        except AnodeError as exc:
            self._sponsorship(method, exc.code).inc()
            raise
        except Exception:
            self._sponsorship(method, "ANODE_INTERNAL").inc()
            raise
        self._sponsorship(method, "ok").inc()

    def _sponsorship(self, method: str, result: str) -> Counter:
        """The counter child of (method, result), looked up once (``labels`` locks and builds keys)."""
        for listener in self.sponsorship_listeners:
            listener(method, result)
        child = self._sponsorship_children.get((method, result))
        if child is None:
            child = self._sponsorship_children[(method, result)] = self.sponsorships.labels(method, result)
        return child

    def render(self) -> bytes:
        """The registry in Prometheus text exposition format."""
        return generate_latest(self.registry)
