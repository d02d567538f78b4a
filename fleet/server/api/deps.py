"""Dependencies the routes declare: the app context and the caller's role (the values of
path and query parameters are in params.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fleet.server.api.auth import Principal, authenticate
from fleet.server.api.context import AppContext
from fleet.server.db.models import Role
from fleet.server.web.session import session_principal

#: Least privilege: auditors verify licences in the field and have no business with the fleet's
#: state, so every fleet route is for operators and admins. Reading and acknowledging are kept as
#: two sets so they can diverge (e.g. a read-only "viewer" role) without touching the routes.
FLEET_READ_ROLES = frozenset({Role.OPERATOR, Role.ADMIN})
FLEET_WRITE_ROLES = frozenset({Role.OPERATOR, Role.ADMIN})
#: Desired configuration and form templates reach every kiosk at once: only admins change them.
#: Operators read them and send commands (FLEET_WRITE_ROLES).
CONFIG_WRITE_ROLES = frozenset({Role.ADMIN})

_bearer = HTTPBearer(auto_error=False, description="API token from `fleet tokens create`")


def get_context(request: Request) -> AppContext:
    ctx: AppContext = request.app.state.ctx
    return ctx


async def get_principal(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, from the bearer token; 401 (RFC 6750 challenge) when absent or not valid.

    Without a bearer header, the dashboard's session cookie (fleet.server.web.session) also
    counts, so the pages' fetches and EventSource use this API; a state-changing request made
    that way must carry the session's CSRF token (else 403).
    """
    if creds is None:
        from_session = await session_principal(request)
        if from_session is not None:
            return from_session
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing bearer token",
            headers={"WWW-Authenticate": 'Bearer realm="fleet"'},
        )
    principal = await authenticate(creds.credentials)
    if principal is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "invalid or revoked token",
            headers={"WWW-Authenticate": 'Bearer realm="fleet", error="invalid_token"'},
        )
    return principal


def require_role(roles: frozenset[Role]) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if principal.role not in roles:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "this token's role may not do this")
        return principal

    return check


Ctx = Annotated[AppContext, Depends(get_context)]
FleetReader = Annotated[Principal, Depends(require_role(FLEET_READ_ROLES))]
FleetWriter = Annotated[Principal, Depends(require_role(FLEET_WRITE_ROLES))]
ConfigWriter = Annotated[Principal, Depends(require_role(CONFIG_WRITE_ROLES))]
