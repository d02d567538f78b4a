"""Storing alerts: open (once per terminal and rule), clear, acknowledge.

The rules themselves are pure functions elsewhere (fleet.server.alerts); this is where their
decisions meet the one-active-alert constraint of models.Alert.
"""

from __future__ import annotations

from datetime import UTC, datetime

from tortoise.exceptions import IntegrityError

from fleet.server.db.models import Alert

ACTIVE = 1


async def open_alert(
    terminal_id: str, rule: str, severity: str, detail: str = "", at: datetime | None = None
) -> tuple[Alert, bool]:
    """The active alert for (terminal, rule), opening it if none is: (alert, opened_now).

    Insert first and let the unique constraint decide, rather than look then insert: two ingest
    workers that both looked would both insert. The loser reads the winner's row.
    """
    try:
        alert = await Alert.create(
            terminal_id=terminal_id,
            rule=rule,
            severity=severity,
            detail=detail,
            opened_at=at or datetime.now(UTC),
            active_key=ACTIVE,
        )
        return alert, True
    except IntegrityError:
        existing = await Alert.get_or_none(terminal_id=terminal_id, rule=rule, active_key=ACTIVE)
        if existing is None:  # cleared between our insert and this read: try once more
            return await open_alert(terminal_id, rule, severity, detail, at)
        return existing, False


async def clear_alert(terminal_id: str, rule: str, at: datetime | None = None) -> bool:
    """Clear the active alert for (terminal, rule), keeping it as history; False if none."""
    updated = await Alert.filter(terminal_id=terminal_id, rule=rule, active_key=ACTIVE).update(
        cleared_at=at or datetime.now(UTC), active_key=None
    )
    return updated > 0


async def ack_alert(alert_id: int, by: str, at: datetime | None = None) -> bool:
    """Acknowledge an alert once; False if it does not exist or was acknowledged already."""
    updated = await Alert.filter(id=alert_id, acked_at=None).update(
        acked_at=at or datetime.now(UTC), acked_by=by
    )
    return updated > 0
