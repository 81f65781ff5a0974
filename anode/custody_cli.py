"""``anode audit verify`` and ``anode keys rotate``: hung under ``anode`` by ``cli.py``, one line each.

Heavy modules are imported inside the handlers, so ``anode --help`` stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from anode.errors import ConfigError

if TYPE_CHECKING:
    from anode.config import Settings
    from anode.signers.base import Signer
    from anode.signers.manager import ManagedSigner
    from anode.signers.manager_settings import BackendEntry


def _settings(args: argparse.Namespace) -> Settings:
    from anode.config import config_path, load_settings

    command = " ".join(filter(None, ["anode", args.command, getattr(args, args.command, None)]))
    return load_settings(config_path(args.config, command))


# -- anode audit verify -------------------------------------------------------------------------


def _audit_verify(args: argparse.Namespace) -> None:
    import sqlalchemy as sa

    from anode.progress import Progress
    from anode.store.audit import count_records, verify
    from anode.store.audit_ledger import cross_check
    from anode.store.database import create_engine

    engine = create_engine(_settings(args).database_url.get_secret_value())
    try:
        progress = Progress("audit records checked", forced=args.progress)
        if progress.shown:
            progress.total = count_records(engine)
        result = verify(engine, progress=progress.advance if progress.shown else None, batch=10_000)
        progress.done()
        ledger = cross_check(engine) if result.ok else None
    except sa.exc.SQLAlchemyError as exc:
        raise ConfigError(f"cannot read the audit log ({type(exc).__name__}): is the schema migrated?") from None
    finally:
        engine.dispose()
    if not result.ok:
        print(f"audit chain BROKEN ({result.problem}): {result.message}", file=sys.stderr)
        print(f"{result.records} record(s) checked; last good hash {result.head}", file=sys.stderr)
        print("the ledger was not checked: the chain it is checked against is broken", file=sys.stderr)
        raise SystemExit(1)
    print(f"audit chain intact: {result.records} record(s), head {result.head}")
    assert ledger is not None
    notes = [
        f"{ledger.uncovered} signed before records carried money fields" if ledger.uncovered else "",
        f"{ledger.predating} older than the audit log" if ledger.predating else "",
    ]
    noted = "; ".join(note for note in notes if note)
    if ledger.ok:
        print(f"ledger matches the audit chain: {ledger.rows} row(s)" + (f" ({noted})" if noted else ""))
        return
    print(f"ledger does NOT match the audit chain: {ledger.problem_count} problem(s)", file=sys.stderr)
    for problem in ledger.problems:
        print(f"  {problem}", file=sys.stderr)
    if ledger.problem_count > len(ledger.problems):
        print(f"  … and {ledger.problem_count - len(ledger.problems)} more", file=sys.stderr)
    raise SystemExit(1)


def add_audit_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``anode audit verify``."""
    audit = commands.add_parser("audit", help="the hash-chained audit log of signatures and rotations")
    actions = audit.add_subparsers(dest="audit", required=True)
    verify = actions.add_parser(
        "verify",
        help="walk the chain, then check the ledger against it; exit 1 at a changed, removed or reordered "
        "record, or a ledger row changed or deleted",
    )
    verify.add_argument("--config")
    verify.add_argument("--progress", action="store_true", help="show progress on stderr (shown on a terminal anyway)")
    verify.set_defaults(run=_audit_verify)


# -- anode keys rotate --------------------------------------------------------------------------


