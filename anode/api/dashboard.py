"""``GET /dashboard``: the operator's page, served by aNode itself, and its data under ``/dashboard/api``.

The page is static HTML; ``static/dashboard/dashboard.js`` fetches the JSON endpoints below and
draws them with uPlot (vendored beside it, ``uPlot.VERSION``). Everything needs an admin key: a
login session or ``Authorization: Bearer`` (``api/dashboard_auth.py``); a key in the URL is refused.
The responses carry a Content-Security-Policy that allows only this server's own scripts, styles
and data (no CDN, no inline script).

    GET  /dashboard                  the page (the login form when not logged in, 401)
    POST /dashboard/login            form field ``key``: sets the session cookie, 303 to /dashboard
    POST /dashboard/logout           clears it
    GET  /dashboard/api/spend        ?bucket=hour|day&hours=N: per bucket, chain and API key
    GET  /dashboard/api/policy-spend ?bucket=hour|day&hours=N: per bucket, chain and policy
    GET  /dashboard/api/outcomes     ?hours=N: answers per hour, accepted (ok) and refused by code
    GET  /dashboard/api/deposits     ?hours=N: each paymaster's deposit samples and its threshold
    GET  /dashboard/api/signers      signer health, circuits and failovers (this process)
    GET  /dashboard/api/signer-events ?hours=N: failovers per hour and the latest events (every process)
    GET  /dashboard/api/policies     each policy's limits: used and remaining
    GET  /dashboard/api/operations   ?limit=N: the latest operations and their outcome
    GET  /dashboard/api/follower     the EntryPoint follower: each chain's block, and how far behind
"""

from __future__ import annotations

import asyncio
import html
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse, RedirectResponse, Response

from anode.api.dashboard_auth import Sessions, clear_cookie, set_cookie
from anode.api.errors import http_refusal
from anode.errors import AnodeError, Forbidden, InvalidRequest, Unauthorized
from anode.pipeline.modules.policy_engine import engine_of
from anode.store.dashboard import MAX_WINDOW, DashboardStore, OutcomeCounter
from anode.store.signer_events import SignerEventLog

