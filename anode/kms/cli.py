"""``anode kms serve | audit verify``; :func:`add_commands` hangs them under ``anode``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from anode.errors import AnodeError, ConfigError
from anode.redact import configure_logging

log = logging.getLogger("anode.kms")


def build(config: Path) -> object:
    """The KMS's app from its config file (the store migrated, the custody backend open)."""
    from anode.kms.app import create_app
    from anode.kms.config import load_kms_settings
    from anode.kms.custody import build_custody
    from anode.kms.service import KmsService
    from anode.kms.store import KmsStore

    settings = load_kms_settings(config)
    store = KmsStore(settings.database_url, nonce_retention_seconds=settings.nonce_retention_seconds)
    store.migrate()
    custody = build_custody(settings)
    if custody.backend == "development":
        log.warning("custody: the development backend keeps owner keys in files (never in production)")
    return create_app(KmsService(settings, store, custody))


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from anode.kms.config import load_kms_settings

    settings = load_kms_settings(Path(args.config))
    configure_logging(settings.log_level)
    uvicorn.run(
        build(Path(args.config)),  # type: ignore[arg-type]
        host=args.host or settings.host,
        port=settings.port if args.port is None else args.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        loop="uvloop",
        http="httptools",
    )


def _audit_verify(args: argparse.Namespace) -> None:
    from anode.kms import audit
    from anode.kms.config import load_kms_settings
    from anode.kms.store import KmsStore

    settings = load_kms_settings(Path(args.config))
    store = KmsStore(settings.database_url)
    try:
        result = audit.verify(store)
    finally:
        store.close()
    if not result.ok:
        raise ConfigError(f"KMS audit chain: {result.problem}")
    print(f"KMS audit chain: {result.records} record(s), intact; head {result.head}")


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``kms …`` to ``anode``'s sub-commands."""
    kms = commands.add_parser("kms", help="the dual-signature KMS (passkey + paymaster) for account keys")
    actions = kms.add_subparsers(dest="kms", required=True)
    serve = actions.add_parser("serve", help="serve the KMS API")
    serve.add_argument("--config", required=True, help="the KMS's YAML file (see docs/kms.md)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(run=_serve)
    audit = actions.add_parser("audit", help="the KMS's decision log").add_subparsers(dest="audit", required=True)
    verify = audit.add_parser("verify", help="check the audit log's hash chain")
    verify.add_argument("--config", required=True)
    verify.set_defaults(run=_audit_verify)


def main(argv: list[str] | None = None) -> int:
    """``python -m anode.kms …``: the same commands without the ``anode kms`` prefix."""
    root = argparse.ArgumentParser(prog="anode")
    add_commands(root.add_subparsers(dest="command", required=True))
    args = root.parse_args(["kms", *(sys.argv[1:] if argv is None else argv)])
    try:
        args.run(args)
    except AnodeError as exc:
        print(f"anode kms: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
