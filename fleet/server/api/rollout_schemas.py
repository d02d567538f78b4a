"""Bodies of the rollout routes (`/api/v1/rollouts`)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from fleet.server.api.params import (
    JSON_NUMBER,
    MAX_INT32,
    JsonBool,
    JsonInt,
    JsonNumber,
    ModelIdValue,
    ReleaseVersion,
    SiteIdValue,
    TerminalIdValue,
)
from fleet.server.db.models import (
    FailureAction,
    Rollout,
    RolloutState,
    RolloutTerminal,
    UpdateState,
)
from fleet.server.rollouts.engine import RolloutSpec


class Target(BaseModel):
    """Who gets the version: listed terminals, plus terminals matching every filter given."""

    model_config = ConfigDict(extra="forbid")

    sites: list[SiteIdValue] = Field(default_factory=list, max_length=1000)
    models: list[ModelIdValue] = Field(default_factory=list, max_length=1000)
    tags: list[str] = Field(default_factory=list, max_length=1000)
    terminals: list[TerminalIdValue] = Field(default_factory=list, max_length=100_000)


class Window(BaseModel):
    """The daily maintenance window in which waves may start (may wrap midnight)."""

    model_config = ConfigDict(extra="forbid")

    start: str = Field(examples=["18:00"])
    end: str = Field(examples=["08:00"])
    tz: str = Field(examples=["Asia/Shanghai"])


class RolloutCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: A release `fleet updates publish` can have published (its TUF target name).
    version: ReleaseVersion
    target: Target
    waves: list[JsonInt | str] = Field(
        default=[1, "10%", "50%", "100%"],
        description='cumulative sizes: counts or "N%" of the target; the first is the canary',
    )
    success_threshold: JsonNumber = Field(
        1.0, gt=0, le=1, description="fraction of a wave to advance"
    )
    max_failures: Annotated[int, Field(ge=0, le=MAX_INT32), JSON_NUMBER] | None = Field(
        None, description="failures tolerated before acting"
    )
    max_failure_pct: Annotated[float, Field(ge=0, le=100), JSON_NUMBER] | None = None
    failure_action: FailureAction = FailureAction.PAUSE
    per_terminal_timeout_s: JsonInt = Field(3600, ge=1, le=7 * 86400)
    window: Window | None = Field(None, description="default: outside the service hours")
    override_window: JsonBool = False

    def spec(self) -> RolloutSpec:
        return RolloutSpec(
            version=self.version,
            target=self.target.model_dump(),
            waves=self.waves,
            success_threshold=self.success_threshold,
            max_failures=self.max_failures,
            max_failure_pct=self.max_failure_pct,
            failure_action=self.failure_action,
            per_terminal_timeout_s=self.per_terminal_timeout_s,
            window=self.window.model_dump() if self.window is not None else None,
            override_window=self.override_window,
        )


class Control(BaseModel):
    """Optional body of pause and abort."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=500)


class RolloutTerminalPublic(BaseModel):
    id: str
    state: UpdateState
    reason: str
    started_at: datetime | None
    updated_at: datetime


class WavePublic(BaseModel):
    index: int
    started: bool
    counts: dict[str, int]
    terminals: list[RolloutTerminalPublic]


class RolloutSummary(BaseModel):
    id: int
    version: str
    state: RolloutState
    reason: str
    current_wave: int
    wave_count: int
    counts: dict[str, int]
    target: dict[str, list[str]]
    waves_spec: list[int | str]
    success_threshold: float
    max_failures: int | None
    max_failure_pct: float | None
    failure_action: FailureAction
    per_terminal_timeout_s: int
    window: dict[str, str] | None
    override_window: bool
    created_by: str
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class RolloutPublic(RolloutSummary):
    waves: list[WavePublic]


def _counts(rows: list[RolloutTerminal]) -> dict[str, int]:
    tally = Counter(r.state.value for r in rows)
    return {s.value: tally.get(s.value, 0) for s in UpdateState}


def summary(r: Rollout, rows: list[RolloutTerminal]) -> RolloutSummary:
    return RolloutSummary(
        id=r.id,
        version=r.version,
        state=r.state,
        reason=r.reason,
        current_wave=r.current_wave,
        wave_count=max((x.wave for x in rows), default=-1) + 1,
        counts=_counts(rows),
        target=r.target,
        waves_spec=r.waves,
        success_threshold=r.success_threshold,
        max_failures=r.max_failures,
        max_failure_pct=r.max_failure_pct,
        failure_action=r.failure_action,
        per_terminal_timeout_s=r.per_terminal_timeout_s,
        window=r.window,
        override_window=r.override_window,
        created_by=r.created_by,
        created_at=r.created_at,
        updated_at=r.updated_at,
        started_at=r.started_at,
        finished_at=r.finished_at,
    )


def detail(r: Rollout, rows: list[RolloutTerminal]) -> RolloutPublic:
    """The rollout with its plan: waves in order, each with its terminals' states."""
    rows = sorted(rows, key=lambda x: x.position)
    waves = []
    for index in range(max((x.wave for x in rows), default=-1) + 1):
        mine = [x for x in rows if x.wave == index]
        waves.append(
            WavePublic(
                index=index,
                started=index <= r.current_wave,
                counts=_counts(mine),
                terminals=[
                    RolloutTerminalPublic(
                        id=x.terminal_id,
                        state=x.state,
                        reason=x.reason,
                        started_at=x.started_at,
                        updated_at=x.updated_at,
                    )
                    for x in mine
                ],
            )
        )
    return RolloutPublic(**summary(r, rows).model_dump(), waves=waves)
