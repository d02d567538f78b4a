"""The dashboard's pages. Each one reads through the API's own route functions (same filters,
same data as `/api/v1`), renders server-side, and leaves live updates and actions to
`static/app.js`, which calls `/api/v1` with the session cookie (and the CSRF header)."""

from __future__ import annotations

import json
import re
import secrets
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from agent.desired.document import DocumentError
from fleet.server.alerts.rules import RULES
from fleet.server.api import auth
from fleet.server.api.context import AppContext
from fleet.server.api.params import (
    SITE_ID_RE,
    TerminalStateFilter,
    as_rollout_id,
    is_terminal_id,
)
from fleet.server.api.routes import alerts as alerts_api
from fleet.server.api.routes import commands as commands_api
from fleet.server.api.routes import refill as refill_api
from fleet.server.api.routes import rollouts as rollouts_api
from fleet.server.api.routes import terminals as terminals_api
from fleet.server.db.models import (
    FailureAction,
    Role,
    RolloutState,
    Site,
    Terminal,
    TerminalEvent,
    UpdateState,
)
from fleet.server.terminal_state import STATES, terminal_state
from fleet.server.web import i18n
from fleet.server.web.charts import paper_chart
from fleet.server.web.session import (
    COOKIE,
    CSRF_FIELD,
    LOGIN_CSRF_COOKIE,
    SESSION_TTL_S,
    Session,
    csrf_ok,
    csrf_token,
    current_session,
    secret_of,
    sign,
)

HERE = Path(__file__).parent
LANG_COOKIE = "fleet_lang"
FLEET_ROLES = frozenset({Role.OPERATOR, Role.ADMIN})
VERIFY_ROLES = frozenset({Role.AUDITOR, Role.ADMIN})
ISSUE_ROLES = frozenset({Role.OPERATOR, Role.ADMIN})
#: (path, catalogue key, roles): the navigation, shown per role.
NAV = (
    ("/", "nav_overview", FLEET_ROLES),
    ("/alerts", "nav_alerts", FLEET_ROLES),
    ("/refill", "nav_refill", FLEET_ROLES),
    ("/rollouts", "nav_rollouts", FLEET_ROLES),
    ("/verify", "nav_verify", VERIFY_ROLES),
    ("/licences/new", "nav_issue", ISSUE_ROLES),
)
#: Every page: scripts and styles only from us; inline styles allowed (paper bars), no inline
#: script (page data travels in <script type="application/json">, which never runs).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
STATE_FILTERS: tuple[TerminalStateFilter, ...] = ("online", *STATES)

