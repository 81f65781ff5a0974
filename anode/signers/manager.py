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
own address, low ``s``, and (``verify_signatures``, on by default) recovery to that address.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from coincurve import PublicKey
from eth_utils.address import to_checksum_address
from prometheus_client import Counter, Gauge, Histogram

from anode.errors import AnodeError, ConfigError, SignerUnavailable
from anode.metrics import CircuitState, Metrics
from anode.signers.base import EIP191_PREFIX, SECP256K1_N, SignedDigest, Signer, sign_eip191
from anode.signers.circuit import CircuitBreaker
from anode.signers.local import KeystoreSigner, LocalKeySigner
from anode.signers.manager_settings import BackendEntry, ManagerSettings
from anode.signers.mnemonic import MnemonicSigner
from anode.signers.registry import SignerSettingsBase, build_signer
from anode.userop.codec import checksum, parse_address
from anode.userop.keccak import keccak

#: aNode's own keys in this process, exactly these classes (a subclass, a test double or a plugin
#: may await something): they sign with coincurve and await nothing, so signing needs no timer,
#: and recovering their signatures proves nothing new
_SIGNS_IN_PROCESS = frozenset({LocalKeySigner, KeystoreSigner, MnemonicSigner})
log = logging.getLogger("anode.signers")

#: how one backend is asked for the signature (a bare digest, or an EIP-191 message hash)
_Sign = Callable[[Signer], Awaitable[SignedDigest]]


def _bare(digest: bytes) -> _Sign:
    return lambda signer: signer.unsafe_sign_hash(digest)


def _message(message_hash: bytes) -> _Sign:
    return lambda signer: sign_eip191(signer, message_hash)


def _eip191(message_hash: bytes) -> bytes:
    return keccak(EIP191_PREFIX + message_hash)


#: what health probes sign (EIP-191, as paymaster hashes are): a hash no paymaster's can equal
PROBE_HASH = keccak(b"anode: signer health probe, not a paymaster hash")
PROBE_DIGEST = _eip191(PROBE_HASH)


Role = Literal["primary", "backup", "retiring"]


@dataclass(frozen=True, slots=True)
class ManagedSignature(SignedDigest):
    """A signature and the backend (its name) that made it."""

    backend: str = ""


