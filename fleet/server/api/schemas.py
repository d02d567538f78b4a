"""Response bodies of the fleet API, one family per entity (Base -> Summary/Public -> Detail)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from fleet.server.api.desired_schemas import DesiredStatePublic
from fleet.server.db.models import Alert, PresenceReason, StatusSample, Terminal
from fleet.server.desired.drift import DriftState
from fleet.server.terminal_state import TerminalState, terminal_state

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list: `total` counts every item the filters match."""

    items: list[T]
    total: int
    limit: int
    offset: int


# --- terminals ---------------------------------------------------------------------------------


class TerminalBase(BaseModel):
    id: str
    site: str
    model: str
    state: TerminalState
    online: bool
    printer_state: str | None
    paper_pct: int | None
    reader_state: str | None
    last_seen: datetime | None
    agent_version: str | None


class TerminalSummary(TerminalBase):
    """A row of the fleet list."""

    active_alerts: list[str] = Field(description="rules with an open alert")

    @classmethod
    def of(cls, t: Terminal, active_alerts: list[str]) -> TerminalSummary:
        return cls(**_terminal_fields(t), active_alerts=active_alerts)


class Presence(BaseModel):
    online: bool
    reason: PresenceReason | None = Field(description="why it last went offline")
    changed_at: datetime | None
    last_seen: datetime | None


class Versions(BaseModel):
    agent: str | None
    #: The desired-state document hash the agent last reported applying.
    desired: str | None


class Drift(BaseModel):
    """Desired vs reported configuration: the latest desired document's hash, the one the agent
    says it runs (its `reported` applied hash, else its status report's `desired`), and whether
    they agree. `desired` and `in_sync` are null while the terminal has no document. The
    details are in `desired_state`."""

    desired: str | None = None
    reported: str | None = None
    in_sync: bool | None = None


class TerminalDetail(TerminalSummary):
    tags: list[str]
    last_seq: int | None
    presence: Presence
    versions: Versions
    drift: Drift
    desired_state: DesiredStatePublic | None = None
    alerts: list[AlertPublic]
    status: dict[str, Any] | None = Field(description="the last full status report")

    @classmethod
    def of_detail(
        cls, t: Terminal, alerts: list[Alert], desired: DriftState | None = None
    ) -> TerminalDetail:
        reported = t.status.get("desired") if isinstance(t.status, dict) else None
        reported = reported if isinstance(reported, str) else None
        if desired is not None and desired.applied_hash is not None:
            reported = desired.applied_hash
        wanted = desired.desired_hash if desired is not None else None
        return cls(
            **_terminal_fields(t),
            active_alerts=sorted({a.rule for a in alerts}),
            tags=list(t.tags or []),
            last_seq=t.last_seq,
            presence=Presence(
                online=t.online,
                reason=t.presence_reason,
                changed_at=t.presence_changed_at,
                last_seen=t.last_seen,
            ),
            versions=Versions(agent=t.agent_version, desired=reported),
            drift=Drift(
                desired=wanted,
                reported=reported,
                in_sync=None if wanted is None else wanted == reported,
            ),
            desired_state=DesiredStatePublic.of(desired) if desired is not None else None,
            alerts=[AlertPublic.of(a) for a in alerts],
            status=t.status,
        )


def _terminal_fields(t: Terminal) -> dict[str, Any]:
    return {
        "id": t.id,
        "site": t.site_id,
        "model": t.model,
        "state": terminal_state(t.online, t.printer_state),
        "online": t.online,
        "printer_state": t.printer_state,
        "paper_pct": t.paper_pct,
        "reader_state": t.reader_state,
        "last_seen": t.last_seen,
        "agent_version": t.agent_version,
    }


# --- history -----------------------------------------------------------------------------------


class SamplePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    seq: int
    ts: datetime
    received_at: datetime
    paper_pct: int | None
    printer_state: str | None
    reasons: list[str]
    reader_state: str | None
    toner_pct: int | None
    downsampled: bool

    @classmethod
    def of(cls, s: StatusSample) -> SamplePublic:
        return cls.model_validate(s)


class History(BaseModel):
    terminal: str
    from_: datetime = Field(alias="from")
    to: datetime
    items: list[SamplePublic]
    truncated: bool = Field(description="more samples lie in the range than `limit`")

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


# --- alerts ------------------------------------------------------------------------------------


class AlertPublic(BaseModel):
    id: int
    terminal: str
    rule: str
    severity: str
    active: bool
    opened_at: datetime
    cleared_at: datetime | None
    acked_at: datetime | None
    acked_by: str | None
    detail: str

    @classmethod
    def of(cls, a: Alert) -> AlertPublic:
        return cls(
            id=a.id,
            terminal=a.terminal_id,
            rule=a.rule,
            severity=a.severity,
            active=a.active_key is not None,
            opened_at=a.opened_at,
            cleared_at=a.cleared_at,
            acked_at=a.acked_at,
            acked_by=a.acked_by,
            detail=a.detail,
        )


# --- refill round ------------------------------------------------------------------------------


class RefillStop(BaseModel):
    terminal: str
    why: Literal["out", "low", "forecast"]
    runout_at: datetime | None
    level_pct: float | None


class RefillSite(BaseModel):
    site: str
    name: str
    stops: list[RefillStop]


class RefillRound(BaseModel):
    generated_at: datetime
    round_end: datetime = Field(description="close of the service day the round is for")
    sites: list[RefillSite]


# --- errors and health -------------------------------------------------------------------


class ErrorBody(BaseModel):
    """Every error but a 422: a reason and nothing else (a refused caller learns no data)."""

    detail: str


#: For `responses=` of routes that need a part that may not be running (broker, desired state,
#: issuing key, font).
UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorBody, "description": "a part this needs is not available"}
}


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, Literal["ok", "down", "not_attached"]]


TerminalDetail.model_rebuild()
