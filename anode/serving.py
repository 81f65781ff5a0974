"""Serving a validated configuration: logging set-up, start-up checks, then uvicorn (one or several workers).

Logging is set up by :func:`anode.redact.configure_logging`. Below ``cli.py``: the ``anode``
command, the sandbox (``anode/sandbox.py``) and each worker process (``anode/api/asgi.py``) use it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anode.config import Settings, ignored_variables, worker_count
from anode.errors import ConfigError
from anode.redact import configure_logging

if TYPE_CHECKING:
    from anode.wiring import Anode

log = logging.getLogger("anode")


def serve_settings(
    settings: Settings,
    host: str | None,
    port: int | None,
    *,
    workers: int | str | None = None,
    config_path: Path | None = None,
) -> None:
    """Serve ``settings``; with several workers each process builds its own aNode from ``config_path``.

    The start-up checks (each node's chain id, each paymaster's ``getHash()``) run before uvicorn
    listens: a refusal raises its ``AnodeError`` here, which ``anode``'s ``main`` prints as one line.
    """
    import uvicorn

    from anode.api.http import HttpProtocol
    from anode.wiring import build, refuse_ineffective

    configure_logging(settings.log_level)
    for name in ignored_variables(os.environ):
        log.info("environment variable %s names no aNode setting: ignored", name)
    count = worker_count(workers or settings.server.workers)
    refuse_ineffective(settings, workers=count)
    options = {
        "host": host or settings.server.host,
        "port": settings.server.port if port is None else port,
        "log_level": settings.log_level.lower(),
        "access_log": False,
        "loop": "uvloop",
        "http": HttpProtocol,  # httptools, a response's head and body in one send (anode/api/http.py)
    }
    if count == 1:
        _serve_one(build(settings), options)
        return
    if config_path is None:
        raise ConfigError("several workers need the configuration in a file: pass --config FILE")
    # once, before the workers start: the migrations (so they never race on them) and the checks
    # (so a refusal is one line here, not a traceback from every worker uvicorn restarts)
    asyncio.run(_check(build(settings)))
    os.environ["ANODE_CONFIG"] = str(config_path.resolve())
    uvicorn.run("anode.api.asgi:app_from_environment", factory=True, workers=count, **options)  # type: ignore[arg-type]


async def _check(anode: Anode) -> None:
    try:
        await anode.check()
    finally:
        await anode.aclose()


def _serve_one(anode: Anode, options: dict[str, Any]) -> None:
    """Start ``anode``, then serve it, in one event loop; a refusal closes everything and raises."""
    import uvicorn

    from anode.api.app import create_app

    # the app's lifespan finds aNode started, and closes it at shutdown
    config = uvicorn.Config(create_app(anode), **options)
    server = uvicorn.Server(config)

    async def start_then_serve() -> None:
        try:
            await anode.start()
        except BaseException:
            await anode.aclose()
            raise
        await server.serve()

    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(start_then_serve())
