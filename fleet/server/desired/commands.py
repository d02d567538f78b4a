"""Remote commands: stored, published on `fleet/v1/t/{id}/cmd` (QoS 1, not retained), answered on
`.../cmd/result`.

Command (server -> agent):

    {"v": 1, "id": "<uuid>", "name": "print_test_page" | "refresh_status" | "restart_agent",
     "args": {}, "issued_at": "...Z", "expires_at": "...Z"}

Result (agent -> server):

    {"v": 1, "id": "<uuid>", "ts": "...Z", "status": "ok" | "failed" | "expired" | "rejected",
     "detail": "..."}

Not retained: a command is for the terminal online now (or back within its expiry, while the
broker holds its session's queue); an agent receiving one after `expires_at` answers `expired`
and does not run it. A command with neither a result nor time left shows `expired` here.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from agent.desired.document import DocumentError
from fleet.server.db.models import Command, CommandStatus
from fleet.server.desired.service import MessagePublisher
from fleet.server.mqtt_publish import PublishError

NAMES: Final = ("print_test_page", "refresh_status", "restart_agent")
RESULTS: Final = ("ok", "failed", "expired", "rejected")
#: Still waiting for a result: these turn `expired` once their time is up.
OPEN: Final = (CommandStatus.PENDING, CommandStatus.SENT)
MAX_DETAIL_CHARS: Final = 2000


def command_topic(terminal_id: str) -> str:
    return f"fleet/v1/t/{terminal_id}/cmd"


def _stamp(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def message(cmd: Command) -> dict[str, Any]:
    return {
        "v": 1,
        "id": str(cmd.id),
        "name": cmd.name,
        "args": cmd.args,
        "issued_at": _stamp(cmd.issued_at),
        "expires_at": _stamp(cmd.expires_at),
    }


async def issue(
    publisher: MessagePublisher | None,
    terminal_id: str,
    name: str,
    args: dict[str, Any],
    ttl_s: float,
    by: str,
    now: datetime,
) -> Command:
    """Store the command and publish it; its status says whether the broker took it (`sent`) or
    not (`failed`, with why in `detail`)."""
    # Whole seconds: the wire format has no fractions, and the agent compares with it.
    issued = now.replace(microsecond=0)
    cmd = await Command.create(
        id=uuid.uuid4(),
        terminal_id=terminal_id,
        name=name,
        args=args,
        issued_at=issued,
        expires_at=issued + timedelta(seconds=round(ttl_s)),
        issued_by=by,
        status=CommandStatus.PENDING,
    )
    try:
        if publisher is None:
            raise PublishError("no publisher")
        await publisher.publish(
            command_topic(terminal_id), json.dumps(message(cmd)).encode(), retain=False
        )
    except PublishError as e:
        cmd.status, cmd.detail = CommandStatus.FAILED, f"not delivered to the broker: {e}"
    else:
        cmd.status = CommandStatus.SENT
    # Only if still pending: a result may have come back already.
    await Command.filter(id=cmd.id, status=CommandStatus.PENDING).update(
        status=cmd.status, detail=cmd.detail
    )
    return cmd


async def expire(terminal_id: str, now: datetime) -> int:
    """Mark the terminal's unanswered commands past their expiry `expired`."""
    return await Command.filter(
        terminal_id=terminal_id, status__in=list(OPEN), expires_at__lt=now
    ).update(status=CommandStatus.EXPIRED, detail="no result before the command expired")


@dataclass(frozen=True)
class Result:
    id: uuid.UUID
    status: str
    detail: str


def check_result(doc: dict[str, Any]) -> Result:
    """A `cmd/result` message (already JSON with v=1 and a valid ts, from the ingest)."""
    raw_id = doc.get("id")
    try:
        cid = uuid.UUID(raw_id) if isinstance(raw_id, str) else None
    except ValueError:
        cid = None
    if cid is None:
        raise DocumentError("id", "missing or not a UUID")
    status = doc.get("status")
    if status not in RESULTS:
        raise DocumentError("status", f"must be one of {', '.join(RESULTS)}")
    if "ts" not in doc:
        raise DocumentError("ts", "missing")
    detail = doc.get("detail", "")
    if detail is None:
        detail = ""
    if not isinstance(detail, str):
        raise DocumentError("detail", "must be a string")
    return Result(cid, status, detail[:MAX_DETAIL_CHARS])


async def known(pairs: set[tuple[uuid.UUID, str]]) -> set[tuple[uuid.UUID, str]]:
    """Which of these (command id, answering terminal) pairs name a command of that terminal."""
    if not pairs:
        return set()
    rows = await Command.filter(id__in=sorted({cid for cid, _ in pairs})).values_list(
        "id", "terminal_id"
    )
    return {(uuid.UUID(str(cid)), str(tid)) for cid, tid in rows} & pairs


async def record(result: Result, at: datetime) -> None:
    await Command.filter(id=result.id).update(
        status=CommandStatus(result.status), detail=result.detail, result_at=at
    )
