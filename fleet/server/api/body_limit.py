"""Request bodies bounded before anything reads them.

FastAPI reads and parses a body before a route's dependencies check the token, and Starlette
spools a multipart body to disk the same way: without a bound, anyone who can reach the port
makes the server read 300 MB (1.1 GB of RSS) to answer 401. `BodyLimit` answers 413 with the
API's error body (`{"detail": ...}`) instead:
- at once, without reading a byte, when Content-Length is over the route's bound;
- for a body without one (chunked), as soon as the bytes counted so far pass it; nothing more
  is read, whatever the app made of the cut-off body.
The refused connection is closed (`Connection: close`): the rest of its body is never read.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Any route's body unless it has its own bound.
DEFAULT_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Bound:
    """The largest body of `method` on the paths `path` (a regular expression) matches whole."""

    method: str
    path: str
    limit: int


class BodyTooLarge(HTTPException):
    """Raised from `receive` past the bound. An HTTPException, so that FastAPI's body parsing
    passes it on as it is (it turns any other error into a 400) and the app's own handler
    answers it; BodyLimit answers it itself if it gets that far."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _detail(limit), headers={"Connection": "close"})


def _detail(limit: int) -> str:
    return f"request body over {limit} bytes, this route's limit"


class BodyLimit:
    """Pure ASGI (it must see `receive` itself); installed inside errors' catch-all."""

    def __init__(
        self, app: ASGIApp, *, default: int = DEFAULT_BODY_BYTES, bounds: Sequence[Bound] = ()
    ) -> None:
        self.app = app
        self.default = default
        self.bounds = [(b.method, re.compile(b.path), b.limit) for b in bounds]

    def limit(self, method: str, path: str) -> int:
        for m, pattern, limit in self.bounds:
            if m == method and pattern.fullmatch(path):
                return limit
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope["method"], scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(limit, scope, receive, send)
            return
        received = 0
        over = False  # the bound was passed: the answer is our 413, whatever the app says
        answered = False

        async def counting_receive() -> Message:
            nonlocal received, over
            if over:  # asked again (e.g. by a cleanup): still nothing more is read
                raise BodyTooLarge(limit)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    raise BodyTooLarge(limit)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal answered
            if over:
                # Whatever the app answers to a cut-off body (its 413, or a 422 for what it
                # could parse) is replaced by ours, once.
                if not answered:
                    answered = True
                    await _refuse(limit, scope, receive, send)
                return
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            if answered:  # a response was under way when a streaming route read past the bound
                return
            answered = True
            await _refuse(limit, scope, receive, send)
            return
        if over and not answered:
            await _refuse(limit, scope, receive, send)


async def _refuse(limit: int, scope: Scope, receive: Receive, send: Send) -> None:
    response = JSONResponse(
        {"detail": _detail(limit)}, status_code=413, headers={"Connection": "close"}
    )
    await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            # The server has already refused one that is not a number (h11: 400).
            return int(value) if value.strip().isdigit() else None
    return None
