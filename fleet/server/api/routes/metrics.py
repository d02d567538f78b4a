"""Prometheus scrape endpoint. It names every terminal, its site and its paper level, so it is
not public: FLEET_METRICS_TOKEN (a bearer token for Prometheus) or an operator or admin API
token; open to anyone only in dev mode with no metrics token set (one machine, `make run`)."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST

from fleet.server.api.auth import authenticate
from fleet.server.api.deps import FLEET_READ_ROLES, Ctx

router = APIRouter(tags=["metrics"])

_bearer = HTTPBearer(
    auto_error=False,
    description="FLEET_METRICS_TOKEN, or an operator or admin API token",
)


def _unauthorized(detail: str, error: str | None = None) -> HTTPException:
    challenge = 'Bearer realm="fleet"' + (f', error="{error}"' if error else "")
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": challenge}
    )


def _same(given: str, expected: str) -> bool:
    # Digests first: equal lengths, so the comparison's time says nothing about the token.
    return hmac.compare_digest(
        hashlib.sha256(given.encode()).digest(), hashlib.sha256(expected.encode()).digest()
    )


async def may_scrape(
    ctx: Ctx, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """401 without a valid bearer token, 403 for an API token whose role may not read the fleet."""
    secret = ctx.settings.metrics_token
    expected = secret.get_secret_value() if secret is not None else ""
    if not expected and ctx.settings.dev_mode:
        return
    if creds is None:
        raise _unauthorized("missing bearer token")
    if expected and _same(creds.credentials, expected):
        return
    principal = await authenticate(creds.credentials)
    if principal is None:
        raise _unauthorized("invalid or revoked token", "invalid_token")
    if principal.role not in FLEET_READ_ROLES:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this token's role may not read metrics")


@router.get(
    "/metrics",
    response_class=Response,
    dependencies=[Depends(may_scrape)],
    responses={
        200: {"content": {"text/plain": {}}},
        401: {"description": "no bearer token, or not a valid one"},
        403: {"description": "an API token whose role may not read the fleet (auditor)"},
    },
)
async def metrics(ctx: Ctx) -> Response:
    """Prometheus text exposition: fleet state, ingest counters, process metrics."""
    return Response(await ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)
