"""The MQTT v1 payloads the agent publishes (DESIGN.md "MQTT contract (v1)").

One place builds them, so the agent and the fleet simulator send exactly the same shapes.
Fields may be added, never renamed.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from agent.drivers.base import PrinterStatus, ReaderStatus

SCHEMA_VERSION = 1
TOPIC_ROOT = "fleet/v1/t"
TERMINAL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
EVENT_KINDS = ("print_completed", "paper_refilled", "device_error")


def topic(terminal_id: str, kind: str) -> str:
    """`fleet/v1/t/{id}/{kind}` for kind in presence, status, event, desired, reported, cmd."""
    if not TERMINAL_ID.fullmatch(terminal_id):
        raise ValueError(f"terminal id {terminal_id!r} does not match {TERMINAL_ID.pattern}")
    return f"{TOPIC_ROOT}/{terminal_id}/{kind}"


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def presence(
    online: bool, agent_version: str, ts: str | None = None, reason: str | None = None
) -> dict[str, Any]:
    """Presence; an offline one says why: "will" (the Last Will) or "clean" (a stop)."""
    out = {"v": SCHEMA_VERSION, "online": online, "ts": ts or utc_now(), "agent": agent_version}
    if reason is not None:
        out["reason"] = reason
    return out


def status(
    *,
    seq: int,
    agent_version: str,
    printer: PrinterStatus | None,
    reader: ReaderStatus | None,
    host: dict[str, Any],
    desired: str | None = None,
    ts: str | None = None,
) -> dict[str, Any]:
    """A full status report; a device that could not be read is reported as such, not omitted."""
    return {
        "v": SCHEMA_VERSION,
        "seq": seq,
        "ts": ts or utc_now(),
        "agent": agent_version,
        "desired": desired,
        "printer": printer.to_json() if printer else None,
        "reader": reader.to_json() if reader else None,
        "host": host,
    }


def event(
    *, seq: int, kind: str, agent_version: str, ts: str | None = None, **data: Any
) -> dict[str, Any]:
    """A discrete event (`print_completed` with `serial`, `paper_refilled`, `device_error`, ...)."""
    return {
        "v": SCHEMA_VERSION,
        "seq": seq,
        "ts": ts or utc_now(),
        "agent": agent_version,
        "event": kind,
        **data,
    }
