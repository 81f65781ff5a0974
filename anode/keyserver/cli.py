"""``anode keyserver serve | token | verify-audit``; :func:`add_commands` hangs them under ``anode``."""

from __future__ import annotations

import argparse
import hashlib
import logging
import secrets
import sys
from pathlib import Path

from anode.errors import AnodeError, ConfigError
from anode.redact import configure_logging


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from anode.keyserver.app import Keyserver, create_app
    from anode.keyserver.config import load_keyserver_settings
    from anode.keyserver.store import AuditLog, KeyRing, Tokens

    settings = load_keyserver_settings(Path(args.config))
    configure_logging(settings.log_level)
    server = Keyserver(
        keys=KeyRing.build(settings.keys),
        tokens=Tokens(settings.tokens),
        audit=AuditLog(settings.audit_log, fsync=settings.audit_fsync),
    )
    if settings.tls_cert is None and (args.host or settings.host) not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger("anode.keyserver").warning(
            "serving plain HTTP beyond localhost: bearer tokens travel in clear (set tls_cert and tls_key)"
        )
    uvicorn.run(
        create_app(server),
        host=args.host or settings.host,
        port=settings.port if args.port is None else args.port,
        ssl_certfile=settings.tls_cert,
        ssl_keyfile=settings.tls_key,
        log_level=settings.log_level.lower(),
        access_log=False,
        loop="uvloop",
        http="httptools",
    )


def _token(args: argparse.Namespace) -> None:
    token = secrets.token_urlsafe(32)
    print("bearer token (give it to the aNode server as signer.token; shown only this once):")
    print(token)
    print("for the key server's config:")
    print(f"  - id: {args.id}\n    token_sha256: {hashlib.sha256(token.encode()).hexdigest()}")


def _verify_audit(args: argparse.Namespace) -> None:
    from anode.keyserver.config import load_keyserver_settings
    from anode.keyserver.store import verify_audit

    path = Path(args.log) if args.log else load_keyserver_settings(Path(args.config)).audit_log
    try:
        count = verify_audit(path)
    except OSError as exc:
        raise ConfigError(f"cannot read audit log {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"audit log {path}: {exc}") from None
    print(f"audit log {path}: {count} record(s), chain intact")


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``keyserver …`` to ``anode``'s sub-commands."""
    keyserver = commands.add_parser("keyserver", help="aNode's own remote key server (keys stay on its machine)")
    actions = keyserver.add_subparsers(dest="keyserver", required=True)
    serve = actions.add_parser("serve", help="serve signatures to aNode servers holding an allowed token")
    serve.add_argument("--config", required=True, help="the key server's YAML file (see docs/keyserver.md)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(run=_serve)
    token = actions.add_parser("token", help="make a bearer token; print it and its SHA-256 for the config")
    token.add_argument("--id", default="anode", help="the token's id in the config (default: anode)")
    token.set_defaults(run=_token)
    verify = actions.add_parser("verify-audit", help="check the audit log's hash chain")
    source = verify.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="read audit_log from this key server config")
    source.add_argument("--log", help="the audit log file itself")
    verify.set_defaults(run=_verify_audit)


def main(argv: list[str] | None = None) -> int:
    """``python -m anode.keyserver …``: the same commands without the ``anode keyserver`` prefix."""
    root = argparse.ArgumentParser(prog="anode")
    add_commands(root.add_subparsers(dest="command", required=True))
    args = root.parse_args(["keyserver", *(sys.argv[1:] if argv is None else argv)])
    try:
        args.run(args)
    except AnodeError as exc:
        print(f"anode keyserver: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
