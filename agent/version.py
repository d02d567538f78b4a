"""The agent's version, as installed (the `agent` field of every payload)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "kiosk-fleet"


def agent_version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0.0.0+unknown"  # running from a source tree that was never installed
