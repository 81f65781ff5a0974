"""``anode deposit show`` and ``anode deposit add``: each paymaster's EntryPoint deposit, and topping it up.

``add`` sends ``depositTo(paymaster)`` to the paymaster's EntryPoint with the amount as value, from
the funding key (``funding.private_key``, or ``ANODE_FUNDING__PRIVATE_KEY`` in the environment),
after a confirmation prompt (``--yes`` skips it). The key is never printed nor logged.
Hung under ``anode`` by ``cli.py`` in one line; heavy modules are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

from anode.errors import AnodeError, ConfigError

if TYPE_CHECKING:
    from anode.config import Settings
    from anode.signers.base import Signer

_UNITS = {"wei": 0, "gwei": 9, "eth": 18, "ether": 18}
_AMOUNT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def amount_wei(text: str) -> int:
    """``--amount``: ``0.5eth``, ``0.5 ETH``, ``20gwei``, or a whole number of wei."""
    match = _AMOUNT.match(text)
    unit = (match.group(2).lower() or "wei") if match else ""
    if match is None or unit not in _UNITS:
        raise argparse.ArgumentTypeError(
            f"expected an amount such as 0.5eth, 20gwei or 1000000000000000 (wei), got {text!r}"
        )
    try:
        value = Decimal(match.group(1)) * (10 ** _UNITS[unit])
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not an amount: {text!r}") from None
    if value != value.to_integral_value() or value <= 0:
        raise argparse.ArgumentTypeError(f"the amount must be a positive whole number of wei, got {text!r}")
    return int(value)


def ether(wei: int) -> str:
    """``1.5 ETH``: wei as whole coins, exactly."""
    text = f"{Decimal(wei) / 10**18:f}"
    return (text.rstrip("0").rstrip(".") if "." in text else text) + " ETH"


@dataclass(frozen=True, slots=True)
class Deposit:
    chain_id: int
    rpc_url: str
    entry_point: str
    paymaster: str
    low_balance_wei: int | None


def _settings(args: argparse.Namespace) -> Settings:
    from anode.config import config_path, load_settings

    return load_settings(config_path(args.config, f"anode deposit {args.deposit}"))


def configured(settings: Settings) -> list[Deposit]:
    from anode.userop.codec import checksum, parse_address

    return [
        Deposit(
            chain.chain_id,
            chain.rpc_url.get_secret_value(),
            checksum(parse_address(pm.entry_point)),
            checksum(parse_address(pm.address)),
            pm.low_balance_wei,
        )
        for chain in settings.chains
        for pm in chain.paymasters
    ]


async def _read(deposits: list[Deposit]) -> list[int | str]:
    """Each deposit in wei, or why it could not be read."""
    from anode.chain.client import ChainClient
    from anode.userop.codec import parse_address

    clients = {url: ChainClient(url) for url in {d.rpc_url for d in deposits}}
    try:

        async def one(deposit: Deposit) -> int | str:
            try:
                node = clients[deposit.rpc_url]
                return await node.deposit_of(parse_address(deposit.entry_point), parse_address(deposit.paymaster))
            except AnodeError as exc:
                return exc.message

        return list(await asyncio.gather(*(one(d) for d in deposits)))
    finally:
        for client in clients.values():
            await client.aclose()


def _show(args: argparse.Namespace) -> None:
    deposits = configured(_settings(args))
    values = asyncio.run(_read(deposits))
    print(f"{'chain':>8} {'paymaster':42} {'entry point':42} {'deposit (wei)':>26} {'threshold (wei)':>26} status")
    for deposit, value in zip(deposits, values, strict=True):
        threshold = "" if deposit.low_balance_wei is None else str(deposit.low_balance_wei)
        if isinstance(value, str):
            shown, status = "?", f"error: {value}"
        else:
            shown = str(value)
            status = "low" if deposit.low_balance_wei is not None and value < deposit.low_balance_wei else "ok"
        where = f"{deposit.chain_id:>8} {deposit.paymaster:42} {deposit.entry_point:42}"
        print(f"{where} {shown:>26} {threshold:>26} {status}")


def _pick(deposits: list[Deposit], paymaster: str, chain_id: int | None, entry_point: str | None) -> Deposit:
    from anode.userop.codec import checksum, parse_address

    try:
        wanted = checksum(parse_address(paymaster))
    except ValueError as exc:
        raise ConfigError(f"--paymaster is not an address ({exc})") from None
    found = [
        d
        for d in deposits
        if d.paymaster == wanted
        and (chain_id is None or d.chain_id == chain_id)
        and (entry_point is None or d.entry_point.lower() == entry_point.lower())
    ]
    if not found:
        listed = ", ".join(f"{d.paymaster} (chain {d.chain_id})" for d in deposits)
        raise ConfigError(
            f"paymaster {wanted} is not configured{' on that chain' if chain_id else ''}; configured: {listed}"
        )
    if len(found) > 1:
        raise ConfigError(f"paymaster {wanted} is configured more than once: pass --chain (and --entry-point)")
    return found[0]


def _add(args: argparse.Namespace, ask: Callable[[str], str] = input) -> None:
    settings = _settings(args)
    deposit = _pick(configured(settings), args.paymaster, args.chain, args.entry_point)
    key = settings.funding.private_key
    if key is None:
        raise ConfigError(
            "anode deposit add pays from the funding key: set funding.private_key in the config, or "
            "ANODE_FUNDING__PRIVATE_KEY in the environment"
        )
    from anode.signers.local import LocalKeySigner

    try:
        funder = LocalKeySigner.from_hex(key.get_secret_value())
    except ConfigError:
        raise ConfigError("funding.private_key must be 32 bytes of hex (64 hex digits, optional 0x)") from None
    amount = args.amount
    before = asyncio.run(_read([deposit]))[0]
    if isinstance(before, str):
        raise ConfigError(f"chain {deposit.chain_id}: cannot read the deposit ({before})")
    print(
        f"deposit {ether(amount)} ({amount} wei) from {funder.address} to paymaster {deposit.paymaster} at "
        f"EntryPoint {deposit.entry_point} on chain {deposit.chain_id}; its deposit is now {before} wei "
        f"({ether(before)})"
    )
    if not args.yes:
        try:
            answer = ask("send this transaction? [y/N] ")
        except EOFError:  # nothing to read: no answer is no
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("not sent", file=sys.stderr)
            raise SystemExit(1)
    tx_hash, after = asyncio.run(_send(deposit, funder, amount))
    print(f"transaction {tx_hash}")
    print(f"deposit of {deposit.paymaster} is now {after} wei ({ether(after)})")


async def _send(deposit: Deposit, funder: Signer, amount: int) -> tuple[str, int]:
    from anode.chain.client import ChainClient
    from anode.custody.rotation import ContractCall, send_transaction
    from anode.userop.codec import parse_address

    entry_point, paymaster = parse_address(deposit.entry_point), parse_address(deposit.paymaster)
    call = ContractCall(
        deposit.chain_id,
        deposit.entry_point,
        bytes.fromhex("b760faf9") + bytes(12) + paymaster,  # depositTo(address)
        f"depositTo({deposit.paymaster}) on EntryPoint {deposit.entry_point}",
        value=amount,
    )
    node = ChainClient(deposit.rpc_url)
    try:
        reported = await node.chain_id()
        if reported != deposit.chain_id:
            raise ConfigError(f"chain {deposit.chain_id}: the node at {node.display_url} reports chain id {reported}")
        tx_hash = await send_transaction(node, funder, call)
        return tx_hash, await node.deposit_of(entry_point, paymaster)
    finally:
        await node.aclose()


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``anode deposit show`` and ``anode deposit add``."""
    deposit = commands.add_parser("deposit", help="the paymasters' EntryPoint deposits")
    actions = deposit.add_subparsers(dest="deposit", required=True)
    show = actions.add_parser("show", help="each configured paymaster's deposit, threshold and status")
    show.add_argument("--config")
    show.set_defaults(run=_show)
    add = actions.add_parser("add", help="deposit to a paymaster (depositTo) from the funding key")
    add.add_argument("--config")
    add.add_argument("--paymaster", required=True, help="a configured paymaster's address")
    add.add_argument("--amount", required=True, type=amount_wei, help="0.5eth, 20gwei, or wei")
    add.add_argument("--chain", type=int, help="the chain id, when the paymaster is configured on several")
    add.add_argument("--entry-point", help="the EntryPoint, when the paymaster is configured at several")
    add.add_argument("--yes", action="store_true", help="send without asking")
    add.set_defaults(run=_add)