ASSETS_DIR = Path(__file__).parent / "static" / "dashboard"
ASSETS_PATH = "/dashboard/assets"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
_MAX_HOURS = int(MAX_WINDOW.total_seconds() // 3600)
#: a login body is one short form field
_MAX_LOGIN_BYTES = 4096

Hours = Annotated[int, Query(ge=1, le=_MAX_HOURS, description="how many hours back, up to 31 days")]


def _sessions(request: Request) -> Sessions:
    sessions: Sessions = request.app.state.dashboard_sessions
    return sessions


async def _admin(request: Request) -> str:
    return await _sessions(request).admin(request)


Admin = Annotated[str, Depends(_admin)]
router = APIRouter(prefix="/dashboard/api", tags=["dashboard"], include_in_schema=False)


def _store(request: Request) -> DashboardStore:
    store: DashboardStore | None = request.app.state.anode.dashboard
    if store is None:  # pragma: no cover - wiring always builds it
        raise InvalidRequest("the dashboard has no database to read")
    return store


def _flush(request: Request) -> None:
    """This process's counts so far go to the table first, so the page is current."""
    outcomes: OutcomeCounter | None = request.app.state.anode.outcomes
    if outcomes is not None:
        outcomes.flush()


def _flush_signer_events(request: Request) -> None:
    """This process's signer events so far go to the table first."""
    events: SignerEventLog | None = request.app.state.anode.signer_events
    if events is not None:
        events.flush()


async def _run(function: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)


def _since(hours: int) -> datetime:
    return datetime.now(UTC) - timedelta(hours=hours)


@router.get("/spend")
async def spend(
    request: Request, _admin: Admin, bucket: Literal["hour", "day"] = "hour", hours: Hours = 48
) -> dict[str, Any]:
    rows = await _run(_store(request).spend, _since(hours), None, bucket)
    return {"bucket": bucket, "hours": hours, "rows": rows}


@router.get("/policy-spend")
async def policy_spend(
    request: Request, _admin: Admin, bucket: Literal["hour", "day"] = "hour", hours: Hours = 48
) -> dict[str, Any]:
    rows = await _run(_store(request).policy_spend, _since(hours), None, bucket)
    engine = engine_of(request.app.state.anode.service.pipeline.policies)
    names = {} if engine is None else {policy.id: policy.name for policy in await engine.repository.list()}
    return {"bucket": bucket, "hours": hours, "rows": rows, "names": names}


@router.get("/outcomes")
async def outcomes(request: Request, _admin: Admin, hours: Hours = 48) -> dict[str, Any]:
    await _run(_flush, request)
    return {"hours": hours, "rows": await _run(_store(request).outcomes, _since(hours))}


@router.get("/deposits")
async def deposits(request: Request, _admin: Admin, hours: Hours = 48) -> dict[str, Any]:
    settings = request.app.state.anode.settings
    samples = await _run(_store(request).deposits, _since(hours))
    thresholds = [
        {
            "chainId": chain.chain_id,
            "paymaster": pm.address,
            "entryPoint": pm.entry_point,
            "lowBalanceWei": None if pm.low_balance_wei is None else str(pm.low_balance_wei),
        }
        for chain in settings.chains
        for pm in chain.paymasters
    ]
    return {"hours": hours, "sampled": settings.deposits.enabled, "samples": samples, "paymasters": thresholds}


@router.get("/signers")
async def signers(request: Request, _admin: Admin) -> dict[str, Any]:
    anode = request.app.state.anode
    health: dict[str, Any] = anode.signer.health()
    registry = anode.metrics.registry
    for backend in health["backends"]:
        failovers = registry.get_sample_value("anode_signer_failovers_total", {"backend": backend["name"]})
        backend["failovers"] = int(failovers or 0)
    return health


@router.get("/signer-events")
async def signer_events(
    request: Request, _admin: Admin, hours: Hours = 48, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> dict[str, Any]:
    await _run(_flush_signer_events, request)
    store = _store(request)
    failovers = await _run(store.signer_failovers, _since(hours))
    return {"hours": hours, "failovers": failovers, "events": await _run(store.signer_events, limit)}


@router.get("/policies")
async def policies(request: Request, _admin: Admin) -> dict[str, Any]:
    engine = engine_of(request.app.state.anode.service.pipeline.policies)
    if engine is None:
        return {"enabled": False, "policies": []}
    answers = []
    for policy in await engine.repository.list():
        if policy.per_wallet:  # counted per wallet: no single figure to show
            answers.append({"id": policy.id, "name": policy.name, "type": policy.type.value, "perWallet": True})
            continue
        answers.append(await engine.status(policy.id))
    return {"enabled": True, "policies": answers}


@router.get("/operations")
async def operations(
    request: Request, _admin: Admin, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> dict[str, Any]:
    return {"operations": await _run(_store(request).operations, limit)}


@router.get("/follower")
async def follower(request: Request, _admin: Admin) -> dict[str, Any]:
    anode = request.app.state.anode
    state: dict[str, Any] = await _run(_store(request).follower)
    heads: dict[int, int | None] = {}
    for route in anode.routes:
        if route.chain_id not in heads:
            try:
                heads[route.chain_id] = int(await route.chain.request("eth_blockNumber", []), 16)
            except (AnodeError, ValueError, TypeError):  # the node is down: the page says so
                heads[route.chain_id] = None
    for chain in state["chains"]:
        head = heads.get(chain["chainId"])
        chain["head"] = head
        chain["behind"] = None if head is None else max(0, head - chain["lastBlock"])
    return {"enabled": anode.settings.watch.enabled, **state}


def add_dashboard(app: FastAPI, sessions: Sessions) -> None:
    """Serve the page, its assets, the login and the data endpoints."""
    app.state.dashboard_sessions = sessions
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS_DIR), name="dashboard-assets")
    app.include_router(router)

    @app.get("/dashboard", include_in_schema=False)
    async def page(request: Request) -> Response:
        try:
            await sessions.admin(request)
        except (Unauthorized, Forbidden) as exc:
            return _login(request, exc)
        return HTMLResponse(_page(request, "index.html"), headers=_HEADERS)

    @app.post("/dashboard/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        if not _same_origin(request):
            return _login(request, Forbidden("the login form must be posted from this server's own page"))
        body = await request.body()
        if len(body) > _MAX_LOGIN_BYTES:
            return _login(request, InvalidRequest("the login form is too large"))
        key = (parse_qs(body.decode("utf-8", "replace")).get("key") or [""])[0].strip()
        if not key:
            return _login(request, Unauthorized("enter an admin key"))
        try:
            value = await sessions.open(key)
        except (Unauthorized, Forbidden) as exc:
            return _login(request, exc)
        response = RedirectResponse(_root(request) + "/dashboard", status_code=303, headers=_HEADERS)
        set_cookie(response, request, value)
        return response

    @app.post("/dashboard/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        response = RedirectResponse(_root(request) + "/dashboard", status_code=303, headers=_HEADERS)
        clear_cookie(response, request)
        return response


def _login(request: Request, error: AnodeError) -> HTMLResponse:
    """The login form, saying why (with the error's own HTTP status: ``api/errors.py`` maps it)."""
    status, _ = http_refusal(error)
    text = _page(request, "login.html").replace("{{message}}", html.escape(error.message))
    return HTMLResponse(text, status_code=status, headers=_HEADERS)


def _page(request: Request, name: str) -> str:
    return (ASSETS_DIR / name).read_text().replace("{{root}}", html.escape(_root(request)))


def _root(request: Request) -> str:
    root: str = request.scope.get("root_path", "")
    return root


def _same_origin(request: Request) -> bool:
    """A browser names the page a form came from; it must be this server (login CSRF)."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1] == host
