"""``GET /docs``: Swagger UI served from the package itself, so it works offline and behind a
firewall that blocks CDNs; and ``GET /``, which says where the docs and the health check are.

The assets are swagger-ui-dist's own files (``static/swagger-ui/VERSION`` says which release).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

ASSETS_DIR = Path(__file__).parent / "static" / "swagger-ui"
ASSETS_PATH = "/docs/assets"


def add_docs(app: FastAPI) -> None:
    """Serve ``/docs`` and its assets, and ``GET /``; the app must be built with ``docs_url=None``."""
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS_DIR), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon-32x32.png",
            # no badge that sends the document to validator.swagger.io
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/", include_in_schema=False)
    async def index(request: Request) -> dict[str, Any]:
        root = request.scope.get("root_path", "")
        return {
            "name": "aNode",
            "docs": f"{root}/docs",
            "openapi": f"{root}{openapi_url}",
            "health": f"{root}/health",
            "jsonrpc": f"{root}/api/v1/rpc",
        }
