"""Which backend signs: the backends in order for each paymaster, the chain's view of which keys
a paymaster accepts, and the start-up rules for backups (``anode/signers/manager.py`` describes
them for an operator).

For each paymaster the candidates are, in configuration order, the backends allowed for it
(``paymasters:`` empty means all), then the retiring ones. A candidate is skipped when the chain
says the paymaster does not accept its address; a retiring backend signs only while no other
candidate is known to be accepted (:meth:`Selection.switch_retiring`). Circuit breakers and
health are the manager's and :mod:`anode.signers.health`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from prometheus_client import Counter, Gauge, Histogram

from anode.errors import ConfigError, SignerUnavailable
from anode.metrics import CircuitState, Metrics
from anode.signers.base import RecoveredDigest, SignedDigest, Signer
from anode.signers.circuit import CircuitBreaker
from anode.signers.ecdsa import HALF_N, recovered
from anode.signers.local import KeystoreSigner, LocalKeySigner
from anode.signers.mnemonic import MnemonicSigner
from anode.userop.codec import checksum

log = logging.getLogger("anode.signers")

#: aNode's own keys in this process, exactly these classes (a subclass, a test double or a plugin
#: may await something): they sign with coincurve and await nothing, so signing needs no timer,
#: and recovering their signatures proves nothing new
_SIGNS_IN_PROCESS = frozenset({LocalKeySigner, KeystoreSigner, MnemonicSigner})

Role = Literal["primary", "backup", "retiring"]

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


class Backend:
    """One configured backend: its signer, role, allowed paymasters, circuit breaker and last health."""

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
        #: told when the circuit opens or closes and when the health probe's verdict changes
        #: (``(backend, kind, detail)``: the manager records it, ``store/signer_events.py``)
        self.on_event: Callable[[Backend, str, str | None], None] | None = None
        #: a ``circuit_open`` was told and no ``circuit_closed`` since
        self._told_open = False

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

    def problem(self, signed: SignedDigest, digest: bytes, *, recover: bool) -> str | None:
        """What is wrong with ``signed`` as this backend's signature of ``digest`` (``None``: nothing).

        ``recover``: also recover it to this backend's address, unless aNode's ECDSA code already
        did (a :class:`RecoveredDigest`): a signature is recovered once per request.
        """
        if signed.digest != digest:
            return "signed another digest than the one asked"
        if signed.signer != self.address:
            return f"signed as {signed.signer}, not as its own address {self.address}"
        if not 0 < signed.s <= HALF_N or signed.v not in (27, 28):
            return "returned a non-canonical signature (high s or bad v)"
        if recover and not isinstance(signed, RecoveredDigest) and recovered(signed) != self.address_bytes:
            return "returned a signature that does not recover to its address"
        return None

    def failed(self, problem: str | None) -> None:
        """Count a failure on the breaker; say so once when that opens the circuit."""
        was = self.breaker.state
        self.breaker.failure()
        state = self.breaker.state
        self.circuit.set(state)
        if state is CircuitState.OPEN and was is not CircuitState.OPEN:
            if self.on_event is not None:
                self._told_open = True
                self.on_event(self, "circuit_open", problem)
            log.warning(
                "signer %s (%s): circuit open after %s; requests skip it for %g s",
                self.name,
                self.type,
                problem,
                self.breaker.reset_after_s,
            )

    def succeeded(self) -> None:
        """Count a success on the breaker; say so when that closes the circuit."""
        if self.breaker.success():
            self.circuit.set(CircuitState.CLOSED)
            if self._told_open and self.on_event is not None:
                self._told_open = False
                self.on_event(self, "circuit_closed", None)
            log.info("signer %s (%s) signs again: circuit closed", self.name, self.type)


class Selection:
    """The candidates for each paymaster, in order, given what the chain is known to accept."""

    def __init__(self, backends: list[Backend], targets: list[PaymasterTarget]) -> None:
        check_backends(backends, targets)
        self.targets = targets
        ordered = [b for b in backends if b.role != "retiring"] + [b for b in backends if b.role == "retiring"]
        self.ordered = ordered
        self.plans = {(t.chain_id, t.address): [b for b in ordered if b.allows(t.address)] for t in targets}
        self.primary_group = [b for b in ordered if b.address == backends[0].address and b.role != "retiring"]
        #: (chain id, paymaster, signer address) → does the contract accept the signer (absent: not known)
        self.accepted: dict[tuple[int, bytes, str], bool] = {}
        #: (chain id, paymaster) whose retiring keys are done: the chain accepts a newer candidate
        self.switched: set[tuple[int, bytes]] = set()

    def roles_for(self, paymaster: bytes) -> list[tuple[str, Role, str]]:
        """``(name, role, address)`` of the backends that may sign for ``paymaster``, in order."""
        return [(b.name, b.role, b.address) for b in self.ordered if b.allows(paymaster)]

    def for_paymaster(self, paymaster: bytes, chain_id: int | None) -> list[Backend]:
        """The candidates for ``paymaster``; none is :class:`SignerUnavailable`."""
        candidates = self.candidates(paymaster, chain_id)
        if not candidates:
            raise SignerUnavailable(
                f"none of this server's signing keys is accepted by {where(paymaster, chain_id)}: "
                "add one with `anode keys rotate`, or fix the signer configuration"
            )
        return candidates

    def candidates(self, paymaster: bytes, chain_id: int | None) -> list[Backend]:
        plan = self.plans.get((chain_id, paymaster)) if chain_id is not None else None
        if plan is None or chain_id is None:  # a paymaster the manager was not told about
            allowed = [b for b in self.ordered if b.allows(paymaster)]
            return [b for b in allowed if b.role != "retiring"] or allowed
        accepted = self.accepted
        switched = (chain_id, paymaster) in self.switched
        return [
            b
            for b in plan
            if not (b.role == "retiring" and switched) and accepted.get((chain_id, paymaster, b.address)) is not False
        ]

    def switch_retiring(self) -> None:
        """Stop the retiring keys of every paymaster that accepts a newer candidate, for good."""
        for t in self.targets:
            key = (t.chain_id, t.address)
            plan = self.plans[key]
            if key in self.switched or not any(b.role == "retiring" for b in plan):
                continue
            newer = [b for b in plan if b.role != "retiring" and self.accepted.get((*key, b.address)) is True]
            if newer:
                self.switched.add(key)
                log.info(
                    "paymaster %s on chain %s accepts %s: signing switched to it; retiring keys no longer sign for it",
                    checksum(t.address),
                    t.chain_id,
                    newer[0].address,
                )


def where(paymaster: bytes, chain_id: int | None) -> str:
    return f"paymaster {checksum(paymaster)}" + (f" on chain {chain_id}" if chain_id is not None else "")


def check_backends(backends: list[Backend], targets: list[PaymasterTarget]) -> None:
    """Refuse a configuration whose backups hold keys the paymasters do not accept."""
    served = {t.address for t in targets}
    for backend in backends:
        for paymaster in sorted(backend.paymasters or ()):
            if targets and paymaster not in served:
                raise ConfigError(
                    f"signer {backend.name} lists paymaster {checksum(paymaster)}, which no chain in this config serves"
                )
    for target in targets:
        here = f"paymaster {checksum(target.address)} on chain {target.chain_id}"
        active = [b for b in backends if b.role != "retiring" and b.allows(target.address)]
        retiring = [b for b in backends if b.role == "retiring" and b.allows(target.address)]
        if not active:
            raise ConfigError(f"signer: no backend may sign for {here} (check the backends' `paymasters:` lists)")
        first = active[0]
        for backend in active[1:]:
            if backend.address == first.address:
                continue
            if target.contract == "verifying":
                raise ConfigError(
                    f"signer {backend.name} ({backend.address}) may sign for VerifyingPaymaster {here}, whose one "
                    f"signer is {first.name}'s key ({first.address}): restrict it with `paymasters:`"
                )
            if not backend.declares(target.address):
                raise ConfigError(
                    f"signer {backend.name} ({backend.address}) holds another key than {first.name} "
                    f"({first.address}) and may sign for {here}: a backup with another key must list, "
                    "in `paymasters:`, the SingletonPaymasters that have it among their signers"
                )
        if retiring and target.contract == "verifying":
            raise ConfigError(
                f"signer {retiring[0].name} is retiring for VerifyingPaymaster {here}: its signer is immutable "
                "(deploy a new VerifyingPaymaster, or restrict the retiring key with `paymasters:`)"
            )
