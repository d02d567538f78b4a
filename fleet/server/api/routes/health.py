"""Liveness and readiness, unauthenticated (probes and load balancers carry no token)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response, status
from tortoise.connection import get_connection

from fleet.server.api.deps import Ctx
from fleet.server.api.schemas import Health
from fleet.server.db.deadline import within

router = APIRouter(tags=["health"])

#: A database that takes longer than this to answer `SELECT 1` is not ready to serve.
DB_TIMEOUT_S = 2.0


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
async def healthz(ctx: Ctx, response: Response) -> Health:
    """Readiness: 200 when the database answers and the ingest (if attached) is connected."""
    checks: dict[str, Literal["ok", "down", "not_attached"]] = {
        "db": "ok" if await _db_ok() else "down",
        "ingest": "not_attached",
    }
    if ctx.ingest_ready is not None:
        checks["ingest"] = "ok" if ctx.ingest_ready() else "down"
    ready = all(v != "down" for v in checks.values())
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Health(status="ok" if ready else "unavailable", checks=checks)


@router.get("/healthz/live", response_model=Health)
async def liveness() -> Health:
    """Liveness: the process serves requests (no dependency checked, so no restart loops)."""
    return Health(status="ok", checks={})


async def _db_ok() -> bool:
    try:
        await within(get_connection("default").execute_query("SELECT 1"), DB_TIMEOUT_S)
    except Exception:  # any failure means "not ready", whatever the driver raises
        return False
    return True
