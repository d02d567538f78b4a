"""Server-sent events: live status changes and alert transitions for the dashboard.

Wire format (text/event-stream):
    retry: 3000                       first: reconnect after 3 s if the stream breaks
    id: 42                            then one block per bus event
    event: status | presence | alert
    data: {"terminal": ..., ...}      one line of JSON
    : heartbeat                       a comment every `sse_heartbeat_s` when nothing happens,
                                      so proxies keep the connection and clients notice a dead one
    event: dropped                    last, when this client fell too far behind: reconnect and
                                      reload over REST (the bus never waits for a slow reader)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from fleet.server.api.deps import Ctx, FleetReader
from fleet.server.events_bus import BusEvent, EventKind, SubscriberDropped, Subscription

router = APIRouter(prefix="/events", tags=["events"])

RETRY_MS = 3000


@router.get(
    "",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "event stream"}},
)
async def stream_events(
    ctx: Ctx,
    _: FleetReader,
    kind: Annotated[list[EventKind] | None, Query(description="only these kinds")] = None,
) -> StreamingResponse:
    """Stream status changes and alert transitions as server-sent events."""
    # Subscribe before the response starts, so nothing published after this request is missed.
    sub = ctx.bus.subscribe()
    kinds = frozenset(kind) if kind else None
    return StreamingResponse(
        _stream(sub, kinds, ctx.sse_heartbeat_s),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _stream(
    sub: Subscription, kinds: frozenset[EventKind] | None, heartbeat_s: float
) -> AsyncIterator[str]:
    # Starlette cancels this generator when the client disconnects; `finally` unsubscribes.
    try:
        yield f"retry: {RETRY_MS}\n\n"
        while True:
            try:
                event = await sub.get(timeout=heartbeat_s)
            except SubscriberDropped:
                yield "event: dropped\ndata: {}\n\n"
                return
            if event is None:
                yield ": heartbeat\n\n"
            elif kinds is None or event.kind in kinds:
                yield format_event(event)
    finally:
        sub.close()


def format_event(event: BusEvent) -> str:
    data = json.dumps(event.data, separators=(",", ":"), ensure_ascii=False, default=str)
    return f"id: {event.id}\nevent: {event.kind}\ndata: {data}\n\n"