def backend_spec(text: str) -> BackendEntry:
    """A backend mapping from a YAML file, or inline as ``type=keystore,keystore_path=…,password_env=…``
    (an inline spec never holds a key: a key on the command line ends up in shell history)."""
    from anode.config import error_message, parse_yaml
    from anode.signers.manager_settings import BackendEntry

    path = Path(text)
    raw: Any
    if "=" not in text or path.is_file():
        try:
            raw = parse_yaml(path.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read signer file {text}: {exc.strerror}") from None
        except yaml.YAMLError:
            raise ConfigError(f"signer file {text} is not YAML") from None
        if isinstance(raw, dict) and isinstance(raw.get("signer"), dict):
            raw = raw["signer"]
    else:
        raw = dict(part.split("=", 1) for part in text.split(",") if part)
    try:
        return BackendEntry.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"] if part != "signer")
        message = error_message(error)
        raise ConfigError(f"signer {text.split(',')[0]}: {field + ': ' if field else ''}{message}") from None


def _entries(settings: Settings) -> list[tuple[str, BackendEntry]]:
    from anode.signers.manager_settings import BackendEntry, ManagerSettings

    signer = settings.signer
    if not isinstance(signer, ManagerSettings):
        return [("primary", BackendEntry(signer=signer))]
    return (
        [("primary", signer.primary)]
        + [("backup", b) for b in signer.backups]
        + [("retiring", b) for b in signer.retiring]
    )


def _pick_keys(args: argparse.Namespace, settings: Settings) -> tuple[BackendEntry, BackendEntry]:
    entries = _entries(settings)
    retiring = [entry for role, entry in entries if role == "retiring"]
    if args.old_signer:
        old = backend_spec(args.old_signer)
    elif len(retiring) == 1:
        old = retiring[0]
    elif not retiring:
        old = entries[0][1]
    else:
        raise ConfigError("the config retires several keys: name the one to rotate out with --old-signer")
    if args.new_signer:
        new = backend_spec(args.new_signer)
    elif retiring:
        new = entries[0][1]
    else:
        raise ConfigError("pass --new-signer (or list the old key under signer.retiring and the new one as primary)")
    return old, new


async def _rotate(args: argparse.Namespace) -> None:
    from anode.chain.client import ChainClient
    from anode.custody.rotation import Rotation, RotationTarget
    from anode.signers.manager import ManagedSigner
    from anode.signers.manager_settings import ManagerSettings
    from anode.signers.registry import build_signer
    from anode.store.database import create_engine, upgrade
    from anode.userop.codec import checksum, parse_address

    settings = _settings(args)
    old_entry, new_entry = _pick_keys(args, settings)
    wanted = {parse_address(p) for p in args.paymaster or []}
    clients: list[ChainClient] = []
    targets: list[RotationTarget] = []
    for chain in settings.chains:
        client = ChainClient(chain.rpc_url.get_secret_value())
        clients.append(client)
        for pm in chain.paymasters:
            address = parse_address(pm.address)
            if (wanted and address not in wanted) or (not wanted and pm.contract != "singleton"):
                continue
            if pm.contract != "singleton":
                raise ConfigError(f"{pm.address} is a VerifyingPaymaster: its one signer is immutable")
            targets.append(RotationTarget(chain.chain_id, address, client))
    if wanted - {t.paymaster for t in targets}:
        missing = ", ".join(checksum(p) for p in wanted - {t.paymaster for t in targets})
        raise ConfigError(f"--paymaster {missing}: not a paymaster in this config")
    if not targets:
        raise ConfigError("no SingletonPaymaster in this config: rotation adds and removes SingletonPaymaster signers")
    signers: list[Signer] = []
    servers: ManagedSigner | None = None
    engine = create_engine(settings.database_url.get_secret_value())
    try:
        old, new = build_signer(old_entry.signer), build_signer(new_entry.signer)
        signers += [old, new]
        if old.address == new.address:
            raise ConfigError(f"the old and the new key are the same key ({old.address})")
        owner = build_signer(backend_spec(args.send_from_owner_key).signer) if args.send_from_owner_key else None
        if owner is not None:
            signers.append(owner)
        upgrade(engine)
        servers = ManagedSigner.from_settings(settings.signer)
        switch = _servers_switch(servers, targets, old.address, new.address)
        print(f"rotating {old.address} → {new.address} on {len(targets)} paymaster(s)")
        wait = args.switch_wait_s
        if wait is None and isinstance(settings.signer, ManagerSettings):  # a health round, a request in flight
            m = settings.signer
            wait = m.health_interval_s + m.timeout_ms / 1000 * m.retry.attempts + 1.0
        rotation = Rotation(
            old,
            new,
            targets,
            engine,
            owner=owner,
            switch_wait_s=1.0 if wait is None else wait,
            margin_s=args.margin_s,
            poll_s=args.poll_s,
            timeout_s=args.timeout_s,
        )
        await rotation.run(switch=switch is None)
        if switch is not None:
            print(f"added; not switching yet: {switch}. Then run this command again.")
        else:
            print(f"rotation done: {new.address} signs; {old.address} is removed")
    finally:
        await asyncio.gather(*(s.aclose() for s in signers), return_exceptions=True)
        if servers is not None:
            await servers.aclose()
        for client in clients:
            await client.aclose()
        engine.dispose()


def _servers_switch(servers: ManagedSigner, targets: list[Any], old: str, new: str) -> str | None:
    """Why servers running this config would not switch to ``new`` and drop ``old``, or ``None``."""
    for target in targets:
        roles = servers.roles_for(target.paymaster)
        active = {address for _, role, address in roles if role != "retiring"}
        if new not in active or old in active:
            return (
                "servers running this config would not switch: give them the new key as a signer "
                f"(primary or backup) and the old one under signer.retiring only (new {new}, old {old})"
            )
    return None


def _keys_rotate(args: argparse.Namespace) -> None:
    if not args.send_from_owner_key and not args.print_tx:
        raise ConfigError("pass --send-from-owner-key SIGNER (the paymaster owner's key) or --print-tx")
    asyncio.run(_rotate(args))


def add_key_commands(keys: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``anode keys rotate``."""
    rotate = keys.add_parser(
        "rotate",
        help="rotate a SingletonPaymaster signer: prove, add on chain, switch, remove the old key",
        description="Signer specs are a YAML file with a backend mapping, or inline: type=keystore,keystore_path=…",
    )
    rotate.add_argument("--config", help="the servers' config (database, chains, signer)")
    rotate.add_argument("--new-signer", help="the new key (default: the config's primary, when it retires a key)")
    rotate.add_argument("--old-signer", help="the key to rotate out (default: the config's retiring or primary key)")
    rotate.add_argument(
        "--paymaster", action="append", help="only this paymaster (repeatable; default: every singleton)"
    )
    how = rotate.add_mutually_exclusive_group()
    how.add_argument("--send-from-owner-key", metavar="SIGNER", help="send addSigner/removeSigner from this key")
    how.add_argument("--print-tx", action="store_true", help="print the transactions for the owner; wait for them")
    rotate.add_argument("--margin-s", type=float, default=60.0, help="wait past the old key's last window (60)")
    rotate.add_argument("--switch-wait-s", type=float, help="how long servers take to switch (default: from config)")
    rotate.add_argument("--poll-s", type=float, default=2.0)
    rotate.add_argument("--timeout-s", type=float, default=3600.0, help="give up waiting for the chain after this")
    rotate.set_defaults(run=_keys_rotate)
