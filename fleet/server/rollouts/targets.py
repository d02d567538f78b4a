"""The agent version each terminal's desired-state document carries (`"agent": {"version"}`).

A terminal's target is the version of its most recent rollout (by rollout id) in which its wave
has started and which still asks for it:
- succeeded: the version stays (it runs it; a later abort never forces a downgrade);
- downloading or installing while the rollout is running or paused: the version;
- pending (it has not started on it) while the rollout is running or paused: the version, but
  only while the rollout's maintenance window is open (or overridden): a terminal that was
  offline when its wave started and comes back during service hours waits for the window
  instead of restarting in front of a queue (the engine's tick republishes at the window's edges);
- failed, rolled back, timed out, or not finished when the rollout was aborted: no target from
  this rollout, so an agent stops retrying a release that failed on it; an earlier rollout it
  succeeded in then gives the version it runs (so its document still names it).
Terminals no started wave reached have no target (`"agent": null`): they stay where they are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fleet.server.db.models import ACTIVE_ROLLOUT_STATES, RolloutState, RolloutTerminal, UpdateState

_STARTED = (UpdateState.DOWNLOADING, UpdateState.INSTALLING)

#: (rollout window, override_window) -> may a terminal start installing now?
WindowOpen = Callable[[dict[str, Any] | None, bool], bool]


def wants_version(rollout_state: str, terminal_state: str, window_open: bool = True) -> bool:
    if terminal_state == UpdateState.SUCCEEDED:
        return True
    if rollout_state not in ACTIVE_ROLLOUT_STATES:
        return False
    if terminal_state == UpdateState.PENDING:
        return window_open
    return terminal_state in _STARTED


async def agent_targets(
    terminal_ids: Sequence[str] | None = None, window_open: WindowOpen | None = None
) -> Mapping[str, str]:
    """terminal id -> target agent version, for the given terminals (None: all).

    `window_open` None: every window counts as open (RolloutEngine.agent_targets passes one)."""
    query = RolloutTerminal.filter(started_at__isnull=False)
    if terminal_ids is not None:
        query = query.filter(terminal_id__in=list(terminal_ids))
    rows = await query.order_by("-rollout_id").values_list(
        "terminal_id",
        "state",
        "rollout__state",
        "rollout__version",
        "rollout__window",
        "rollout__override_window",
    )
    out: dict[str, str] = {}
    for tid, state, rollout_state, version, window, override in rows:
        is_open = window_open is None or window_open(window, bool(override))
        if tid not in out and wants_version(str(rollout_state), str(state), is_open):
            out[str(tid)] = str(version)
    return out


__all__ = ["RolloutState", "agent_targets", "wants_version"]
