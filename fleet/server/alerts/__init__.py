"""Alert rules and the alert state machine: pure logic that the ingest calls and persists.

How the ingest uses it, per terminal and in message order (the engine holds no locks)::

    engine = AlertEngine()
    engine.restore(ActiveAlert(a.terminal_id, a.rule, a.opened_at, a.acked_at is not None)
                   for a in active_alerts_from_db)
    # on the newest status report (not on a replayed backlog) or a presence change:
    a = assess(status, online, Thresholds.from_mapping(model_cfg), engine.active_rules(tid))
    scope = STATUS_RULES | {"terminal_offline"}  # the forecast job owns paper_runout_soon
    for t in engine.update(tid, received_at, a.hits, a.unknown, scope=scope):
        persist(t)                                  # Opened -> insert, Cleared -> close
    # from the forecast job (fleet.server.forecast), for online terminals:
    hit = runout_soon(fc, now, active="paper_runout_soon" in engine.active_rules(tid))
    engine.update(tid, now, [hit] if hit else [], scope={"paper_runout_soon"})
    # every few seconds, so hold-downs and raise delays run out without new reports:
    engine.tick(now)

`received_at` (server clock) rather than the report's own `ts`: agent clocks drift, and reports
kept on disk during an outage arrive late and in a burst.
"""

from fleet.server.alerts.engine import ActiveAlert, AlertEngine, Cleared, Opened, Timing, Transition
from fleet.server.alerts.rules import (
    RULES,
    STALE_WHEN_OFFLINE,
    STATUS_RULES,
    Assessment,
    Rule,
    RuleHit,
    Severity,
    Thresholds,
    assess,
    evaluate,
)

__all__ = [
    "RULES",
    "STALE_WHEN_OFFLINE",
    "STATUS_RULES",
    "ActiveAlert",
    "AlertEngine",
    "Assessment",
    "Cleared",
    "Opened",
    "Rule",
    "RuleHit",
    "Severity",
    "Thresholds",
    "Timing",
    "Transition",
    "assess",
    "evaluate",
]
