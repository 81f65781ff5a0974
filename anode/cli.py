"""The ``anode`` command: ``serve``, ``sandbox``, ``ops list``, ``db upgrade``."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from anode import custody_cli, deposit_cli, policy_cli
from anode.config import Settings, config_path, load_settings, load_signer_settings
from anode.errors import AnodeError, ConfigError, StoreUnavailable
from anode.keyserver.cli import add_commands as add_keyserver_commands
from anode.kms.cli import add_commands as add_kms_commands
from anode.serving import serve_settings

if TYPE_CHECKING:
    import sqlalchemy as sa

    from anode.store.api_keys import SqlApiKeys


def _command(args: argparse.Namespace) -> str:
    """``anode ops list``: the command as typed, for messages."""
    words = [args.command, getattr(args, args.command, None) or ""]
    return " ".join(["anode", *filter(None, words)])


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(config_path(args.config, _command(args)))


def _serve(args: argparse.Namespace) -> None:
    path = config_path(args.config, "anode serve", hint=", or run `anode sandbox` for a local sandbox")
    serve_settings(load_settings(path), args.host, args.port, workers=args.workers, config_path=path)


def _sandbox(args: argparse.Namespace) -> None:
    from anode.sandbox import run_sandbox

    run_sandbox(Path(args.workdir), args.host, args.port, args.anvil_port, args.workers)


#: the ledger's ERC-20 columns ``anode ops list`` shows after the mode (empty in verifying mode)
_ERC20_COLUMNS = ("token", "max_token_amount", "exchange_rate")


def _ops_list(args: argparse.Namespace) -> None:
    from anode.progress import Progress
    from anode.store.ledger import SqlLedger

    engine = _ledger_engine(_settings(args), args.config)
    progress = Progress("reading the ledger", forced=args.progress)
    progress.advance(0)
    try:
        rows = SqlLedger(engine).find_now(sender=args.sender, since=args.since, until=args.until, limit=args.limit)
    finally:
        engine.dispose()
    progress.label, progress.total = "operations listed", len(rows)
    head = f"{'time':32} {'sender':42} {'nonce':>8} {'max cost (wei)':>22}"
    erc20 = f"{'mode':9} {'token':42} {'max tokens':>22} {'exchange rate':>22}"  # token, rate: ERC-20 mode only
    print(f"{head} {'status':8} {'actual cost (wei)':>22} {erc20} userOpHash")
    for row in rows:
        cost, actual = row["max_gas_cost_wei"], row.get("actual_gas_cost_wei")
        status = row.get("status") or "signed"
        if status == "included" and row.get("success") is False:
            status = "reverted"  # included, the call reverted: the paymaster still paid
        token, most, rate = (("" if row.get(name) is None else row[name]) for name in _ERC20_COLUMNS)
        print(
            f"{row['created_at']:32} {row['sender']:42} {hex(row['nonce']):>8} {cost:>22} {status:8} "
            f"{'' if actual is None else actual:>22} {row.get('mode') or 'verifying':9} {token:42} {most:>22} "
            f"{rate:>22} {row['user_op_hash']}"
        )
        progress.advance()
    progress.done()
    print(f"{len(rows)} operation(s)")


def _ledger_engine(settings: Settings, config: str | None) -> sa.Engine:
    """An engine on a database that holds the ledger; else a ``ConfigError`` saying to migrate it."""
    import sqlalchemy as sa

    from anode.store.database import create_engine
    from anode.store.tables import sponsorships

    upgrade = f"`anode db upgrade{f' --config {config}' if config else ''}`"
    engine = create_engine(settings.database_url.get_secret_value())
    url = engine.url
    shown = url.render_as_string(hide_password=True)
    missing = f"the database {shown} has no sponsorship ledger yet: run {upgrade} (`anode serve` also migrates)"
    on_file = url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
    try:
        if on_file and not Path(str(url.database)).exists():
            ready = False  # connecting would create an empty file
        else:
            ready = sa.inspect(engine).has_table(sponsorships.name)
    except sa.exc.SQLAlchemyError as exc:
        engine.dispose()
        raise StoreUnavailable(f"the database {shown} could not be read ({type(exc).__name__})") from None
    if not ready:
        engine.dispose()
        raise ConfigError(missing)
    return engine


def _address(text: str) -> str:
    """``--sender``: any case, stored and compared checksummed (as ``GET /api/v1/operations`` does)."""
    from anode.userop.codec import checksum, parse_address

    try:
        return checksum(parse_address(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an address ({exc}): {text!r}") from None


def _moment(text: str) -> datetime:
    """``--since``/``--until``: parsed as ``GET /api/v1/operations`` parses them; UTC unless an offset is given."""
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(datetime).validate_python(text)
    except ValidationError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO-8601 time such as 2025-01-31T12:00:00Z, 2025-01-31T14:00+02:00 or 2025-01-31 "
            f"(UTC unless it has an offset), or Unix seconds; got {text!r}"
        ) from None


def _limit(text: str) -> int:
    """``--limit``: 1 to 1000, as ``GET /api/v1/operations`` allows."""
    number = int(text) if text.strip().isdigit() else 0
    if not 1 <= number <= 1000:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to 1000, got {text!r}")
    return number


def _key_store(args: argparse.Namespace) -> SqlApiKeys:
    from anode.store.api_keys import SqlApiKeys
    from anode.store.database import create_engine, upgrade

    engine = create_engine(_settings(args).database_url.get_secret_value())
    upgrade(engine)
    return SqlApiKeys(engine)


def _keys_create(args: argparse.Namespace) -> None:
    from anode.store.api_keys import KeyKind

    kind = KeyKind.ADMIN if args.admin else KeyKind.PROJECT
    plaintext, record = _key_store(args).create(args.name, kind)
    print(f"{kind.value} key {record.id} ({record.name}) created; it is shown only this once:")
    print(plaintext)


def _keys_list(args: argparse.Namespace) -> None:
    for record in _key_store(args).list():
        state = f"revoked {record.revoked_at.isoformat()}" if record.revoked_at else "active"
        print(f"{record.id}  {record.kind.value:8} {state:40} {record.name}")


def _keys_revoke(args: argparse.Namespace) -> None:
    if not _key_store(args).revoke(args.id):
        raise ConfigError(f"no active key with id {args.id!r}")
    print(f"revoked {args.id}")


def _keys_address(args: argparse.Namespace) -> None:
    import asyncio

    from anode.signers.manager import ManagedSigner

    # the signer alone: no chain, paymaster or database is needed to know the address
    signer = ManagedSigner.from_settings(load_signer_settings(config_path(args.config, _command(args))))
    for name, kind, address in signer.backends:
        print(address if len(signer.backends) == 1 else f"{address}  {name} ({kind})")
    asyncio.run(signer.aclose())


def _keys_generate(args: argparse.Namespace) -> None:
    from anode.signers.manager_settings import backend_settings

    signer = load_signer_settings(config_path(args.config, _command(args)))  # the signer alone
    settings = backend_settings(signer)[0]  # the primary's backend
    if settings.type == "aws_kms":
        from anode.signers import aws_kms

        key_id, address = aws_kms.generate_key(settings)  # type: ignore[arg-type]
        print(f"created KMS key {key_id}: {address}")
    elif settings.type == "pkcs11":
        from anode.signers import pkcs11

        print(f"created a non-extractable key on the token: {pkcs11.generate_key(settings)}")  # type: ignore[arg-type]
    elif settings.type == "keystore":
        _generate_keystore(settings)
    else:
        raise ConfigError(f"anode keys generate supports aws_kms, pkcs11 and keystore, not {settings.type}")


def _generate_keystore(settings: object) -> None:
    import secrets

    import orjson
    from eth_account import Account

    from anode.signers.keystore import Settings as KeystoreSettings
    from anode.signers.keystore import read_password

    assert isinstance(settings, KeystoreSettings)
    path = settings.keystore_path
    refusal = f"{path} exists: refusing to overwrite a key (set signer.keystore_path to a new file)"
    if path.exists():  # before asking for the password; O_EXCL below is what decides
        raise ConfigError(refusal)
    account = Account.from_key(secrets.token_bytes(32))
    document = orjson.dumps(Account.encrypt(account.key, read_password(settings)))
    try:
        # created owner-only (never readable by others, not even for a moment), and only if nothing
        # is there: not an existing key, nor a symlink pointing elsewhere
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        raise ConfigError(refusal) from None
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(document)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    print(f"created keystore {path}: {account.address}")


def _db_upgrade(args: argparse.Namespace) -> None:
    from anode.store.database import create_engine, upgrade

    upgrade(create_engine(_settings(args).database_url.get_secret_value()))
    print("database schema is up to date")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="anode", description="aNode, an open ERC-4337 paymaster server")
    commands = root.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the paymaster server")
    serve.add_argument("--config", help="YAML config file (ANODE_* environment variables override it)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", help="server processes, or 'auto' for one per core (default server.workers, 1)")
    serve.set_defaults(run=_serve)

    sandbox = commands.add_parser("sandbox", help="local chain with all contracts, and aNode serving on it")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8080)
    sandbox.add_argument("--anvil-port", type=int, default=8545)
    sandbox.add_argument("--workers", type=int, default=1, help="server processes")
    sandbox.add_argument("--workdir", default=".anode", help="where the dev key, config and database live")
    sandbox.set_defaults(run=_sandbox)

    ops = commands.add_parser("ops", help="the sponsorship ledger").add_subparsers(dest="ops", required=True)
    ops_list = ops.add_parser("list", help="list recorded sponsorships, newest first")
    ops_list.add_argument("--config")
    ops_list.add_argument("--sender", type=_address, help="only this account's operations (any letter case)")
    ops_list.add_argument("--since", type=_moment, help="from this time, inclusive: ISO-8601, UTC unless an offset")
    ops_list.add_argument("--until", type=_moment, help="before this time, exclusive: ISO-8601, UTC unless an offset")
    ops_list.add_argument("--limit", type=_limit, default=50, help="at most this many rows, 1-1000 (default 50)")
    ops_list.add_argument("--progress", action="store_true", help="progress on stderr (shown on a terminal anyway)")
    ops_list.set_defaults(run=_ops_list)

    keys = commands.add_parser("keys", help="API keys and signing keys").add_subparsers(dest="keys", required=True)
    create = keys.add_parser("create", help="make an API key (shown once); --admin for a management key")
    create.add_argument("--config")
    create.add_argument("--name", default="default")
    create.add_argument("--admin", action="store_true")
    create.set_defaults(run=_keys_create)
    listing = keys.add_parser("list", help="list API keys (ids, kinds, state; never the keys)")
    listing.add_argument("--config")
    listing.set_defaults(run=_keys_list)
    revoke = keys.add_parser("revoke", help="revoke an API key by id")
    revoke.add_argument("id")
    revoke.add_argument("--config")
    revoke.set_defaults(run=_keys_revoke)

    address = keys.add_parser("address", help="print the configured signer's address")
    address.add_argument("--config")
    address.set_defaults(run=_keys_address)
    generate = keys.add_parser("generate", help="create a key in the configured backend (keystore, aws_kms, pkcs11)")
    generate.add_argument("--config")
    generate.set_defaults(run=_keys_generate)

    add_keyserver_commands(commands)
    add_kms_commands(commands)

    db = commands.add_parser("db", help="database schema").add_subparsers(dest="db", required=True)
    db_upgrade = db.add_parser("upgrade", help="apply migrations (serve does this at start-up too)")
    db_upgrade.add_argument("--config")
    db_upgrade.set_defaults(run=_db_upgrade)

    custody_cli.add_key_commands(keys)
    custody_cli.add_audit_commands(commands)
    deposit_cli.add_commands(commands)
    policy_cli.add_commands(commands)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except AnodeError as exc:
        print(f"anode: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
