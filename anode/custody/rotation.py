"""Rotating the key a SingletonPaymaster accepts, without a failed request.

A SingletonPaymaster keeps a set of signers (``signers(address)``, changed by its owner or a
manager with ``addSigner`` / ``removeSigner``), so two keys can be valid at once. ``anode keys
rotate`` drives four steps, each recorded in the audit log and each skipped when already done,
so the command can be run again after an interruption:

1. **prove**: the old and the new key both sign ``keccak(abi.encode("anode-rotation", old, new,
   chainId, paymaster, timestamp))`` (EIP-191); the proof is kept in the audit log.
2. **add**: ``addSigner(new)`` is sent from the owner's key, or printed for the owner to send;
   then the chain is polled until ``signers(new)`` is true.
3. **switch**: servers whose configuration has the new key as a signer and the old one under
   ``signer.retiring`` switch by themselves: their signer manager reads ``signers(new)`` every
   ``health_interval_s`` and, once it is true, stops signing with the retiring key for good.
   The command waits that long (plus a signing timeout) so every server has switched.
4. **remove**: the ledger knows the latest ``validUntil`` the old key signed; once that window
   (plus a margin for chain clocks) has passed, ``removeSigner(old)`` is sent or printed, and
   the chain is polled until ``signers(old)`` is false.

Every operation the old key signed therefore stays valid for its whole window, and no server
signs with it after the switch.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import rlp
import sqlalchemy as sa
from eth_abi.abi import encode
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils.abi import function_signature_to_4byte_selector
from eth_utils.crypto import keccak

from anode.chain.client import ChainClient
from anode.errors import ChainUnavailable, UpstreamRejected
from anode.signers.base import Signer, sign_eip191
from anode.signers.selection import AcceptanceCheck
from anode.store import audit
from anode.store.ledger import max_valid_until
from anode.userop.codec import checksum, parse_bytes, parse_quantity

SIGNERS = function_signature_to_4byte_selector("signers(address)")
ADD_SIGNER = function_signature_to_4byte_selector("addSigner(address)")
REMOVE_SIGNER = function_signature_to_4byte_selector("removeSigner(address)")
VERIFYING_SIGNER = function_signature_to_4byte_selector("verifyingSigner()")
ROTATION_TAG = "anode-rotation"

PROOF, ADDED, SWITCHED, REMOVED = (
    "rotation.proof",
    "rotation.signer_added",
    "rotation.switched",
    "rotation.signer_removed",
)


def _word(address: str) -> bytes:
    return b"\x00" * 12 + bytes.fromhex(address[2:])


# -- what the contracts accept ------------------------------------------------------------------


async def is_signer(chain: ChainClient, paymaster: bytes, address: str) -> bool:
    """``signers(address)`` of a SingletonPaymaster."""
    raw = await chain.call(paymaster, SIGNERS + _word(address))
    if len(raw) < 32:
        raise ChainUnavailable(
            f"{checksum(paymaster)} has no signers(address): is it a SingletonPaymaster deployed on this chain?"
        )
    return int.from_bytes(raw[:32], "big") != 0


def acceptance_check(chain: ChainClient, paymaster: bytes, contract: str) -> AcceptanceCheck:
    """``accepts(address)`` for the signer manager: ``signers(address)`` of a SingletonPaymaster,
    ``verifyingSigner() == address`` of a VerifyingPaymaster (immutable: read once)."""
    if contract == "singleton":
        return lambda address: is_signer(chain, paymaster, address)
    known: list[str] = []

    async def verifying(address: str) -> bool:
        if not known:
            raw = await chain.call(paymaster, VERIFYING_SIGNER)
            if len(raw) < 32:
                raise ChainUnavailable(f"{checksum(paymaster)} has no verifyingSigner()")
            known.append(checksum(raw[12:32]))
        return known[0] == address

    return verifying


# -- the proof ----------------------------------------------------------------------------------


def rotation_hash(old: str, new: str, chain_id: int, paymaster: str, timestamp: int) -> bytes:
    """``keccak256(abi.encode("anode-rotation", old, new, chainId, paymaster, timestamp))``."""
    types = ["string", "address", "address", "uint256", "address", "uint256"]
    return keccak(encode(types, [ROTATION_TAG, old, new, chain_id, paymaster, timestamp]))


@dataclass(frozen=True, slots=True)
class RotationProof:
    """Both keys' EIP-191 signatures over :func:`rotation_hash`."""

    old: str
    new: str
    chain_id: int
    paymaster: str
    timestamp: int
    old_signature: str
    new_signature: str

    @property
    def message_hash(self) -> bytes:
        return rotation_hash(self.old, self.new, self.chain_id, self.paymaster, self.timestamp)

    def verify(self) -> bool:
        message = encode_defunct(primitive=self.message_hash)
        try:
            old = Account.recover_message(message, signature=bytes.fromhex(self.old_signature[2:]))
            new = Account.recover_message(message, signature=bytes.fromhex(self.new_signature[2:]))
        except (ValueError, TypeError):
            return False
        return bool(old == self.old and new == self.new)

    def detail(self) -> dict[str, Any]:
        return {
            "old": self.old,
            "new": self.new,
            "chainId": self.chain_id,
            "paymaster": self.paymaster,
            "timestamp": self.timestamp,
            "messageHash": "0x" + self.message_hash.hex(),
            "oldSignature": self.old_signature,
            "newSignature": self.new_signature,
        }

    @classmethod
    def from_detail(cls, detail: dict[str, Any]) -> RotationProof:
        return cls(
            detail["old"],
            detail["new"],
            int(detail["chainId"]),
            detail["paymaster"],
            int(detail["timestamp"]),
            detail["oldSignature"],
            detail["newSignature"],
        )