#: ``accepts(signer_address)``: does the paymaster contract accept this signer now?
AcceptanceCheck = Callable[[str], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class PaymasterTarget:
    """A paymaster the server signs for, as the manager needs to know it."""

    chain_id: int
    address: bytes
    #: ``verifying`` or ``singleton``
    contract: str
    accepts: AcceptanceCheck | None = None


class _Backend:
    def __init__(
        self, name: str, role: Role, signer: Signer, paymasters: frozenset[bytes] | None, breaker: CircuitBreaker
    ) -> None:
        self.name, self.role, self.signer, self.paymasters, self.breaker = name, role, signer, paymasters, breaker
        self.address = signer.address
        self.address_bytes = bytes.fromhex(self.address[2:])
        self.type = signer.backend
        #: one of aNode's own in-process keys (``_SIGNS_IN_PROCESS``)
        self.in_process = type(signer) in _SIGNS_IN_PROCESS
        self.healthy: bool | None = None
        self.checked_at: datetime | None = None
        self.last_error: str | None = None
        #: the last probe came back signed, but not as this backend's key over the probe digest
        self.wrong_key = False

    def bind(self, metrics: Metrics) -> None:
        """Look up the hot path's metric children once."""
        self.signed: Counter = metrics.signatures.labels(self.name, self.type)
        self.latency: Histogram = metrics.signer_latency.labels(self.name, self.type)
        self.circuit: Gauge = metrics.circuit_state.labels(self.name)
        self.circuit.set(CircuitState.CLOSED)

    def allows(self, paymaster: bytes) -> bool:
        return self.paymasters is None or paymaster in self.paymasters

    def declares(self, paymaster: bytes) -> bool:
        return self.paymasters is not None and paymaster in self.paymasters


def recovered(signed: SignedDigest) -> bytes | None:
    """The 20-byte address ``signed`` recovers to, or ``None`` for a malformed signature."""
    if signed.v not in (27, 28) or not 0 < signed.r < SECP256K1_N or not 0 < signed.s < SECP256K1_N:
        return None
    try:
        point = PublicKey.from_signature_and_message(
            signed.signature[:64] + bytes([signed.v - 27]), signed.digest, hasher=None
        )
    except ValueError:
        return None
    return keccak(point.format(compressed=False)[1:])[12:]


def recovered_address(signed: SignedDigest) -> str | None:
    """The checksummed address ``signed`` recovers to, or ``None`` for a malformed signature."""
    raw = recovered(signed)
    return None if raw is None else to_checksum_address(raw)


class ManagedSigner:
    """Several backends behind the ``Signer`` protocol, plus ``sign_for(paymaster, digest)``."""

    def __init__(
        self,
        backends: Sequence[_Backend],
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
        self._targets = list(targets)
        _check_backends(self._backends, self._targets)
        ordered = [b for b in self._backends if b.role != "retiring"] + [
            b for b in self._backends if b.role == "retiring"
        ]
        self._plans = {(t.chain_id, t.address): [b for b in ordered if b.allows(t.address)] for t in self._targets}
        self._ordered = ordered
        self._primary_group = [b for b in ordered if b.address == backends[0].address and b.role != "retiring"]
        #: (chain id, paymaster, signer address) → does the contract accept the signer (absent: not known)
        self._accepted: dict[tuple[int, bytes, str], bool] = {}
        #: (chain id, paymaster) whose retiring keys are done: the chain accepts a newer candidate
        self._switched: set[tuple[int, bytes]] = set()
        self._task: asyncio.Task[None] | None = None
        for backend in self._backends:
            backend.bind(self.metrics)

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
        backends: list[_Backend] = []
        try:
            for role, default, entry in entries:
                signer = build_signer(entry.signer)
                paymasters = frozenset(parse_address(p) for p in entry.paymasters) or None
                breaker = CircuitBreaker(settings.circuit.failures, settings.circuit.reset_after_s)
                name = entry.name or f"{default}:{signer.backend}"
                backends.append(_Backend(name, role, signer, paymasters, breaker))
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
        return [(b.name, b.role, b.address) for b in self._ordered if b.allows(paymaster)]

    async def unsafe_sign_hash(self, digest: bytes) -> ManagedSignature:
        """Sign with the primary's key (the primary, or a backup holding the same key)."""
        return await self._sign(self._primary_group, digest, _bare(digest), None)

    async def sign_eip191(self, message_hash: bytes) -> ManagedSignature:
        """``toEthSignedMessageHash(message_hash)`` with the primary's key (see ``signers.base.sign_eip191``)."""
        return await self._sign(self._primary_group, _eip191(message_hash), _message(message_hash), None)

    async def sign_for(self, paymaster: bytes, digest: bytes, *, chain_id: int | None = None) -> ManagedSignature:
        """Sign ``digest`` as is with a key ``paymaster`` (on ``chain_id``) accepts, failing over as needed."""
        return await self._sign(self._for(paymaster, chain_id), digest, _bare(digest), (paymaster, chain_id))

    async def sign_eip191_for(
        self, paymaster: bytes, message_hash: bytes, *, chain_id: int | None = None
    ) -> ManagedSignature:
        """Sign ``toEthSignedMessageHash(message_hash)`` (what paymasters recover from) for ``paymaster``.

        Each backend signs it its own way (a Web3Signer key signs the message, the others the digest).
        """
        candidates = self._for(paymaster, chain_id)
        return await self._sign(candidates, _eip191(message_hash), _message(message_hash), (paymaster, chain_id))

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await asyncio.gather(*(b.signer.aclose() for b in self._backends), return_exceptions=True)

    def __repr__(self) -> str:
        names = ", ".join(f"{b.name}={b.address}" for b in self._backends)
        return f"ManagedSigner({names})"

    # -- choosing and signing --

    def _for(self, paymaster: bytes, chain_id: int | None) -> list[_Backend]:
        candidates = self._candidates(paymaster, chain_id)
        if not candidates:
            raise SignerUnavailable(
                f"none of this server's signing keys is accepted by {_where(paymaster, chain_id)}: "
                "add one with `anode keys rotate`, or fix the signer configuration"
            )
        return candidates

    def _candidates(self, paymaster: bytes, chain_id: int | None) -> list[_Backend]:
        plan = self._plans.get((chain_id, paymaster)) if chain_id is not None else None
        if plan is None or chain_id is None:  # a paymaster the manager was not told about
            allowed = [b for b in self._ordered if b.allows(paymaster)]
            return [b for b in allowed if b.role != "retiring"] or allowed
        accepted = self._accepted
        switched = (chain_id, paymaster) in self._switched
        return [
            b
            for b in plan
            if not (b.role == "retiring" and switched) and accepted.get((chain_id, paymaster, b.address)) is not False
        ]

    async def _sign(
        self, candidates: list[_Backend], digest: bytes, sign: _Sign, target: tuple[bytes, int | None] | None
    ) -> ManagedSignature:
        """The first good signature of ``digest`` (made by ``sign``) from ``candidates``, in order."""
        failures: list[str] = []
        for index, backend in enumerate(candidates):
            signed = await self._try(backend, digest, sign, failures)
            if signed is not None:
                return signed
            if index + 1 < len(candidates):
                self.metrics.failovers.labels(backend.name).inc()
                log.debug("signer %s: %s; trying %s", backend.name, failures[-1], candidates[index + 1].name)
        where = "the primary's key" if target is None else _where(*target)
        raise SignerUnavailable(f"no signing backend could sign for {where}: " + "; ".join(failures))

    async def _try(self, backend: _Backend, digest: bytes, sign: _Sign, failures: list[str]) -> ManagedSignature | None:
        metrics = self.metrics
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
                problem = self._problem(backend, signed, digest)
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
                if backend.breaker.success():
                    self._closed(backend)
                backend.signed.inc()
                backend.latency.observe(time.perf_counter() - started)
                return ManagedSignature(signed.digest, signed.r, signed.s, signed.v, signed.signer, backend.name)
            self._failed(backend, problem)
            metrics.signer_errors.labels(backend.name, backend.type, kind).inc()
            failures.append(f"{backend.name}: {problem}")
            if attempt + 1 < self._attempts and self._backoff:
                await asyncio.sleep(self._backoff * 2**attempt)
        return None

    def _failed(self, backend: _Backend, problem: str | None) -> None:
        was = backend.breaker.state
        backend.breaker.failure()
        state = backend.breaker.state
        backend.circuit.set(state)
        if state is CircuitState.OPEN and was is not CircuitState.OPEN:
            log.warning(
                "signer %s (%s): circuit open after %s; requests skip it for %g s",
                backend.name,
                backend.type,
                problem,
                self._settings.circuit.reset_after_s,
            )

    def _closed(self, backend: _Backend) -> None:
        backend.circuit.set(CircuitState.CLOSED)
        log.info("signer %s (%s) signs again: circuit closed", backend.name, backend.type)

    def _problem(self, backend: _Backend, signed: SignedDigest, digest: bytes, *, recover: bool = False) -> str | None:
        if signed.digest != digest:
            return "signed another digest than the one asked"
        if signed.signer != backend.address:
            return f"signed as {signed.signer}, not as its own address {backend.address}"
        if not 0 < signed.s <= SECP256K1_N // 2 or signed.v not in (27, 28):
            return "returned a non-canonical signature (high s or bad v)"
        verify = self._settings.verify_signatures and not backend.in_process
        if (recover or verify) and recovered(signed) != backend.address_bytes:
            return "returned a signature that does not recover to its address"
        return None

    # -- health and the chain's view --

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

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._settings.health_interval_s)
            try:
                await self.refresh()
            except Exception:  # pragma: no cover - refresh catches per backend; keep watching regardless
                log.exception("signer health round failed")

    async def _probe(self, backend: _Backend) -> None:
        problem: str | None
        backend.wrong_key = False
        try:
            async with asyncio.timeout(self._timeout):
                signed = await sign_eip191(backend.signer, PROBE_HASH)
            problem = self._problem(backend, signed, PROBE_DIGEST, recover=True)
            backend.wrong_key = problem is not None
        except TimeoutError:
            problem = f"no signature within {self._settings.timeout_ms} ms"
        except AnodeError as exc:
            problem = exc.message
        except Exception as exc:
            problem = type(exc).__name__
        backend.healthy, backend.last_error = problem is None, problem
        backend.checked_at = datetime.now(UTC)
        if problem is None:
            if backend.breaker.success():
                self._closed(backend)
        else:
            self._failed(backend, f"health probe: {problem}")
        self.metrics.healthy.labels(backend.name).set(1 if problem is None else 0)

    async def _read_acceptance(self) -> None:
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
            self._accepted[(target.chain_id, target.address, address)] = accepted

        reads = [
            read(t, address)
            for t in self._targets
            if t.accepts is not None
            for address in dict.fromkeys(b.address for b in self._plans[(t.chain_id, t.address)])
        ]
        await asyncio.gather(*reads)
        for t in self._targets:
            key = (t.chain_id, t.address)
            plan = self._plans[key]
            if key in self._switched or not any(b.role == "retiring" for b in plan):
                continue
            newer = [b for b in plan if b.role != "retiring" and self._accepted.get((*key, b.address)) is True]
            if newer:
                self._switched.add(key)
                log.info(
                    "paymaster %s on chain %s accepts %s: signing switched to it; retiring keys no longer sign for it",
                    checksum(t.address),
                    t.chain_id,
                    newer[0].address,
                )

    def health(self) -> dict[str, Any]:
        """A snapshot for ``GET /health``: ``status`` is ``ok``, ``degraded`` (a backend is down or a
        paymaster is served by a backup) or ``down`` (some paymaster has no usable backend)."""
        status = "ok"
        paymasters: list[dict[str, Any]] = []
        targets: list[PaymasterTarget | None] = [*self._targets] or [None]
        for target in targets:
            if target is None:
                candidates = self._candidates(b"", None)
            else:
                candidates = self._candidates(target.address, target.chain_id)
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
            "address": self.address,
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


def _where(paymaster: bytes, chain_id: int | None) -> str:
    return f"paymaster {checksum(paymaster)}" + (f" on chain {chain_id}" if chain_id is not None else "")


def _check_backends(backends: list[_Backend], targets: list[PaymasterTarget]) -> None:
    """Refuse a configuration whose backups hold keys the paymasters do not accept."""
    served = {t.address for t in targets}
    for backend in backends:
        for paymaster in sorted(backend.paymasters or ()):
            if targets and paymaster not in served:
                raise ConfigError(
                    f"signer {backend.name} lists paymaster {checksum(paymaster)}, which no chain in this config serves"
                )
    for target in targets:
        where = f"paymaster {checksum(target.address)} on chain {target.chain_id}"
        active = [b for b in backends if b.role != "retiring" and b.allows(target.address)]
        retiring = [b for b in backends if b.role == "retiring" and b.allows(target.address)]
        if not active:
            raise ConfigError(f"signer: no backend may sign for {where} (check the backends' `paymasters:` lists)")
        first = active[0]
        for backend in active[1:]:
            if backend.address == first.address:
                continue
            if target.contract == "verifying":
                raise ConfigError(
                    f"signer {backend.name} ({backend.address}) may sign for VerifyingPaymaster {where}, whose one "
                    f"signer is {first.name}'s key ({first.address}): restrict it with `paymasters:`"
                )
            if not backend.declares(target.address):
                raise ConfigError(
                    f"signer {backend.name} ({backend.address}) holds another key than {first.name} "
                    f"({first.address}) and may sign for {where}: a backup with another key must list, "
                    "in `paymasters:`, the SingletonPaymasters that have it among their signers"
                )
        if retiring and target.contract == "verifying":
            raise ConfigError(
                f"signer {retiring[0].name} is retiring for VerifyingPaymaster {where}: its signer is immutable "
                "(deploy a new VerifyingPaymaster, or restrict the retiring key with `paymasters:`)"
            )


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
