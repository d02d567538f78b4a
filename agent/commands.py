"""Remote commands (`fleet/v1/t/{id}/cmd`) and their results (`.../cmd/result`).

Command (QoS 1, not retained):

    {"v": 1, "id": "<8-64 of [A-Za-z0-9_-], e.g. a UUID>", "name": "print_test_page",
     "args": {}, "issued_at": "2026-11-27T09:30:00Z", "expires_at": "2026-11-27T09:35:00Z"}

Result:

    {"v": 1, "id": "...", "ts": "...", "status": "ok" | "failed" | "expired" | "rejected",
     "detail": "one line"}

- A payload with no usable id cannot be answered (nothing to correlate): `handle` returns None
  and logs it. Anything else wrong (version, name, args, dates, unknown fields) is "rejected"
  with the reason; a command past its `expires_at` is "expired" and not executed.
- Exactly once per id, as far as this terminal can tell: QoS 1 delivers a command again after
  a lost PUBACK or a reconnect, so every answered id is kept (the last `REMEMBERED`) in a small
  file written atomically, and a repeat gets the stored result without running again. A
  command that has side effects is recorded as "interrupted" *before* it runs, so a crash in
  the middle never runs it a second time (a test page printed twice, a restart loop).
- `restart_agent` stores its "ok" and then calls `restart`, which must only *request* the
  restart (set an event the main loop watches): the caller still publishes the returned result
  and the outbox is flushed on the way out.

`handle` blocks while a test page prints (up to the IPP driver's `job_timeout_s`): call it on a
worker thread, never on the MQTT network thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from agent.drivers.base import DriverError, TestPagePrinter
from agent.testpage import TestPage

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
MAX_COMMAND_BYTES: Final = 16 * 1024
COMMAND_ID: Final = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
NAMES: Final = ("print_test_page", "refresh_status", "restart_agent")
FIELDS: Final = frozenset({"v", "id", "name", "args", "issued_at", "expires_at"})
RFC3339: Final = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$")
#: Answered ids kept for deduplication; far more than a broker ever redelivers.
REMEMBERED: Final = 256
STORE_FILE: Final = "commands.json"
MAX_DETAIL: Final = 300
INTERRUPTED: Final = "interrupted: the agent stopped while running it"


class _Rejected(Exception):
    pass


def _ts(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_DETAIL else flat[: MAX_DETAIL - 1] + "…"


def _time(cmd: dict[str, Any], key: str) -> datetime:
    value = cmd.get(key)
    if not isinstance(value, str) or not RFC3339.fullmatch(value):
        raise _Rejected(f"{key} must be an RFC 3339 timestamp")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _Rejected(f"{key} is not a valid date and time") from None


class CommandRunner:
    """Checks, deduplicates and runs commands for one terminal; the caller publishes results.

    `printer` is the printer *driver* (not its BoundedDevice wrapper) or None. `state_dir` holds
    the answered ids; None keeps them in memory only (the fleet simulator).
    """

    def __init__(
        self,
        terminal_id: str,
        printer: object | None,
        reporter_wake: Callable[[], None],
        restart: Callable[[], None],
        state_dir: Path | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.terminal_id = terminal_id
        self.printer = printer
        self.reporter_wake = reporter_wake
        self.restart = restart
        self.clock = clock
        self._path = state_dir / STORE_FILE if state_dir is not None else None
        self._lock = threading.Lock()
        self._done: OrderedDict[str, dict[str, Any]] = self._load()

    # -- the one entry point -------------------------------------------------------------------

    def handle(self, payload: bytes) -> dict[str, Any] | None:
        """The result message for `payload`, or None when it has no id to answer to."""
        with self._lock:
            cmd = self._parse(payload)
            if cmd is None:
                return None
            command_id: str = cmd["id"]
            stored = self._done.get(command_id)
            if stored is not None:
                log.info("command %s again: answering with its stored result", command_id)
                return dict(stored)
            try:
                name = self._check(cmd)
            except _Rejected as e:
                log.warning("command %s rejected: %s", command_id, e)
                return self._finish(command_id, "rejected", str(e))
            expires = _time(cmd, "expires_at")
            now = self.clock()
            if now > expires.timestamp():
                return self._finish(
                    command_id, "expired", f"expired at {cmd['expires_at']}, received {_ts(now)}"
                )
            log.info("command %s: %s", command_id, name)
            return self._run(command_id, name)

    # -- checks --------------------------------------------------------------------------------

    def _parse(self, payload: bytes) -> dict[str, Any] | None:
        if len(payload) > MAX_COMMAND_BYTES:
            log.warning("command of %d bytes ignored: over %d", len(payload), MAX_COMMAND_BYTES)
            return None
        try:
            cmd = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            log.warning("command ignored: not JSON (%s)", e)
            return None
        if not isinstance(cmd, dict):
            log.warning("command ignored: not a JSON object")
            return None
        command_id = cmd.get("id")
        if not isinstance(command_id, str) or not COMMAND_ID.fullmatch(command_id):
            log.warning("command ignored: no usable id (%.80r)", command_id)
            return None
        return cmd

    def _check(self, cmd: dict[str, Any]) -> str:
        if cmd.get("v") != SCHEMA_VERSION:
            raise _Rejected(f"unsupported version {cmd.get('v')!r}")
        unknown = sorted(set(cmd) - FIELDS)
        if unknown:
            raise _Rejected(f"unknown field {unknown[0]!r}")
        name = cmd.get("name")
        if name not in NAMES:
            raise _Rejected(f"unknown command {name!r:.80}")
        args = cmd.get("args", {})
        if not isinstance(args, dict):
            raise _Rejected("args must be an object")
        if args:  # none of the v1 commands takes an argument
            raise _Rejected(f"{name} takes no argument {sorted(args)[0]!r:.80}")
        issued, expires = _time(cmd, "issued_at"), _time(cmd, "expires_at")
        if expires <= issued:
            raise _Rejected("expires_at is not after issued_at")
        return str(name)

    # -- running -------------------------------------------------------------------------------

    def _run(self, command_id: str, name: str) -> dict[str, Any]:
        if name == "refresh_status":
            self.reporter_wake()
            return self._finish(command_id, "ok", "status report requested")
        if name == "restart_agent":
            # Stored before the restart, so a redelivery after it does not restart again.
            result = self._finish(command_id, "ok", "restarting")
            self.restart()
            return result
        self._finish(command_id, "failed", INTERRUPTED)
        status, detail = self._print_test_page(command_id)
        return self._finish(command_id, status, detail)

    def _print_test_page(self, command_id: str) -> tuple[str, str]:
        printer = self.printer
        if printer is None:
            return "failed", "no printer configured"
        if not isinstance(printer, TestPagePrinter):
            return "failed", f"not supported by the {getattr(printer, 'name', '?')} driver"
        page = TestPage(
            terminal_id=self.terminal_id,
            printed_at=_ts(self.clock()),
            command_id=command_id,
            printer_lines=self._printer_lines(printer),
        )
        try:
            return "ok", printer.print_test_page(page)
        except DriverError as e:
            return "failed", e.message
        except NotImplementedError:
            return "failed", f"not supported by the {printer.name} driver"
        except Exception as e:  # a driver bug must not take the command loop down
            log.exception("print_test_page failed")
            return "failed", f"{type(e).__name__}: {e}"

    @staticmethod
    def _printer_lines(printer: object) -> tuple[str, ...]:
        read = getattr(printer, "read", None)
        try:
            status = read() if callable(read) else None
        except Exception as e:
            return (f"Printer: status unreadable ({e})",)
        if status is None:
            return ()
        paper = status.paper
        lines = [
            f"Printer: {status.driver}, {status.state}",
            f"Reasons: {', '.join(status.reasons) or 'none'}",
        ]
        if paper is not None and paper.sheets_left is not None:
            lines.append(f"Paper: {paper.sheets_left} sheets of {paper.capacity or '?'}")
        else:
            lines.append("Paper: level unknown")
        toner = "unknown" if status.toner_pct is None else f"{status.toner_pct}%"
        lines.append(f"Toner: {toner}")
        if status.pages_total is not None:
            lines.append(f"Pages printed: {status.pages_total}")
        return tuple(lines)

    # -- results and their store ---------------------------------------------------------------

    def _finish(self, command_id: str, status: str, detail: str) -> dict[str, Any]:
        result = {
            "v": SCHEMA_VERSION,
            "id": command_id,
            "ts": _ts(self.clock()),
            "status": status,
            "detail": _one_line(detail),
        }
        self._done[command_id] = result
        self._done.move_to_end(command_id)
        while len(self._done) > REMEMBERED:
            self._done.popitem(last=False)
        self._save()
        return dict(result)

    def _load(self) -> OrderedDict[str, dict[str, Any]]:
        done: OrderedDict[str, dict[str, Any]] = OrderedDict()
        if self._path is None:
            return done
        try:
            data = json.loads(self._path.read_bytes())
            results = data["results"] if data.get("v") == SCHEMA_VERSION else []
            for result in results[-REMEMBERED:]:
                if isinstance(result, dict) and isinstance(result.get("id"), str):
                    done[result["id"]] = result
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            # Losing the memory of answered ids risks one repeat; refusing to start is worse.
            log.warning("%s unreadable, starting without it: %s", self._path, e)
        return done

    def _save(self) -> None:
        if self._path is None:
            return
        data = json.dumps(
            {"v": SCHEMA_VERSION, "results": list(self._done.values())}, ensure_ascii=False
        ).encode()
        directory = self._path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".commands-", dir=directory)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self._path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as e:
            log.error("cannot store command results in %s: %s", self._path, e)
