"""The fleet server's REST API (DESIGN.md "REST API (v1)"): `create_app` builds the ASGI app.

The database is opened in the app's lifespan, then each lifespan hook is entered in order and
left in reverse, before the database closes. A hook is how the ingest (or any background job)
runs beside the API and shares its context:

    @asynccontextmanager
    async def run_ingest(ctx: AppContext) -> AsyncIterator[None]:
        ingest = Ingest(ctx.settings, bus=ctx.bus, metrics=ctx.metrics)
        await ingest.start()
        ctx.ingest_ready = ingest.connected          # /healthz readiness
        ctx.alert_engine = ingest.alert_engine      # so an ack reaches the in-memory state
        try:
            yield
        finally:
            await ingest.stop()

    app = create_app(settings, hooks=[run_ingest])
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

from fastapi import APIRouter, FastAPI

from fleet.server.api import errors
from fleet.server.api.body_limit import BodyLimit, Bound
from fleet.server.api.context import AppContext
from fleet.server.api.openapi import FleetAPI
from fleet.server.api.routes import (
    alerts,
    commands,
    config,
    events,
    health,
    licences,
    metrics,
    refill,
    rollouts,
    templates,
    terminals,
    updates,
    verify,
)
from fleet.server.db import close_db, init_db
from fleet.server.settings import Settings
from fleet.server.web import pages as web_pages

LifespanHook = Callable[[AppContext], AbstractAsyncContextManager[None]]

__all__ = ["AppContext", "LifespanHook", "create_app"]


def create_app(
    settings: Settings,
    *,
    hooks: Sequence[LifespanHook] = (),
    manage_db: bool = True,
    context: AppContext | None = None,
) -> FastAPI:
    """The API app. `manage_db=False` when the caller has opened the database itself (tests)."""
    ctx = context if context is not None else AppContext(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if manage_db:
                await init_db(settings.database_url)
                stack.push_async_callback(close_db)
            stack.push_async_callback(ctx.rollouts.close)
            for hook in hooks:
                await stack.enter_async_context(hook(ctx))
            yield

    app = FleetAPI(
        title="Kiosk fleet API",
        version="1",
        description="Fleet state, alerts and the refill round for self-service licence kiosks.",
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    # Bodies over their route's bound are refused unread, before any token is checked. Added
    # first, so it runs inside errors' catch-all (Starlette's last-added is the outermost).
    app.add_middleware(
        BodyLimit,
        bounds=(
            Bound("POST", "/api/v1/verify", verify.MAX_VERIFY_BYTES),
            Bound("POST", "/api/v1/verify/images", verify.MAX_IMAGES_BODY_BYTES),
            Bound("PUT", "/api/v1/templates/[^/]+", templates.MAX_TEMPLATE_BODY_BYTES),
            Bound("POST", "/login|/logout", web_pages.MAX_FORM_BYTES),
        ),
    )
    errors.install(app)  # one shape per error, a logged 500 for the unexpected
    v1 = APIRouter(prefix="/api/v1")  # 401/403/404/422 are documented by FleetAPI
    routes = (
        terminals,
        alerts,
        refill,
        events,
        config,
        templates,
        commands,
        licences,
        verify,
        updates,
        rollouts,
    )
    for module in routes:
        v1.include_router(module.router)
    app.include_router(v1)
    app.include_router(health.router)
    app.include_router(metrics.router)
    web_pages.mount(app)  # the dashboard: /, /login, /alerts, ..., /static
    return app
