"""The `host` part of a status report: how long the kiosk has been up, disk left for the outbox."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any


def system_uptime_s() -> int | None:
    try:
        with open("/proc/uptime", encoding="ascii") as f:
            return int(float(f.read().split()[0]))
    except (OSError, ValueError, IndexError):
        return None  # not Linux, or /proc not mounted: unknown, not zero


def disk_free_mb(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free // (1024 * 1024)
    except OSError:
        return None


def host_info(data_dir: Path, agent_started: float) -> dict[str, Any]:
    """`agent_started` is a `time.monotonic()` reading taken when the agent started."""
    return {
        "uptime_s": system_uptime_s(),
        "disk_free_mb": disk_free_mb(data_dir),
        "agent_uptime_s": int(time.monotonic() - agent_started),
    }
