"""One word for a terminal's condition, shared by the API's `state` filter and the metrics.

offline          the terminal itself is offline (presence), whatever its last report said
printer_offline  online, but its printer is unreachable
stopped | printing | idle
                 online, the printer's IPP state
unknown          online, no printer state reported yet
"""

from __future__ import annotations

from typing import Final, Literal

TerminalState = Literal["offline", "printer_offline", "stopped", "printing", "idle", "unknown"]

STATES: Final[tuple[TerminalState, ...]] = (
    "offline",
    "printer_offline",
    "stopped",
    "printing",
    "idle",
    "unknown",
)


def terminal_state(online: bool, printer_state: str | None) -> TerminalState:
    if not online:
        return "offline"
    match printer_state:
        case "offline":
            return "printer_offline"
        case "stopped" | "printing" | "idle":
            return printer_state
        case _:
            return "unknown"
