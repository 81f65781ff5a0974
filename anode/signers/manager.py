"""The signer manager: several backends behind one signer, with retries, failover, a circuit
breaker per backend, health checks and metrics.

    signer:
      primary: {type: aws_kms, key_id: …, region: eu-west-1}
      backups:
        - {type: aws_kms, key_id: …, region: us-east-1}            # the same key elsewhere
        - {type: pkcs11, …, paymasters: [0xSingleton…]}             # another signer of a SingletonPaymaster
      retiring: [{type: keystore, …}]                               # the key being rotated out
      retry: {attempts: 2, backoff_ms: 25}
      timeout_ms: 2000
      circuit: {failures: 5, reset_after_s: 30}
      health_interval_s: 10

A single backend mapping (``signer: {type: local, …}``) is a manager of one.

**Which backend signs.** For each paymaster the candidates are, in configuration order, the
backends allowed for it (``paymasters:`` empty means all), then the retiring ones. A candidate
is skipped when its circuit is open, and when the chain says the paymaster does not accept its
address (``signers(address)`` of a SingletonPaymaster, ``verifyingSigner()`` of a
VerifyingPaymaster, read at start-up and every ``health_interval_s``). A retiring backend signs
only while no other candidate is known to be accepted: once the chain accepts the new key the
manager switches to it for good, which is what ``anode keys rotate`` waits for.

**Which backends may be backups.** A backup must hold a key the paymaster accepts, so at
start-up every backend allowed for a paymaster either shares the address of the first one, or
lists that paymaster in ``paymasters:`` and the paymaster is a SingletonPaymaster (a
VerifyingPaymaster has exactly one signer).

**Failures.** Each attempt has ``timeout_ms``. An error or a timeout is retried ``attempts``
times with exponential backoff, then the next candidate is tried. ``circuit.failures``
consecutive failures open a backend's circuit: no request waits on it until ``reset_after_s``
has passed, then one request (or the next health probe) tries it (half-open); success closes
the circuit. Every signature is checked before it is returned: the digest asked, the backend's
own address, low ``s``, and (``verify_signatures``, on by default) recovery to that address,
once: a backend whose answer aNode's ECDSA code already recovered (remote, KMS, HSM) is not
recovered again.

**Events.** A failover (from which backend to which, and why), a circuit opening or closing and a
health probe's verdict changing are told to the sinks given to :meth:`ManagedSigner.report_to`
(the server's is ``store/signer_events.py``, which the dashboard plots). A sink's ``record`` must
not wait on anything: it is called on the signing path, though only when something fails.

This module is the signing core; which backend may sign is :mod:`anode.signers.selection`,
probes and the chain's view are :mod:`anode.signers.health`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from anode.errors import AnodeError, ConfigError, SignerUnavailable
from anode.metrics import Metrics
from anode.signers.base import SignedDigest, Signer, eip191_digest, sign_eip191
from anode.signers.circuit import CircuitBreaker
from anode.signers.health import HealthMonitor
from anode.signers.manager_settings import BackendEntry, ManagerSettings
from anode.signers.registry import SignerSettingsBase, build_signer
from anode.signers.selection import Backend, PaymasterTarget, Role, Selection, where
from anode.userop.codec import parse_address

__all__ = ["ManagedSignature", "ManagedSigner", "PaymasterTarget", "SignerEvents"]

log = logging.getLogger("anode.signers")

#: how one backend is asked for the signature (a bare digest, or an EIP-191 message hash)
_Sign = Callable[[Signer], Awaitable[SignedDigest]]


def _bare(digest: bytes) -> _Sign:
    return lambda signer: signer.unsafe_sign_hash(digest)


def _message(message_hash: bytes) -> _Sign:
    return lambda signer: sign_eip191(signer, message_hash)


class SignerEvents(Protocol):
    """Where the manager reports failovers and health changes (``store.signer_events.SignerEventLog``)."""

    def record(
        self,
        kind: str,
        backend: str,
        address: str,
        *,
        to_backend: str | None = None,
        to_address: str | None = None,
        detail: str | None = None,
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class ManagedSignature(SignedDigest):
    """A signature and the backend (its name) that made it."""

    backend: str = ""


class ManagedSigner:
    """Several backends behind the ``Signer`` protocol, plus ``sign_for(paymaster, digest)``."""

    def __init__(
        self,
        backends: Sequence[Backend],
        settings: ManagerSettings,
        metrics: Metrics | None = None,
        targets: Sequence[PaymasterTarget] = (),
    ) -> None:
        if not backends or backends[0].role != "primary":
            raise ConfigError("signer: a primary backend is required")
        self._backends = list(backends)
        self._settings = settings
        self._timeout = settings.timeout_ms / 1000
        self._attempts = settings.retry.attempts
        self._backoff = settings.retry.backoff_ms / 1000
        self.metrics = metrics if metrics is not None else Metrics()
        self._selection = Selection(self._backends, list(targets))
        self._health = HealthMonitor(self._backends, self._selection, settings, self.metrics)
        self._sinks: list[SignerEvents] = []
        for backend in self._backends:
            backend.bind(self.metrics)
            backend.on_event = self._backend_event

    @classmethod
    def from_settings(
        cls,
        settings: SignerSettingsBase | ManagerSettings,
        *,
        metrics: Metrics | None = None,
        targets: Sequence[PaymasterTarget] = (),
    ) -> ManagedSigner:
        """Build every configured backend (closing those built if one fails) and the manager over them."""
        if isinstance(settings, SignerSettingsBase):
            settings = ManagerSettings(primary=BackendEntry(signer=settings))
        entries: list[tuple[Role, str, BackendEntry]] = [("primary", "primary", settings.primary)]
        entries += [("backup", f"backup{i}", entry) for i, entry in enumerate(settings.backups, 1)]
        entries += [("retiring", f"retiring{i}", entry) for i, entry in enumerate(settings.retiring, 1)]
        backends: list[Backend] = []
        try:
            for role, default, entry in entries:
                signer = build_signer(entry.signer)
                paymasters = frozenset(parse_address(p) for p in entry.paymasters) or None
                breaker = CircuitBreaker(settings.circuit.failures, settings.circuit.reset_after_s)
                name = entry.name or f"{default}:{signer.backend}"
                backends.append(Backend(name, role, signer, paymasters, breaker))
            if len({b.name for b in backends}) != len(backends):
                raise ConfigError("signer: backend names must be unique")
            return cls(backends, settings, metrics, targets)
        except BaseException:
            _close_quietly([backend.signer for backend in backends])
            raise

    # -- the Signer protocol --

    @property
    def address(self) -> str:
        return self._backends[0].address

    @property
    def backend(self) -> str:
        return self._backends[0].type

    @property
    def backends(self) -> list[tuple[str, str, str]]:
        """``(name, type, address)`` of every backend, primary first."""
        return [(b.name, b.type, b.address) for b in self._backends]

    def roles_for(self, paymaster: bytes) -> list[tuple[str, Role, str]]:
        """``(name, role, address)`` of the backends that may sign for ``paymaster``, in order."""
        return self._selection.roles_for(paymaster)

    async def unsafe_sign_hash(self, digest: bytes) -> ManagedSignature:
        """Sign with the primary's key (the primary, or a backup holding the same key)."""
        return await self._sign(self._selection.primary_group, digest, _bare(digest), None)

    async def sign_eip191(self, message_hash: bytes) -> ManagedSignature:
        """``toEthSignedMessageHash(message_hash)`` with the primary's key (see ``signers.base.sign_eip191``)."""
        digest = eip191_digest(message_hash)
        return await self._sign(self._selection.primary_group, digest, _message(message_hash), None)

    async def sign_for(self, paymaster: bytes, digest: bytes, *, chain_id: int | None = None) -> ManagedSignature:
        """Sign ``digest`` as is with a key ``paymaster`` (on ``chain_id``) accepts, failing over as needed."""
        candidates = self._selection.for_paymaster(paymaster, chain_id)
        return await self._sign(candidates, digest, _bare(digest), (paymaster, chain_id))

    async def sign_eip191_for(
        self, paymaster: bytes, message_hash: bytes, *, chain_id: int | None = None
    ) -> ManagedSignature:
        """Sign ``toEthSignedMessageHash(message_hash)`` (what paymasters recover from) for ``paymaster``.

        Each backend signs it its own way (a Web3Signer key signs the message, the others the digest).
        """
        candidates = self._selection.for_paymaster(paymaster, chain_id)
        digest = eip191_digest(message_hash)
        return await self._sign(candidates, digest, _message(message_hash), (paymaster, chain_id))

    async def aclose(self) -> None:
        await self._health.aclose()
        await asyncio.gather(*(b.signer.aclose() for b in self._backends), return_exceptions=True)

    def __repr__(self) -> str:
        names = ", ".join(f"{b.name}={b.address}" for b in self._backends)
        return f"ManagedSigner({names})"

    # -- events --

    def report_to(self, sink: SignerEvents) -> None:
        """Tell ``sink`` of every failover, circuit opening or closing and health verdict change."""
        self._sinks.append(sink)

    def _backend_event(self, backend: Backend, kind: str, detail: str | None) -> None:
        for sink in self._sinks:
            sink.record(kind, backend.name, backend.address, detail=detail)

    # -- health (signers/health.py) --

    async def start(self) -> None:
        """Check backends and acceptance once (a backend signing as another address refuses start-up),
        then keep checking every ``health_interval_s``."""
        await self._health.start()

    async def refresh(self) -> None:
        """One round: probe every backend and read which signers each paymaster accepts."""
        await self._health.refresh()

    def health(self) -> dict[str, Any]:
        """A snapshot for ``GET /health`` (see :meth:`HealthMonitor.snapshot`)."""
        return self._health.snapshot(self.address)

    # -- signing --

    async def _sign(
        self, candidates: list[Backend], digest: bytes, sign: _Sign, target: tuple[bytes, int | None] | None
    ) -> ManagedSignature:
        """The first good signature of ``digest`` (made by ``sign``) from ``candidates``, in order."""
        failures: list[str] = []
        for index, backend in enumerate(candidates):
            signed = await self._try(backend, digest, sign, failures)
            if signed is not None:
                return signed
            if index + 1 < len(candidates):
                following = candidates[index + 1]
                self.metrics.failovers.labels(backend.name).inc()
                for sink in self._sinks:
                    sink.record(
                        "failover",
                        backend.name,
                        backend.address,
                        to_backend=following.name,
                        to_address=following.address,
                        detail=failures[-1],
                    )
                log.debug("signer %s: %s; trying %s", backend.name, failures[-1], following.name)
        here = "the primary's key" if target is None else where(*target)
        raise SignerUnavailable(f"no signing backend could sign for {here}: " + "; ".join(failures))

    async def _try(self, backend: Backend, digest: bytes, sign: _Sign, failures: list[str]) -> ManagedSignature | None:
        metrics = self.metrics
        verify = self._settings.verify_signatures and not backend.in_process
        for attempt in range(self._attempts):
            if not backend.breaker.allow():
                metrics.signer_errors.labels(backend.name, backend.type, "circuit_open").inc()
                failures.append(f"{backend.name}: circuit open")
                return None
            started = time.perf_counter()
            try:
                if backend.in_process:  # a key in this process signs without awaiting anything: no timer
                    signed = await sign(backend.signer)
                else:
                    async with asyncio.timeout(self._timeout):
                        signed = await sign(backend.signer)
                problem = backend.problem(signed, digest, recover=verify)
                kind = "bad_signature" if problem else None
            except TimeoutError:
                kind, problem = "timeout", f"no signature within {self._settings.timeout_ms} ms"
            except AnodeError as exc:
                kind, problem = "unavailable", exc.message
            except Exception as exc:
                kind, problem = "unavailable", type(exc).__name__
                log.warning("signer %s raised %s", backend.name, type(exc).__name__)
            except BaseException:
                backend.breaker.release()
                raise
            if kind is None:
                backend.succeeded()
                backend.signed.inc()
                backend.latency.observe(time.perf_counter() - started)
                return ManagedSignature(signed.digest, signed.r, signed.s, signed.v, signed.signer, backend.name)
            backend.failed(problem)
            metrics.signer_errors.labels(backend.name, backend.type, kind).inc()
            failures.append(f"{backend.name}: {problem}")
            if attempt + 1 < self._attempts and self._backoff:
                await asyncio.sleep(self._backoff * 2**attempt)
        return None


_closing: set[asyncio.Future[Any]] = set()


def _close_quietly(signers: list[Signer]) -> None:
    """Close the backends already built when a later one fails (start-up is synchronous)."""

    async def close_all() -> None:
        await asyncio.gather(*(signer.aclose() for signer in signers), return_exceptions=True)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(close_all())
        return
    closing = asyncio.ensure_future(close_all())
    _closing.add(closing)
    closing.add_done_callback(_closing.discard)