async def sign_proof(old: Signer, new: Signer, chain_id: int, paymaster: bytes, timestamp: int) -> RotationProof:
    message = rotation_hash(old.address, new.address, chain_id, checksum(paymaster), timestamp)
    by_old, by_new = await asyncio.gather(sign_eip191(old, message), sign_eip191(new, message))
    proof = RotationProof(
        old.address,
        new.address,
        chain_id,
        checksum(paymaster),
        timestamp,
        "0x" + by_old.signature.hex(),
        "0x" + by_new.signature.hex(),
    )
    if not proof.verify():
        raise UpstreamRejected("the rotation proof does not verify: a signer signed with another key than it reports")
    return proof


# -- transactions -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContractCall:
    """A transaction the paymaster's owner sends: what ``--print-tx`` shows."""

    chain_id: int
    to: str
    data: bytes
    description: str
    #: wei sent with the call (``anode deposit add``: the deposit)
    value: int = 0

    def printable(self) -> dict[str, Any]:
        return {
            "chainId": self.chain_id,
            "to": self.to,
            "value": hex(self.value),
            "data": "0x" + self.data.hex(),
            "description": self.description,
        }


async def signed_transaction(
    owner: Signer, call: ContractCall, *, nonce: int, tip: int, max_fee: int, gas: int
) -> bytes:
    """An EIP-1559 (type 2) transaction carrying ``call``, signed by ``owner`` (any backend)."""
    fields: list[Any] = [call.chain_id, nonce, tip, max_fee, gas, parse_bytes(call.to), call.value, call.data, []]
    signed = await owner.unsafe_sign_hash(keccak(b"\x02" + rlp.encode(fields)))
    encoded: bytes = rlp.encode([*fields, signed.v - 27, signed.r, signed.s])
    return b"\x02" + encoded


