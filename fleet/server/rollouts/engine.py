"""Running rollouts: waves, update events from agents, timeouts, pause, resume and abort.

Lifecycle of a rollout: `pending` (planned, first wave not started: waiting for the maintenance
window) -> `running` -> `completed`; `paused` by an admin or by the failure rules; `aborted` by
an admin or by the failure rules. One active (pending, running or paused) rollout per terminal.

Starting a wave stamps its terminals' `started_at`; their desired-state documents are then
recomputed, and carry `"agent": {"version": V}` (targets.py) while the window is open; a
terminal that has not started on it loses it again while the window is closed (each tick
republishes at the window's edges), so an offline kiosk coming back during service hours waits;
its timeout does not run meanwhile and starts again (`started_at`) when the window reopens.
Agents report progress as `event` messages (`fleet/v1/t/{id}/event`), consumed here (see
`UPDATE_EVENTS`):

    update_downloading  {}                    -> downloading
    update_installing   {}                    -> installing
    update_succeeded    {"version"}           -> succeeded  (health check passed, committed)
    update_failed       {"version","reason"}  -> failed     (download, verification or install)
    update_rolled_back  {"version","reason"}  -> rolled_back (health check failed; previous kept)

An event naming another `version` than the rollout's is ignored, as is progress after a final
result. A terminal of a started wave with no final result within `per_terminal_timeout_s` of the
wave's start (or of the window's reopening, for one still pending) becomes `timed_out`.
Failed, rolled back and timed out all count as failures.

Advancing (after every event, on every tick, on resume): a failure limit passed (`max_failures`
failures, or `max_failure_pct` percent of the started terminals, counting only failures since the
last resume) -> `failure_action` (pause or abort), at once, without waiting for the wave's end.
A wave is complete when all its terminals have a final state; then if its success fraction
reaches `success_threshold` the next wave starts (inside the maintenance window, window.py),
else the failure action is taken. Resuming accepts the current wave's result as it is.

Abort: terminals not yet started never get the version; terminals that succeeded keep it (no
forced downgrade: their document goes on naming the version they run); terminals still in
progress lose the target in their document (targets.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tortoise.transactions import in_transaction

from fleet.server.db.cluster_lock import ClusterLock
from fleet.server.db.models import (
    ACTIVE_ROLLOUT_STATES,
    FailureAction,
    Rollout,
    RolloutState,
    RolloutTerminal,
    UpdateState,
)
from fleet.server.desired.service import DesiredService
from fleet.server.events_bus import EventBus
from fleet.server.forecast import ServiceHours
from fleet.server.metrics import FleetMetrics
from fleet.server.rollouts.planner import PlanError, check_waves, plan_waves, resolve_targets
from fleet.server.rollouts.targets import agent_targets
from fleet.server.rollouts.window import WindowError, check_window, in_window

log = logging.getLogger(__name__)

#: The agent's `update_*` event names this engine consumes, and the state each one means.
UPDATE_EVENTS: Mapping[str, UpdateState] = {
    "update_downloading": UpdateState.DOWNLOADING,
    "update_installing": UpdateState.INSTALLING,
    "update_succeeded": UpdateState.SUCCEEDED,
    "update_failed": UpdateState.FAILED,
    "update_rolled_back": UpdateState.ROLLED_BACK,
}
FINAL = frozenset(
    {UpdateState.SUCCEEDED, UpdateState.FAILED, UpdateState.ROLLED_BACK, UpdateState.TIMED_OUT}
)
FAILURES = frozenset({UpdateState.FAILED, UpdateState.ROLLED_BACK, UpdateState.TIMED_OUT})
IN_PROGRESS = (UpdateState.PENDING, UpdateState.DOWNLOADING, UpdateState.INSTALLING)
WAITING_FOR_WINDOW = "waiting for the maintenance window"


def utc_now() -> datetime:
    return datetime.now(UTC)


class RolloutError(ValueError):
    """A request the rollout rules refuse (bad input: 422)."""


class RolloutConflict(RolloutError):
    """A request that conflicts with the current state (409)."""


@dataclass(frozen=True)
class UpdateEvent:
    terminal: str
    kind: str
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RolloutSpec:
    version: str
    target: dict[str, Any]
    waves: Sequence[int | str] = (1, "10%", "50%", "100%")
    success_threshold: float = 1.0
    max_failures: int | None = None
    max_failure_pct: float | None = None
    failure_action: FailureAction = FailureAction.PAUSE
    per_terminal_timeout_s: int = 3600
    window: dict[str, Any] | None = None
    override_window: bool = False


DesiredSource = Callable[[], DesiredService | None]


#: The advisory lock of rollout changes across replicas ("rollout" in ASCII).
ROLLOUT_LOCK_KEY = 0x726F6C6C6F7574


class RolloutEngine:
    """The one writer of rollout state (all changes under one lock, across replicas too)."""

    def __init__(
        self,
        *,
        desired: DesiredSource = lambda: None,
        bus: EventBus | None = None,
        metrics: FleetMetrics | None = None,
        clock: Callable[[], datetime] = utc_now,
        hours: ServiceHours | None = None,
        lock: ClusterLock | None = None,
    ) -> None:
        """`lock`: with replicas, one that holds across them (db/cluster_lock.py)."""
        self.desired = desired
        self.bus = bus
        self.metrics = metrics
        self.clock = clock
        self.hours = hours or ServiceHours()
        self._lock = lock or ClusterLock(ROLLOUT_LOCK_KEY)
        #: Per active rollout, whether its window was open at the last tick (see `tick`).
        self._window_was_open: dict[int, bool] = {}

    async def close(self) -> None:
        """Let go of the lock's own connection (replicas)."""
        await self._lock.close()

    def window_open(self, window: dict[str, Any] | None, override: bool) -> bool:
        return override or in_window(self.clock(), window, self.hours)

    async def agent_targets(self, terminal_ids: Sequence[str] | None = None) -> Mapping[str, str]:
        """The desired-state documents' agent versions, with pending terminals held to the
        rollout's window (targets.py); what `DesiredService(agent_targets=...)` calls."""
        return await agent_targets(terminal_ids, self.window_open)

    # -- requests -----------------------------------------------------------------------------

    async def create(self, spec: RolloutSpec, by: str) -> Rollout:
        """Plan and store a rollout, and start its first wave if the window allows."""
        try:
            waves_spec = check_waves(spec.waves)
            window = check_window(spec.window) if spec.window is not None else None
            ids = await resolve_targets(spec.target)
        except (PlanError, WindowError) as e:
            raise RolloutError(str(e)) from None
        if not 0 < spec.success_threshold <= 1:
            raise RolloutError("success_threshold: a fraction in (0, 1]")
        if spec.max_failure_pct is not None and not 0 <= spec.max_failure_pct <= 100:
            raise RolloutError("max_failure_pct: a percentage in [0, 100]")
        if spec.max_failures is not None and spec.max_failures < 0:
            raise RolloutError("max_failures: at least 0")
        if spec.per_terminal_timeout_s < 1:
            raise RolloutError("per_terminal_timeout_s: at least 1")
        waves = plan_waves(ids, waves_spec)
        async with self._lock:
            busy = await RolloutTerminal.filter(
                terminal_id__in=ids, rollout__state__in=list(ACTIVE_ROLLOUT_STATES)
            ).values_list("terminal_id", "rollout_id")
            if busy:
                named = ", ".join(f"{t} (rollout {r})" for t, r in sorted(busy)[:10])
                raise RolloutConflict(f"terminals already in an active rollout: {named}")
            now = self.clock()
            async with in_transaction():
                rollout = await Rollout.create(
                    version=spec.version,
                    target={k: v for k, v in spec.target.items() if v},
                    waves=waves_spec,
                    success_threshold=spec.success_threshold,
                    max_failures=spec.max_failures,
                    max_failure_pct=spec.max_failure_pct,
                    failure_action=spec.failure_action,
                    per_terminal_timeout_s=spec.per_terminal_timeout_s,
                    window=window,
                    override_window=spec.override_window,
                    created_by=by,
                    created_at=now,
                    updated_at=now,
                )
                position = 0
                rows = []
                for index, wave in enumerate(waves):
                    for tid in wave:
                        rows.append(
                            RolloutTerminal(
                                rollout_id=rollout.id,
                                terminal_id=tid,
                                wave=index,
                                position=position,
                                updated_at=now,
                            )
                        )
                        position += 1
                await RolloutTerminal.bulk_create(rows)
            self._publish_rollout(rollout, "created")
            await self._advance(rollout)
            return rollout

    async def pause(self, rollout_id: int, by: str, reason: str = "") -> Rollout:
        async with self._lock:
            r = await self._get(rollout_id)
            if r.state not in (RolloutState.PENDING, RolloutState.RUNNING):
                raise RolloutConflict(f"rollout {r.id} is {r.state}: only a running one pauses")
            await self._set_state(r, RolloutState.PAUSED, reason or f"paused by {by}")
            return r

    async def resume(self, rollout_id: int, by: str) -> Rollout:
        """Go on, accepting the failures so far and the current wave's result."""
        async with self._lock:
            r = await self._get(rollout_id)
            if r.state != RolloutState.PAUSED:
                raise RolloutConflict(f"rollout {r.id} is {r.state}: only a paused one resumes")
            rows = await RolloutTerminal.filter(rollout_id=r.id)
            r.failure_baseline = sum(1 for x in rows if x.started_at and x.state in FAILURES)
            r.accepted_wave = r.current_wave
            state = RolloutState.RUNNING if r.current_wave >= 0 else RolloutState.PENDING
            await self._set_state(r, state, f"resumed by {by}")
            await self._advance(r)
            return r

    async def abort(self, rollout_id: int, by: str, reason: str = "") -> Rollout:
        async with self._lock:
            r = await self._get(rollout_id)
            if r.state not in ACTIVE_ROLLOUT_STATES:
                raise RolloutConflict(f"rollout {r.id} is {r.state} already")
            await self._abort(r, reason or f"aborted by {by}")
            return r

    # -- inputs -------------------------------------------------------------------------------

    async def on_update_events(self, events: Sequence[UpdateEvent]) -> None:
        """Move terminal states on the agents' `update_*` events (in arrival order)."""
        mine = [e for e in events if e.kind in UPDATE_EVENTS]
        if not mine:
            return
        async with self._lock:
            tids = sorted({e.terminal for e in mine})
            rows = (
                await RolloutTerminal.filter(terminal_id__in=tids, started_at__isnull=False)
                .exclude(rollout__state=RolloutState.COMPLETED)
                .order_by("-rollout_id")
                .select_related("rollout")
            )
            latest: dict[str, RolloutTerminal] = {}
            for found in rows:
                latest.setdefault(found.terminal_id, found)
            touched: dict[int, Rollout] = {}
            failed: set[str] = set()
            now = self.clock()
            for e in mine:
                row = latest.get(e.terminal)
                if row is None:
                    continue
                version = e.data.get("version")
                if version is not None and str(version) != row.rollout.version:
                    continue
                new = UPDATE_EVENTS[e.kind]
                if row.state in FINAL and row.state != UpdateState.TIMED_OUT:
                    continue  # a final result stands (a redelivered or late event)
                if row.state == UpdateState.TIMED_OUT and new not in FINAL:
                    continue
                row.state = new
                row.reason = str(e.data.get("reason") or "")[:1000]
                row.updated_at = now
                await row.save(update_fields=["state", "reason", "updated_at"])
                self._publish_terminal(row.rollout, row)
                if new in FINAL and self.metrics is not None:
                    self.metrics.rollout_results.labels(new.value).inc()
                if new in FAILURES:
                    failed.add(row.terminal_id)
                touched[row.rollout_id] = row.rollout
            await self._recompute(failed, "rollout: update failed")
            for r in touched.values():
                await r.refresh_from_db()
                await self._advance(r)

    async def tick(self) -> None:
        """Time out terminals, start waves whose window opened, refresh the metrics."""
        async with self._lock:
            now = self.clock()
            active = await Rollout.filter(state__in=list(ACTIVE_ROLLOUT_STATES))
            for r in active:
                await self._window_edge(r)
                limit = now - timedelta(seconds=r.per_terminal_timeout_s)
                # A pending terminal is not offered the version while the window is closed, so
                # its time does not run then (and starts again when the window opens).
                waiting_ok = self.window_open(r.window, r.override_window)
                states = (
                    IN_PROGRESS if waiting_ok else (UpdateState.DOWNLOADING, UpdateState.INSTALLING)
                )
                late = await RolloutTerminal.filter(
                    rollout_id=r.id,
                    started_at__isnull=False,
                    started_at__lt=limit,
                    state__in=list(states),
                )
                for row in late:
                    row.state = UpdateState.TIMED_OUT
                    row.reason = f"no result within {r.per_terminal_timeout_s} s"
                    row.updated_at = now
                    await row.save(update_fields=["state", "reason", "updated_at"])
                    self._publish_terminal(r, row)
                    if self.metrics is not None:
                        self.metrics.rollout_results.labels(UpdateState.TIMED_OUT.value).inc()
                await self._recompute([x.terminal_id for x in late], "rollout: update timed out")
                await self._advance(r)
                await self._refresh_metrics(r)
            for gone in set(self._window_was_open) - {r.id for r in active}:
                del self._window_was_open[gone]

    async def _window_edge(self, r: Rollout) -> None:
        """The window opened or closed since the last tick: the documents of the terminals that
        have not started on the version gain or lose it."""
        is_open = self.window_open(r.window, r.override_window)
        was_open = self._window_was_open.get(r.id)
        self._window_was_open[r.id] = is_open
        if was_open is None or was_open == is_open:
            return  # first look (documents were computed with the window as it is) or no edge
        pending = RolloutTerminal.filter(
            rollout_id=r.id, started_at__isnull=False, state=UpdateState.PENDING
        )
        waiting = await pending.values_list("terminal_id", flat=True)
        if is_open:  # offered again from now: its timeout counts from here
            now = self.clock()
            await pending.update(started_at=now, updated_at=now)
        edge = "opened" if is_open else "closed"
        await self._recompute([str(t) for t in waiting], f"rollout {r.id}: window {edge}")

    async def run_ticks(self, stop: asyncio.Event, interval_s: float = 5.0) -> None:
        while not stop.is_set():
            try:
                await self.tick()
            except Exception:  # the next tick tries again
                log.exception("rollout tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)

    # -- under the lock -----------------------------------------------------------------------

    async def _get(self, rollout_id: int) -> Rollout:
        r = await Rollout.get_or_none(id=rollout_id)
        if r is None:
            raise LookupError(f"no rollout {rollout_id}")
        return r

    async def _advance(self, r: Rollout) -> None:
        """Apply the failure rules, then start the next wave or complete, as the state allows."""
        if r.state not in (RolloutState.PENDING, RolloutState.RUNNING):
            await self._refresh_metrics(r)
            return
        rows = await RolloutTerminal.filter(rollout_id=r.id).order_by("position")
        last_wave = max(x.wave for x in rows)
        if r.current_wave >= 0:
            started = [x for x in rows if x.started_at is not None]
            failures = sum(1 for x in started if x.state in FAILURES) - r.failure_baseline
            why = self._over_limit(r, failures, len(started))
            if why is not None:
                await self._fail(r, why)
                return
            wave = [x for x in rows if x.wave == r.current_wave]
            if not all(x.state in FINAL for x in wave):
                await self._refresh_metrics(r)
                return
            ok = sum(1 for x in wave if x.state == UpdateState.SUCCEEDED)
            if r.accepted_wave != r.current_wave and ok < r.success_threshold * len(wave) - 1e-9:
                await self._fail(
                    r,
                    f"wave {r.current_wave}: {ok} of {len(wave)} succeeded, "
                    f"below the success threshold {r.success_threshold:g}",
                )
                return
            if r.current_wave >= last_wave:
                r.finished_at = self.clock()
                await self._set_state(r, RolloutState.COMPLETED, "every wave done")
                return
        now = self.clock()
        if not r.override_window and not in_window(now, r.window, self.hours):
            if r.reason != WAITING_FOR_WINDOW:
                r.reason = WAITING_FOR_WINDOW
                r.updated_at = now
                await r.save(update_fields=["reason", "updated_at"])
                self._publish_rollout(r, "waiting")
            await self._refresh_metrics(r)
            return
        await self._start_wave(r, r.current_wave + 1, rows, now)

    @staticmethod
    def _over_limit(r: Rollout, failures: int, started: int) -> str | None:
        if r.max_failures is not None and failures > r.max_failures:
            return f"{failures} failures, over the limit of {r.max_failures}"
        if r.max_failure_pct is not None and started:
            pct = 100.0 * failures / started
            if pct > r.max_failure_pct + 1e-9:
                return f"{pct:.0f}% of started terminals failed, over {r.max_failure_pct:g}%"
        return None

    async def _start_wave(
        self, r: Rollout, index: int, rows: Sequence[RolloutTerminal], now: datetime
    ) -> None:
        ids = [x.terminal_id for x in rows if x.wave == index]
        await RolloutTerminal.filter(rollout_id=r.id, wave=index).update(
            started_at=now, updated_at=now
        )
        r.current_wave = index
        if r.started_at is None:
            r.started_at = now
        await self._set_state(r, RolloutState.RUNNING, f"wave {index} started")
        await self._recompute(ids, f"rollout {r.id}: agent {r.version}, wave {index}")

    async def _fail(self, r: Rollout, why: str) -> None:
        if r.failure_action == FailureAction.ABORT:
            await self._abort(r, why)
        else:
            await self._set_state(r, RolloutState.PAUSED, why)

    async def _abort(self, r: Rollout, why: str) -> None:
        r.finished_at = self.clock()
        await self._set_state(r, RolloutState.ABORTED, why)
        in_progress = await RolloutTerminal.filter(
            rollout_id=r.id, started_at__isnull=False, state__in=list(IN_PROGRESS)
        ).values_list("terminal_id", flat=True)
        await self._recompute([str(t) for t in in_progress], f"rollout {r.id} aborted")

    async def _set_state(self, r: Rollout, state: RolloutState, reason: str) -> None:
        changed = r.state != state
        r.state = state
        r.reason = reason[:1000]
        r.updated_at = self.clock()
        await r.save()
        log.info("rollout %d (%s): %s, %s", r.id, r.version, state.value, reason)
        if changed and self.metrics is not None:
            self.metrics.rollout_transitions.labels(state.value).inc()
        self._publish_rollout(r, "state")
        await self._refresh_metrics(r)

    async def _recompute(self, terminal_ids: Iterable[str], reason: str) -> None:
        ids = sorted(set(terminal_ids))
        if not ids:
            return
        desired = self.desired()
        if desired is None:
            # Documents catch up on the next recompute (every server start recomputes all).
            log.warning("rollout: no desired-state service; %d documents not updated", len(ids))
            return
        for o in await desired.recompute(ids, reason):
            if o.result == "error":
                log.error("rollout: desired document of %s failed: %s", o.terminal, o.error)

    # -- events and metrics -------------------------------------------------------------------

    def _publish_rollout(self, r: Rollout, change: str) -> None:
        if self.bus is not None:
            self.bus.publish(
                "rollout",
                {
                    "id": r.id,
                    "version": r.version,
                    "state": r.state.value,
                    "current_wave": r.current_wave,
                    "reason": r.reason,
                    "change": change,
                    "at": r.updated_at.isoformat(),
                },
            )

    def _publish_terminal(self, r: Rollout, row: RolloutTerminal) -> None:
        if self.bus is not None:
            self.bus.publish(
                "rollout_terminal",
                {
                    "rollout": r.id,
                    "terminal": row.terminal_id,
                    "wave": row.wave,
                    "state": row.state.value,
                    "reason": row.reason,
                    "at": row.updated_at.isoformat(),
                },
            )

    async def _refresh_metrics(self, r: Rollout) -> None:
        if self.metrics is None:
            return
        gauge = self.metrics.rollout_terminals
        label = str(r.id)
        if r.state not in ACTIVE_ROLLOUT_STATES:
            # Only active rollouts are exported, so the series stay bounded; the API keeps the rest.
            for s in UpdateState:
                with contextlib.suppress(KeyError):
                    gauge.remove(label, s.value)
            return
        counts = Counter(
            str(s)
            for s in await RolloutTerminal.filter(rollout_id=r.id).values_list("state", flat=True)
        )
        for s in UpdateState:
            gauge.labels(label, s.value).set(counts.get(s.value, 0))
