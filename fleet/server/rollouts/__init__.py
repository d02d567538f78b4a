"""Staged rollouts of agent versions (issue 6, "Rollouts (server)").

planner.py turns a target and a wave spec into an ordered plan; window.py says when a wave may
start; engine.py runs rollouts (waves, update events, timeouts, pause/resume/abort); targets.py
tells the desired-state service which agent version each terminal's document carries.
"""

from fleet.server.rollouts.engine import (
    UPDATE_EVENTS,
    RolloutConflict,
    RolloutEngine,
    RolloutError,
    UpdateEvent,
)
from fleet.server.rollouts.planner import PlanError, plan_waves, resolve_targets
from fleet.server.rollouts.targets import agent_targets

__all__ = [
    "UPDATE_EVENTS",
    "PlanError",
    "RolloutConflict",
    "RolloutEngine",
    "RolloutError",
    "UpdateEvent",
    "agent_targets",
    "plan_waves",
    "resolve_targets",
]
