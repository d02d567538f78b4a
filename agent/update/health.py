"""The health check a new version must pass before it is committed.

The running agent proves itself with `HealthProbe.mark(kind)`: `connected` (the broker accepted
it), `drivers_ok` (the configured devices were read), `status_published` (the broker acknowledged
a status report). The marks go to `<root>/health.json`; the launcher (older, trusted code) reads
them with `HealthCheck` and commits or rolls back. A probe is armed only when the launcher started
this process as the version under check (environment `FLEET_UPDATE_ROOT`, `FLEET_UPDATE_VERSION`)
and state.json says `switched` for it; otherwise `mark` does nothing, so the agent may call it
unconditionally on every connect and every report.

`health.json` (format 1, read by a launcher possibly older than the agent writing it):

    {"format": 1, "version": "1.3.0", "pid": 1234, "marks": {"connected": 1764…, …},
     "failed": null | "why the agent gave up"}
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from agent.durable import write_atomic
from agent.update.state import CorruptState, State, StateStore

log = logging.getLogger(__name__)

HEALTH_FILE = "health.json"
ROOT_ENV = "FLEET_UPDATE_ROOT"
VERSION_ENV = "FLEET_UPDATE_VERSION"
FORMAT = 1

CONNECTED = "connected"
DRIVERS_OK = "drivers_ok"
STATUS_PUBLISHED = "status_published"
REQUIRED: tuple[str, ...] = (CONNECTED, DRIVERS_OK, STATUS_PUBLISHED)
_MISSING = {
    CONNECTED: "never connected to the broker",
    DRIVERS_OK: "the drivers were never read",
    STATUS_PUBLISHED: "no status report was published",
}
DEFAULT_DEADLINE_S = 120.0


class HealthProbe:
    """What the running agent calls; thread-safe (the MQTT thread and the reporter both mark)."""

    def __init__(self, root: Path | None, version: str | None) -> None:
        self.path = root / HEALTH_FILE if root is not None else None
        self.version = version
        self._lock = threading.Lock()
        self._marks: dict[str, float] = {}
        self._failed: str | None = None
        self.armed = False
        if root is not None and version is not None:
            try:
                rec = StateStore(root).load()
            except CorruptState:
                return
            self.armed = rec.state == State.SWITCHED and rec.target == version

    @classmethod
    def from_env(cls) -> HealthProbe:
        root = os.environ.get(ROOT_ENV)
        return cls(Path(root) if root else None, os.environ.get(VERSION_ENV))

    def mark(self, kind: str) -> None:
        """Record that `kind` (one of REQUIRED) has been shown; cheap once done or unarmed."""
        if not self.armed or kind in self._marks:
            return
        with self._lock:
            self._marks.setdefault(kind, time.time())
            self._write()
        log.info("update health check: %s", kind)

    def fail(self, reason: str) -> None:
        """Give up at once: the launcher rolls back without waiting for the deadline."""
        if not self.armed:
            return
        with self._lock:
            self._failed = reason
            self._write()

    @property
    def done(self) -> bool:
        return all(k in self._marks for k in REQUIRED)

    def _write(self) -> None:
        assert self.path is not None
        doc = {
            "format": FORMAT,
            "version": self.version,
            "pid": os.getpid(),
            "marks": dict(self._marks),
            "failed": self._failed,
        }
        try:
            write_atomic(self.path, json.dumps(doc).encode())
        except OSError as e:  # the check then times out: the safe side
            log.error("cannot write %s: %s", self.path, e)
        if self.done or self._failed:
            self.armed = False


class Verdict(StrEnum):
    PENDING = "pending"
    PASS = "pass"
    FAIL = "fail"
    TIMEOUT = "timeout"


@dataclass(frozen=True)
class Result:
    verdict: Verdict
    reason: str | None = None


@dataclass(frozen=True)
class HealthCheck:
    """Decides from health.json and the time since the version started."""

    version: str
    deadline_s: float = DEFAULT_DEADLINE_S
    required: tuple[str, ...] = REQUIRED

    def evaluate(self, doc: dict[str, Any] | None, elapsed_s: float) -> Result:
        marks: dict[str, Any] = {}
        if isinstance(doc, dict) and doc.get("version") == self.version:
            if isinstance(doc.get("failed"), str):
                return Result(Verdict.FAIL, f"health check failed: {doc['failed']}")
            if isinstance(doc.get("marks"), dict):
                marks = doc["marks"]
        missing = [k for k in self.required if k not in marks]
        if not missing:
            return Result(Verdict.PASS)
        if elapsed_s >= self.deadline_s:
            why = ", ".join(_MISSING.get(k, f"{k} missing") for k in missing)
            return Result(
                Verdict.TIMEOUT, f"health check timed out after {self.deadline_s:g} s: {why}"
            )
        return Result(Verdict.PENDING)

    def check(self, root: Path, elapsed_s: float) -> Result:
        return self.evaluate(read_health(root), elapsed_s)


def read_health(root: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((root / HEALTH_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def clear_health(root: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (root / HEALTH_FILE).unlink()