async def send_transaction(chain: ChainClient, owner: Signer, call: ContractCall, *, timeout_s: float = 120) -> str:
    """Sign ``call`` as an EIP-1559 transaction with ``owner`` (any backend), send it, wait for it to succeed."""
    sender = owner.address

    async def quantity(method: str, params: list[Any]) -> int:
        return chain.parsed(method, await chain.request(method, params), parse_quantity)

    nonce = await quantity("eth_getTransactionCount", [sender, "pending"])
    block = await chain.request("eth_getBlockByNumber", ["latest", False])
    if not isinstance(block, dict):
        raise ChainUnavailable(f"{chain.label} at {chain.display_url} answered eth_getBlockByNumber with no block")
    base_fee = chain.parsed("eth_getBlockByNumber", block.get("baseFeePerGas") or "0x0", parse_quantity)
    try:
        tip = await quantity("eth_maxPriorityFeePerGas", [])
    except UpstreamRejected:
        tip = 10**9
    request = {"from": sender, "to": call.to, "data": "0x" + call.data.hex(), "value": hex(call.value)}
    try:
        gas = await quantity("eth_estimateGas", [request])
    except UpstreamRejected as exc:
        raise UpstreamRejected(f"{call.description} would revert when sent from {sender}: {exc.message}") from None
    raw = await signed_transaction(owner, call, nonce=nonce, tip=tip, max_fee=2 * base_fee + tip, gas=gas * 6 // 5)
    tx_hash = str(await chain.request("eth_sendRawTransaction", ["0x" + raw.hex()]))
    deadline = time.monotonic() + timeout_s
    while (receipt := await chain.request("eth_getTransactionReceipt", [tx_hash])) is None:
        if time.monotonic() > deadline:
            raise ChainUnavailable(f"{call.description}: transaction {tx_hash} was not mined in {timeout_s:.0f} s")
        await asyncio.sleep(0.2)
    status = chain.parsed("eth_getTransactionReceipt", receipt.get("status") if isinstance(receipt, dict) else None,
                          parse_quantity)  # fmt: skip
    if status != 1:
        raise UpstreamRejected(f"{call.description}: transaction {tx_hash} reverted")
    return tx_hash


# -- the orchestration --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RotationTarget:
    chain_id: int
    paymaster: bytes
    chain: ChainClient


@dataclass
class Rotation:
    """One rotation from ``old`` to ``new`` on every paymaster in ``targets``.

    ``owner`` signs the owner's transactions; without one they are printed (``report``) and the
    chain is polled until someone has sent them. ``switch_wait_s`` is how long servers may take to
    notice the new signer (their ``health_interval_s`` plus a signing timeout); ``margin_s`` is
    added to the old key's last ``validUntil`` before it is removed.
    """

    old: Signer
    new: Signer
    targets: list[RotationTarget]
    engine: sa.Engine
    owner: Signer | None = None
    switch_wait_s: float = 15.0
    margin_s: float = 60.0
    poll_s: float = 2.0
    timeout_s: float = 3600.0
    report: Callable[[str], None] = print
    clock: Callable[[], float] = time.time
    printed: list[dict[str, Any]] = field(default_factory=list)

    async def run(self, *, switch: bool = True) -> None:
        """All four steps; with ``switch=False`` only the first two (servers not yet configured)."""
        await self.prove()
        await self.add()
        if switch:
            await self.switch()
            await self.remove()

    async def prove(self) -> list[RotationProof]:
        proofs = []
        existing = {
            (r["chain_id"], r["paymaster"]): r["detail"] for r in await self._records(PROOF) if self._ours(r["detail"])
        }
        for target in self.targets:
            paymaster = checksum(target.paymaster)
            if (target.chain_id, paymaster) in existing:
                proof = RotationProof.from_detail(existing[(target.chain_id, paymaster)])
                self.report(f"proof for {paymaster} on chain {target.chain_id}: already in the audit log")
            else:
                proof = await sign_proof(self.old, self.new, target.chain_id, target.paymaster, int(self.clock()))
                await self._audit(PROOF, target, proof.detail())
                self.report(f"proof for {paymaster} on chain {target.chain_id}: signed by both keys, recorded")
            proofs.append(proof)
        return proofs

    async def add(self) -> None:
        await self._change(ADD_SIGNER, self.new.address, want=True, kind=ADDED, verb="addSigner")

    async def switch(self) -> None:
        for target in self.targets:
            if not await is_signer(target.chain, target.paymaster, self.new.address):
                raise UpstreamRejected(f"{checksum(target.paymaster)} does not accept {self.new.address} yet")
        if any(self._ours(r["detail"]) for r in await self._records(SWITCHED)):
            self.report("switch: already recorded")
            return
        self.report(f"switch: waiting {self.switch_wait_s:g} s for every server to sign with {self.new.address}")
        await asyncio.sleep(self.switch_wait_s)
        for target in self.targets:
            await self._audit(SWITCHED, target, self._pair())

    async def remove(self) -> None:
        for target in self.targets:
            paymaster = checksum(target.paymaster)
            while True:
                last = await asyncio.to_thread(
                    max_valid_until, self.engine, self.old.address, paymaster, target.chain_id
                )
                wait = 0.0 if last is None else last + self.margin_s - self.clock()
                if wait <= 0:
                    break
                self.report(f"remove: the old key's last window on {paymaster} ends at {last}; waiting {wait:.0f} s")
                await asyncio.sleep(wait)
        await self._change(REMOVE_SIGNER, self.old.address, want=False, kind=REMOVED, verb="removeSigner")

    # -- helpers --

    def _pair(self) -> dict[str, Any]:
        return {"old": self.old.address, "new": self.new.address}

    def _ours(self, detail: dict[str, Any] | None) -> bool:
        return detail is not None and (detail.get("old"), detail.get("new")) == (self.old.address, self.new.address)

    async def _records(self, kind: str) -> list[dict[str, Any]]:
        return await asyncio.to_thread(audit.records, self.engine, kind=kind)

    async def _audit(self, kind: str, target: RotationTarget, detail: dict[str, Any]) -> None:
        entry = audit.AuditEntry(
            kind=kind,
            created_at=datetime.now(UTC),
            signer=self.new.address,
            chain_id=target.chain_id,
            paymaster=checksum(target.paymaster),
            detail=detail,
        )
        await asyncio.to_thread(audit.append_now, self.engine, [entry])

    async def _change(self, selector: bytes, address: str, *, want: bool, kind: str, verb: str) -> None:
        """Send (or print) ``verb(address)`` where the chain does not show ``signers(address) == want``; wait."""
        todo: list[tuple[RotationTarget, ContractCall, dict[str, Any]]] = []
        for target in self.targets:
            if await is_signer(target.chain, target.paymaster, address) == want:
                self.report(f"{verb}({address}) on {checksum(target.paymaster)}: already done on chain")
                continue
            call = ContractCall(
                target.chain_id,
                checksum(target.paymaster),
                selector + _word(address),
                f"{verb}({address}) on {checksum(target.paymaster)} (chain {target.chain_id})",
            )
            detail: dict[str, Any] = self._pair()
            if self.owner is not None:
                detail["tx"] = await send_transaction(target.chain, self.owner, call)
                self.report(f"{call.description}: sent from {self.owner.address}, tx {detail['tx']}")
            else:
                self.printed.append(call.printable())
                self.report(f"send this transaction from the paymaster's owner: {json.dumps(call.printable())}")
            todo.append((target, call, detail))
        for target, call, detail in todo:
            await self._wait(target, address, want, call.description)
            await self._audit(kind, target, detail)

    async def _wait(self, target: RotationTarget, address: str, want: bool, what: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        while await is_signer(target.chain, target.paymaster, address) != want:
            if time.monotonic() > deadline:
                raise ChainUnavailable(f"{what}: the chain did not show it within {self.timeout_s:.0f} s")
            await asyncio.sleep(self.poll_s)
