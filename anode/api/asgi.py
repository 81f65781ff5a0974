"""The app factory each worker process calls when ``anode serve --workers N`` runs several.

The parent process validated the configuration and migrated the database; each worker reads the
same file (``ANODE_CONFIG``) and environment, and builds its own aNode (own connections, caches,
signer sessions). Shared state lives in the database and Redis, so limits hold across workers.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI

from anode.api.app import create_app
from anode.config import load_settings
from anode.wiring import build


def app_from_environment() -> FastAPI:
    from anode.redact import configure_logging

    settings = load_settings(Path(os.environ["ANODE_CONFIG"]))
    configure_logging(settings.log_level)
    return create_app(build(settings, migrate=False))