router = APIRouter(include_in_schema=False)
_env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def mount(app: FastAPI) -> None:
    """Add the pages and their static files to the app."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")


# --- rendering ---------------------------------------------------------------------------------


def _ctx(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


def _lang(request: Request) -> str:
    return i18n.pick_lang(request.query_params.get("lang"), request.cookies.get(LANG_COOKIE))


def _render(
    request: Request,
    template: str,
    session: Session | None,
    status_code: int = 200,
    **values: Any,
) -> HTMLResponse:
    lang = _lang(request)
    zone = _ctx(request).settings.zone

    def when(dt: datetime | str | None, fmt: str = "%m-%d %H:%M:%S") -> str:
        if dt is None:
            return "—"
        if isinstance(dt, str):
            dt = datetime.fromisoformat(dt)
        return dt.astimezone(zone).strftime(fmt)

    _env.filters["when"] = when
    t = i18n.messages(lang)
    html = _env.get_template(template).render(
        t=t,
        lang=lang,
        session=session,
        csrf=csrf_token(secret_of(request), session) if session else "",
        nav=[(p, t[k]) for p, k, roles in NAV if session and session.role in roles],
        path=request.url.path,
        section="/" + request.url.path.split("/")[1],
        zone=_ctx(request).settings.service_timezone,
        **values,
    )
    response = HTMLResponse(html, status_code=status_code)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    if request.query_params.get("lang") in i18n.CATALOGUES:
        response.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, samesite="lax", httponly=True)
    return response


async def _guard(request: Request, roles: frozenset[Role]) -> Session | Response:
    """The session if its role may see the page; else a redirect to log in, or 403."""
    session = await current_session(request)
    if session is None:
        return RedirectResponse("/login", status_code=303)
    if session.role not in roles:
        return _render(request, "message.html", session, 403, message_key="forbidden")
    return session


def _home(role: Role) -> str:
    return "/" if role in FLEET_ROLES else "/verify"


# --- login -------------------------------------------------------------------------------------


def _login_page(request: Request, error: str | None, status_code: int = 200) -> HTMLResponse:
    nonce = secrets.token_urlsafe(24)
    response = _render(request, "login.html", None, status_code, error=error, login_csrf=nonce)
    # Double-submit: a cross-site form cannot read or set this cookie, so it cannot echo it.
    response.set_cookie(
        LOGIN_CSRF_COOKIE, nonce, max_age=3600, httponly=True, samesite="strict", path="/login"
    )
    return response


@router.get("/login")
async def login_form(request: Request) -> Response:
    session = await current_session(request)
    if session is not None:
        return RedirectResponse(_home(session.role), status_code=303)
    return _login_page(request, None)


#: A dashboard form's body (a token and a CSRF field); api/body_limit.py refuses more unread.
MAX_FORM_BYTES = 16 * 1024


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, "form too large")
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}


@router.post("/login")
async def login(request: Request) -> Response:
    form = await _form(request)
    expected = request.cookies.get(LOGIN_CSRF_COOKIE)
    given = form.get(CSRF_FIELD, "")
    if not expected or not secrets.compare_digest(expected, given):
        return _login_page(request, "login_expired", 403)
    principal = await auth.authenticate(form.get("token", "").strip())
    if principal is None:
        return _login_page(request, "login_failed", 401)
    response = RedirectResponse(_home(principal.role), status_code=303)
    response.set_cookie(
        COOKIE,
        sign(secret_of(request), principal),
        max_age=SESSION_TTL_S,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    session = await current_session(request)
    form = await _form(request)
    if session is not None and not csrf_ok(secret_of(request), session, form.get(CSRF_FIELD)):
        return _render(request, "message.html", session, 403, message_key="login_expired")
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


# --- fleet pages -------------------------------------------------------------------------------


@router.get("/")
async def overview(request: Request) -> Response:
    session = await current_session(request)
    if session is not None and session.role not in FLEET_ROLES:
        return RedirectResponse(_home(session.role), status_code=303)
    guarded = await _guard(request, FLEET_ROLES)
    if not isinstance(guarded, Session):
        return guarded
    q = request.query_params
    # Filters the API would refuse are left out, as an unknown state or rule is.
    site = q.get("site") if re.fullmatch(SITE_ID_RE, q.get("site", "")) else None
    state = next((s for s in STATE_FILTERS if s == q.get("state")), None)
    alert = q.get("alert") if q.get("alert") in RULES else None
    page = await terminals_api.list_terminals(
        _=guarded.principal,
        limit=500,
        offset=0,
        site=site,
        state=state,
        alert=alert,
    )
    fleet = (
        await Terminal.all().order_by("id").values_list("id", "site_id", "online", "printer_state")
    )
    everyone = {tid: [sid, terminal_state(bool(on), ps)] for tid, sid, on, ps in fleet}
    by_state = Counter(st for _sid, st in everyone.values())
    by_site = Counter(sid for sid, _st in everyone.values())
    names = dict(await Site.all().values_list("id", "name"))
    lang = _lang(request)
    return _render(
        request,
        "overview.html",
        guarded,
        page=page,
        states=STATES,
        state_filters=STATE_FILTERS,
        by_state=by_state,
        by_site=sorted(by_site.items()),
        site_names=names,
        rules=i18n.rule_names(lang),
        filters={"site": site, "state": state, "alert": alert},
        live={
            "terminals": everyone,
            "rules": i18n.rule_names(lang),
            "zone": _ctx(request).settings.service_timezone,
        },
    )


@router.get("/terminals/{terminal_id}")
async def terminal_detail(request: Request, terminal_id: str) -> Response:
    guarded = await _guard(request, FLEET_ROLES)
    if not isinstance(guarded, Session):
        return guarded
    ctx, who = _ctx(request), guarded.principal
    try:
        if not is_terminal_id(terminal_id):  # no terminal can have it
            raise HTTPException(404)
        detail = await terminals_api.get_terminal(terminal_id, ctx, who)
    except HTTPException:
        return _render(request, "message.html", guarded, 404, message_key="not_found")
    history = await terminals_api.get_history(terminal_id, ctx, who, from_=None, to=None)
    cmds = await commands_api.list_commands(terminal_id, ctx, who, limit=20, offset=0)
    events = await TerminalEvent.filter(terminal_id=terminal_id).order_by("-ts").limit(30)
    t = i18n.messages(_lang(request))
    chart = paper_chart(
        [(s.ts, s.paper_pct) for s in history.items],
        history.from_,
        history.to,
        ctx.settings.zone,
        ctx.settings.paper_low_pct,
        t["detail_paper_history"],
    )
    return _render(
        request,
        "terminal.html",
        guarded,
        d=detail,
        settings=await _settings_and_layers(ctx, terminal_id),
        chart=chart,
        has_samples=bool(history.items),
        commands=cmds.items,
        events=events,
        rules=i18n.rule_names(_lang(request)),
        live={"terminal": terminal_id, "rules": i18n.rule_names(_lang(request))},
    )


async def _settings_and_layers(ctx: AppContext, terminal_id: str) -> list[tuple[str, str, str]]:
    """(setting, value, the layer it comes from) for the terminal's configuration as the layers
    give it now; [] without the desired state, or when the layers make no valid document."""
    service = ctx.desired
    terminal = await Terminal.get_or_none(id=terminal_id)
    if service is None or terminal is None:
        return []
    try:
        config = (await service.compute(terminal))["config"]
    except DocumentError:
        return []
    sources = await service.sources(terminal)
    return [(path, _leaf(config, path), layer) for path, layer in sources.items()]


def _leaf(config: dict[str, Any], path: str) -> str:
    value: Any = config
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


@router.get("/alerts")
async def alerts_page(request: Request) -> Response:
    guarded = await _guard(request, FLEET_ROLES)
    if not isinstance(guarded, Session):
        return guarded
    ctx, who = _ctx(request), guarded.principal
    common: dict[str, Any] = {
        "recent_hours": 24,
        "rule": None,
        "severity": None,
        "terminal": None,
        "site": None,
    }
    active = await alerts_api.list_alerts(ctx, who, limit=500, offset=0, state="active", **common)
    recent = await alerts_api.list_alerts(ctx, who, limit=200, offset=0, state="cleared", **common)
    lang = _lang(request)
    return _render(
        request,
        "alerts.html",
        guarded,
        active=active.items,
        recent=recent.items,
        rules=i18n.rule_names(lang),
        live={"rules": i18n.rule_names(lang), "zone": ctx.settings.service_timezone},
    )


@router.get("/refill")
async def refill_page(request: Request) -> Response:
    guarded = await _guard(request, FLEET_ROLES)
    if not isinstance(guarded, Session):
        return guarded
    plan = await refill_api.get_refill_round(_ctx(request), guarded.principal)
    return _render(request, "refill.html", guarded, plan=plan)


# --- rollouts ----------------------------------------------------------------------------------

#: What the rollout pages' script needs besides the catalogue: the state names in order.
_ROLLOUT_LIVE = {
    "update_states": [s.value for s in UpdateState],
    "failure_states": [
        UpdateState.FAILED.value,
        UpdateState.ROLLED_BACK.value,
        UpdateState.TIMED_OUT.value,
    ],
}


@router.get("/rollouts")
async def rollouts_page(request: Request) -> Response:
    guarded = await _guard(request, FLEET_ROLES)
    if not isinstance(guarded, Session):
        return guarded
    page = await rollouts_api.list_rollouts(guarded.principal, limit=200, offset=0, state=None)
    return _render(
        request,
        "rollouts.html",
        guarded,
        rollouts=page.items,
        total=page.total,
        update_states=[s.value for s in UpdateState],
        failure_actions=[a.value for a in FailureAction],
        is_admin=guarded.role == Role.ADMIN,
        live={**_ROLLOUT_LIVE, "zone": _ctx(request).settings.service_timezone},
    )


@router.get("/rollouts/{rollout_id}")
async def rollout_page(request: Request, rollout_id: str) -> Response:
    guarded = await _guard(request, FLEET_ROLES)
    if not isinstance(guarded, Session):
        return guarded
    try:
        number = as_rollout_id(rollout_id)
        if number is None:  # no rollout can have it
            raise HTTPException(404)
        r = await rollouts_api.get_rollout(number, guarded.principal)
    except HTTPException:
        return _render(request, "message.html", guarded, 404, message_key="not_found")
    started = sum(len(w.terminals) for w in r.waves if w.started)
    failed = sum(r.counts.get(s, 0) for s in _ROLLOUT_LIVE["failure_states"])
    return _render(
        request,
        "rollout.html",
        guarded,
        r=r,
        started=started,
        failed=failed,
        update_states=[s.value for s in UpdateState],
        is_admin=guarded.role == Role.ADMIN,
        active=r.state in (RolloutState.PENDING, RolloutState.RUNNING, RolloutState.PAUSED),
        live={
            **_ROLLOUT_LIVE,
            "rollout": r.id,
            "zone": _ctx(request).settings.service_timezone,
        },
    )


# --- licences ----------------------------------------------------------------------------------


@router.get("/verify")
async def verify_page(request: Request) -> Response:
    guarded = await _guard(request, VERIFY_ROLES)
    if not isinstance(guarded, Session):
        return guarded
    lang = _lang(request)
    # Offer image upload only where the server has the route (the OpenAPI schema is cached).
    images = "/api/v1/verify/images" in request.app.openapi().get("paths", {})
    return _render(
        request,
        "verify.html",
        guarded,
        images=images,
        live={
            "verdicts": i18n.verdict_words(lang),
            "zone": _ctx(request).settings.service_timezone,
        },
    )


@router.get("/licences/new")
async def issue_page(request: Request) -> Response:
    guarded = await _guard(request, ISSUE_ROLES)
    if not isinstance(guarded, Session):
        return guarded
    now = datetime.now(_ctx(request).settings.zone)
    return _render(
        request,
        "issue.html",
        guarded,
        today=now.strftime("%Y-%m-%d"),
        expires=(now + timedelta(days=365)).strftime("%Y-%m-%d"),
    )
