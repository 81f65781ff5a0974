"""Health of the signer manager's backends and the chain's view of who may sign.

Every ``health_interval_s`` (and once at start-up) each backend signs a probe (EIP-191, as
paymaster hashes are, over a hash no paymaster's can equal) and every paymaster is asked whether
it accepts each candidate's address (``signers(address)`` of a SingletonPaymaster,
``verifyingSigner()`` of a VerifyingPaymaster). A probe feeds the backend's circuit breaker like
a request does; a probe signed by another key than the backend's stops start-up. The snapshot
for ``GET /health`` is :meth:`HealthMonitor.snapshot`.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from anode.errors import AnodeError, ConfigError
from anode.metrics import CircuitState, Metrics
from anode.signers.base import eip191_digest, sign_eip191
from anode.signers.manager_settings import ManagerSettings
from anode.signers.selection import Backend, PaymasterTarget, Selection
from anode.userop.codec import checksum
from anode.userop.keccak import keccak

log = logging.getLogger("anode.signers")

#: what health probes sign (EIP-191, as paymaster hashes are): a hash no paymaster's can equal
PROBE_HASH = keccak(b"anode: signer health probe, not a paymaster hash")
PROBE_DIGEST = eip191_digest(PROBE_HASH)


class HealthMonitor:
    """Probes the backends and reads the paymasters' acceptance, at start-up and then periodically."""

    def __init__(
        self, backends: list[Backend], selection: Selection, settings: ManagerSettings, metrics: Metrics
    ) -> None:
        self._backends = backends
        self._selection = selection
        self._settings = settings
        self._timeout = settings.timeout_ms / 1000
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Check backends and acceptance once (a backend signing as another address refuses start-up),
        then keep checking every ``health_interval_s``."""
        await self.refresh()
        wrong = [b for b in self._backends if b.wrong_key]
        if wrong:
            raise ConfigError(
                "signer: " + "; ".join(f"{b.name} {b.last_error}" for b in wrong) + ": it would sign with the wrong key"
            )
        for backend in self._backends:
            if backend.healthy is False:
                log.warning(
                    "signer %s (%s) failed its health probe: %s", backend.name, backend.type, backend.last_error
                )
        if self._settings.health_interval_s > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="anode-signer-health")

    async def refresh(self) -> None:
        """One round: probe every backend and read which signers each paymaster accepts."""
        await asyncio.gather(self._read_acceptance(), *(self._probe(b) for b in self._backends))

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._settings.health_interval_s)
            try:
                await self.refresh()
            except Exception:  # pragma: no cover - refresh catches per backend; keep watching regardless
                log.exception("signer health round failed")

    async def _probe(self, backend: Backend) -> None:
        problem: str | None
        backend.wrong_key = False
        try:
            async with asyncio.timeout(self._timeout):
                signed = await sign_eip191(backend.signer, PROBE_HASH)
            problem = backend.problem(signed, PROBE_DIGEST, recover=True)
            backend.wrong_key = problem is not None
        except TimeoutError:
            problem = f"no signature within {self._settings.timeout_ms} ms"
        except AnodeError as exc:
            problem = exc.message
        except Exception as exc:
            problem = type(exc).__name__
        was, healthy = backend.healthy, problem is None
        backend.healthy, backend.last_error = healthy, problem
        if backend.on_event is not None and (was is False if healthy else was is not False):  # the verdict changed
            backend.on_event(backend, "healthy" if healthy else "unhealthy", problem)
        backend.checked_at = datetime.now(UTC)
        if problem is None:
            backend.succeeded()
        else:
            backend.failed(f"health probe: {problem}")
        self._metrics.healthy.labels(backend.name).set(1 if problem is None else 0)

    async def _read_acceptance(self) -> None:
        selection = self._selection

        async def read(target: PaymasterTarget, address: str) -> None:
            assert target.accepts is not None
            try:
                async with asyncio.timeout(max(self._timeout, 5.0)):
                    accepted = await target.accepts(address)
            except Exception as exc:  # keep what was known; the next round tries again
                log.warning(
                    "could not read whether paymaster %s accepts %s (%s)",
                    checksum(target.address),
                    address,
                    exc.message if isinstance(exc, AnodeError) else type(exc).__name__,
                )
                return
            selection.accepted[(target.chain_id, target.address, address)] = accepted

        reads = [
            read(t, address)
            for t in selection.targets
            if t.accepts is not None
            for address in dict.fromkeys(b.address for b in selection.plans[(t.chain_id, t.address)])
        ]
        await asyncio.gather(*reads)
        selection.switch_retiring()

    def snapshot(self, address: str) -> dict[str, Any]:
        """For ``GET /health``: ``status`` is ``ok``, ``degraded`` (a backend is down or a paymaster
        is served by a backup) or ``down`` (some paymaster has no usable backend)."""
        selection = self._selection
        status = "ok"
        paymasters: list[dict[str, Any]] = []
        targets: list[PaymasterTarget | None] = [*selection.targets] or [None]
        for target in targets:
            if target is None:
                candidates = selection.candidates(b"", None)
            else:
                candidates = selection.candidates(target.address, target.chain_id)
            usable = [b for b in candidates if b.healthy is not False and b.breaker.state is not CircuitState.OPEN]
            if not usable:
                status = "down"
            elif usable[0] is not candidates[0] and status == "ok":
                status = "degraded"
            if target is not None:
                paymasters.append(
                    {
                        "chainId": target.chain_id,
                        "paymaster": checksum(target.address),
                        "contract": target.contract,
                        "signingWith": usable[0].name if usable else None,
                        "candidates": [b.name for b in candidates],
                    }
                )
        if status == "ok" and any(b.healthy is False for b in self._backends if b.role != "retiring"):
            status = "degraded"
        return {
            "status": status,
            "address": address,
            "backends": [
                {
                    "name": b.name,
                    "type": b.type,
                    "role": b.role,
                    "address": b.address,
                    "paymasters": sorted(checksum(p) for p in b.paymasters) if b.paymasters is not None else "all",
                    "circuit": b.breaker.state.name.lower(),
                    "healthy": b.healthy,
                    "checkedAt": b.checked_at.isoformat() if b.checked_at else None,
                    "lastError": b.last_error,
                }
                for b in self._backends
            ],
            "paymasters": paymasters,
        }
