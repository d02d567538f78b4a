"""The agent version each terminal's desired-state document carries (`"agent": {"version"}`).

A terminal's target is the version of its most recent rollout (by rollout id) in which its wave
has started and which still asks for it:
- succeeded: the version stays (it runs it; a later abort never forces a downgrade);
- pending, downloading or installing while the rollout is running or paused: the version;
- failed, rolled back, timed out, or not finished when the rollout was aborted: no target from
  this rollout, so an agent stops retrying a release that failed on it; an earlier rollout it
  succeeded in then gives the version it runs (so its document still names it).
Terminals no started wave reached have no target (`"agent": null`): they stay where they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fleet.server.db.models import ACTIVE_ROLLOUT_STATES, RolloutState, RolloutTerminal, UpdateState

_IN_PROGRESS = (UpdateState.PENDING, UpdateState.DOWNLOADING, UpdateState.INSTALLING)


def wants_version(rollout_state: str, terminal_state: str) -> bool:
    if terminal_state == UpdateState.SUCCEEDED:
        return True
    return terminal_state in _IN_PROGRESS and rollout_state in ACTIVE_ROLLOUT_STATES


async def agent_targets(terminal_ids: Sequence[str] | None = None) -> Mapping[str, str]:
    """terminal id -> target agent version, for the given terminals (None: all)."""
    query = RolloutTerminal.filter(started_at__isnull=False)
    if terminal_ids is not None:
        query = query.filter(terminal_id__in=list(terminal_ids))
    rows = await query.order_by("-rollout_id").values_list(
        "terminal_id", "state", "rollout__state", "rollout__version"
    )
    out: dict[str, str] = {}
    for tid, state, rollout_state, version in rows:
        if tid not in out and wants_version(str(rollout_state), str(state)):
            out[str(tid)] = str(version)
    return out


__all__ = ["RolloutState", "agent_targets", "wants_version"]
