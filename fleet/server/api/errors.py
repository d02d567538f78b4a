"""Every error the API answers, in the two shapes its OpenAPI documents.

- 422: always FastAPI's list form, `{"detail": [{"type", "loc", "msg", ...}]}`, naming the field
  (`invalid()` builds one from a route's own check). A body the framework cannot even parse
  (not UTF-8, broken multipart) is a 422 at `body` too, never its bare 400.
- every other 4xx, and 500: `{"detail": "<reason>"}` (ErrorBody).
- 405 lists in `Allow` every method the path has, not only the first route's.
- anything a route did not expect is logged with its traceback and a reference, and answered
  as a 500 that carries the reference and nothing of the traceback. A client that hung up
  while its body was read is no such thing: a debug line, and no answer (nobody to take it).
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
#: A field path as the server's checks write it before ": problem" ("window.tz", "waves[2]").
_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+|\[[0-9]+\])*")


def invalid(loc: Sequence[str | int], message: str, value: object = None) -> RequestValidationError:
    """A 422 naming the field, for a check the request schema cannot state (e.g. a USCC's check
    character): `loc` starts with where the value was, e.g. ("body", "lic", "uscc")."""
    return RequestValidationError(
        [{"type": "value_error", "loc": tuple(loc), "msg": message, "input": value}]
    )


def loc_of(path: str) -> list[str | int]:
    """A check's dotted path ("window.tz", "days.mon[0]") as a `loc`: ["days", "mon", 0]."""
    return [int(p) if p.isdigit() else p for p in re.split(r"[.\[\]]", path) if p]


def message_loc(message: str) -> list[str | int]:
    """The field a "field.path: problem" message names, as a `loc` ([] if it names none)."""
    head, sep, _ = message.partition(": ")
    return loc_of(head) if sep and _PATH.fullmatch(head) else []


def install(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, _http_error)
    app.add_middleware(_CatchAll)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400:
        # No route answers 400: only FastAPI and Starlette do, for a body they cannot parse.
        error = {"type": "value_error", "loc": ["body"], "msg": str(exc.detail)}
        return JSONResponse({"detail": [error]}, status_code=422)
    if exc.status_code == 422 and not isinstance(exc.detail, list):
        # A route's own refusal given as text: still the documented list form.
        error = {"type": "value_error", "loc": [], "msg": str(exc.detail)}
        return JSONResponse({"detail": [error]}, status_code=422, headers=exc.headers)
    if exc.status_code == 405:
        allowed = _allowed_methods(request)
        if allowed:
            exc = HTTPException(405, exc.detail, headers={"Allow": ", ".join(allowed)})
    return await http_exception_handler(request, exc)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route takes at this path (Starlette names only the first route's)."""
    allowed = []
    for method in _METHODS:
        probe = {**request.scope, "method": method}
        routes = (r for r in request.app.router.routes if not isinstance(r, Mount))
        if any(route.matches(probe)[0] == Match.FULL for route in routes):
            allowed.append(method)
    return allowed


class _CatchAll:
    """The last resort: a logged 500 with a reference instead of Starlette's bare one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except ClientDisconnect:
            log.debug("client left during %s %s", scope["method"], scope["path"])
        except Exception:
            ref = secrets.token_hex(6)
            log.exception("unexpected error %s in %s %s", ref, scope["method"], scope["path"])
            if started:  # half a response is out: only closing the connection is left
                raise
            body = {"detail": f"internal error (reference {ref}); the server log has the cause"}
            await JSONResponse(body, status_code=500)(scope, receive, send)
