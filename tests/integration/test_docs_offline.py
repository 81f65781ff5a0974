"""``/docs`` works without the internet: the page names only aNode's own URLs, and each answers
with the Swagger UI file it stands for. ``GET /`` says where the docs and the health check are."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from anode.wiring import Anode
from tests.integration.test_api_errors import build_anode
from tests.support.asgi import client_of

BASE = "http://anode.test"


@pytest.fixture
async def anonymous(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    node: Anode = build_anode(tmp_path, "http://127.0.0.1:9/unreachable")
    async with client_of(node, None) as client:
        yield client
    await node.aclose()


def referenced_urls(html: str) -> list[str]:
    """Every URL the page loads: src/href attributes and quoted strings handed to SwaggerUIBundle."""
    found = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    found += re.findall(r"""(?:url|oauth2RedirectUrl)\s*:\s*["']([^"']+)["']""", html)
    return found


async def test_docs_page_loads_nothing_from_another_host(anonymous: httpx.AsyncClient) -> None:
    page = await anonymous.get("/docs")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    urls = referenced_urls(page.text)
    assert urls, page.text
    assert not re.search(r"https?://(?!anode\.test)", page.text), page.text  # no CDN, no validator, no favicon host
    expected = {".js": "javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}
    seen = set()
    for url in urls:
        absolute = urljoin(f"{BASE}/docs", url)
        assert urlsplit(absolute).netloc == "anode.test", url
        answer = await anonymous.get(absolute)
        assert answer.status_code == 200, (url, answer.status_code)
        kind = next(content for suffix, content in expected.items() if urlsplit(absolute).path.endswith(suffix))
        assert kind in answer.headers["content-type"], (url, answer.headers["content-type"])
        seen.add(kind)
    assert {"javascript", "text/css", "application/json"} <= seen, urls


async def test_the_swagger_bundle_is_served_whole(anonymous: httpx.AsyncClient) -> None:
    script = await anonymous.get("/docs/assets/swagger-ui-bundle.js")
    assert script.status_code == 200
    assert "SwaggerUIBundle" in script.text and len(script.content) > 500_000


async def test_root_points_to_the_docs_and_the_health_check(anonymous: httpx.AsyncClient) -> None:
    answer = await anonymous.get("/")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["docs"] == "/docs" and body["health"] == "/health"
    assert (await anonymous.get(body["docs"])).status_code == 200
