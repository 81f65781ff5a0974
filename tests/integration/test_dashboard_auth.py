"""Who gets into ``/dashboard``: admin keys only, by header or login session, never by URL.

The app runs in process (``httpx.ASGITransport``) on a temporary SQLite database; no chain runs
(nothing here signs). The browser itself is in ``test_dashboard_browser.py``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from anode.api import dashboard_auth
from anode.api.app import create_app
from anode.config import validate_settings
from anode.store.api_keys import KeyKind, SqlApiKeys
from anode.wiring import Anode, build
from tests.integration.test_api_errors import API_KEY, settings_tree

ADMIN_KEY = "dashboard-admin-key-0123456789"
PAGES = [
    "/dashboard",
    "/dashboard/api/spend",
    "/dashboard/api/policy-spend",
    "/dashboard/api/signer-events",
    "/dashboard/api/outcomes",
    "/dashboard/api/operations",
    "/dashboard/api/follower",
]


@pytest.fixture
async def anode(tmp_path: Path) -> AsyncIterator[Anode]:
    tree = settings_tree(tmp_path, "http://127.0.0.1:9/")
    tree["auth"]["admin_keys"] = [ADMIN_KEY]
    node = build(validate_settings(tree))
    yield node
    await node.aclose()


def client(anode: Anode, base: str = "http://anode.test", key: str | None = None) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    app = create_app(anode, manage_lifecycle=False)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base, headers=headers)


async def login(http: httpx.AsyncClient, key: str, **headers: str) -> httpx.Response:
    return await http.post("/dashboard/login", data={"key": key}, headers=headers)


@pytest.mark.parametrize("path", PAGES)
async def test_no_key_is_401_and_the_page_is_the_login_form(anode: Anode, path: str) -> None:
    async with client(anode) as http:
        answer = await http.get(path)
    assert answer.status_code == 401
    if path == "/dashboard":
        assert 'action="/dashboard/login"' in answer.text and 'name="key"' in answer.text
    else:
        assert answer.json()["error"]["code"] == "ANODE_UNAUTHORIZED"


@pytest.mark.parametrize("path", PAGES)
async def test_a_project_key_is_403(anode: Anode, path: str) -> None:
    async with client(anode, key=API_KEY) as http:
        answer = await http.get(path)
    assert answer.status_code == 403
    if path != "/dashboard":
        assert answer.json()["error"]["code"] == "ANODE_FORBIDDEN"


async def test_a_project_key_cannot_log_in(anode: Anode) -> None:
    async with client(anode) as http:
        answer = await login(http, API_KEY)
    assert answer.status_code == 403 and "admin key" in answer.text
    assert "set-cookie" not in answer.headers


@pytest.mark.parametrize("path", PAGES)
async def test_a_key_in_the_query_string_is_refused_even_an_admin_key(anode: Anode, path: str) -> None:
    async with client(anode) as http:
        answer = await http.get(path, params={"apikey": ADMIN_KEY})
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "ANODE_KEY_IN_URL"
    assert ADMIN_KEY not in answer.text


async def test_an_admin_key_in_the_header_opens_everything(anode: Anode) -> None:
    async with client(anode, key=ADMIN_KEY) as http:
        for path in PAGES:
            answer = await http.get(path)
            assert answer.status_code == 200, (path, answer.text)
        page = await http.get("/dashboard")
        # works offline: everything the page loads is aNode's own, and answers
        assets = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", page.text)
        assert len(assets) == 4 and all(url.startswith("/dashboard/assets/") for url in assets), assets
        for url in assets:
            assert (await http.get(url)).status_code == 200, url
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp


@pytest.mark.parametrize(("base", "secure"), [("http://anode.test", False), ("https://anode.test", True)])
async def test_login_sets_a_strict_httponly_session_cookie_without_the_key(
    anode: Anode, base: str, secure: bool
) -> None:
    async with client(anode, base) as http:
        answer = await login(http, ADMIN_KEY)
        assert answer.status_code == 303 and answer.headers["location"] == "/dashboard"
        cookie = answer.headers["set-cookie"]
        flags = [part.strip().lower() for part in cookie.split(";")]
        assert "httponly" in flags and "samesite=strict" in flags and "path=/dashboard" in flags
        assert ("secure" in flags) is secure
        assert ADMIN_KEY not in cookie
        page = await http.get("/dashboard")
        assert page.status_code == 200 and 'id="spend-hour"' in page.text
        assert (await http.get("/dashboard/api/spend")).status_code == 200
        await http.post("/dashboard/logout")
        assert (await http.get("/dashboard/api/spend")).status_code == 401


async def test_a_tampered_or_expired_session_is_401(anode: Anode, monkeypatch: pytest.MonkeyPatch) -> None:
    async with client(anode) as http:
        await login(http, ADMIN_KEY)
        value = http.cookies[dashboard_auth.COOKIE]
        ident, expires, mac = value.split(".")
        for forged in (f"{ident}.{int(expires) + 1}.{mac}", f"{ident}.{expires}.{'0' * len(mac)}"):
            http.cookies.set(dashboard_auth.COOKIE, forged, domain="anode.test", path="/dashboard")
            assert (await http.get("/dashboard/api/spend")).status_code == 401
        http.cookies.set(dashboard_auth.COOKIE, value, domain="anode.test", path="/dashboard")
        assert (await http.get("/dashboard/api/spend")).status_code == 200
        later = dashboard_auth.time.time() + dashboard_auth.SESSION_SECONDS + 1
        monkeypatch.setattr(dashboard_auth.time, "time", lambda: later)
        assert (await http.get("/dashboard/api/spend")).status_code == 401


async def test_revoking_a_stored_admin_key_ends_its_sessions(anode: Anode) -> None:
    assert anode.key_store is not None
    store: SqlApiKeys = anode.key_store
    key, record = store.create("operator", KeyKind.ADMIN)
    async with client(anode) as http:
        assert (await login(http, key)).status_code == 303
        assert (await http.get("/dashboard/api/spend")).status_code == 200
        store.revoke(record.id)
        assert (await http.get("/dashboard/api/spend")).status_code == 401


async def test_a_login_posted_from_another_site_is_refused(anode: Anode) -> None:
    async with client(anode) as http:
        answer = await login(http, ADMIN_KEY, origin="https://evil.example")
    assert answer.status_code == 403 and "set-cookie" not in answer.headers
