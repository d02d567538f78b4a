"""When a rollout may start a wave: inside its maintenance window, i.e. outside service hours.

A rollout's own window is `{"start": "HH:MM", "end": "HH:MM", "tz": "Area/City"}`, every day,
and may wrap midnight (`{"start": "18:00", "end": "08:00"}`). Without one, a wave may start
whenever the service hall is closed: outside the settings' service hours on service days, any
time on other days. `override_window` lifts the restriction. The window holds back the start
of a wave, and (targets.py) a terminal of a started wave that has not begun installing: it gets
the version in its document only while the window is open.
"""

from __future__ import annotations

from datetime import datetime, time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fleet.server.forecast import ServiceHours


class WindowError(ValueError):
    pass


def _hhmm(value: Any, name: str) -> time:
    try:
        return time.fromisoformat(str(value))
    except ValueError:
        raise WindowError(f"window.{name}: {value!r} is not a time HH:MM") from None


def check_window(window: dict[str, Any]) -> dict[str, str]:
    unknown = set(window) - {"start", "end", "tz"}
    if unknown:
        raise WindowError(f"window: unknown keys {sorted(unknown)}")
    start, end = _hhmm(window.get("start"), "start"), _hhmm(window.get("end"), "end")
    if start == end:
        raise WindowError("window: start and end are equal")
    tz = str(window.get("tz") or "")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise WindowError(f"window.tz: unknown time zone {tz!r}") from None
    return {"start": start.strftime("%H:%M"), "end": end.strftime("%H:%M"), "tz": tz}


def in_window(now: datetime, window: dict[str, str] | None, hours: ServiceHours) -> bool:
    """May a wave start at `now`?"""
    if window is None:
        local = now.astimezone(ZoneInfo(hours.tz))
        open_hours = hours.window(local.date())
        return open_hours is None or not open_hours[0] <= now < open_hours[1]
    clock = now.astimezone(ZoneInfo(window["tz"])).time()
    start, end = time.fromisoformat(window["start"]), time.fromisoformat(window["end"])
    if start < end:
        return start <= clock < end
    return clock >= start or clock < end  # wraps midnight
