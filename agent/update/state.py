"""The update's persisted state machine: one transition table, one state file.

Modelled on Mender's: each step posts one event, `TRANSITIONS` is the whole machine, and the state
is persisted (temp file, fsync, rename, directory fsync) *before* the step it names runs, so a
restart after a kill or a power cut resumes from a stable string. What each state means at start-up
is `agent.update.updater.Updater.prepare_start`.

`state.json` (format 1; fields are only ever added, retired states keep their names: the launcher
that reads it may be older than the agent that wrote it, and what it cannot read means rollback):

    {"format": 1, "state": "switched", "target": "1.3.0", "source": "1.2.0",
     "source_previous": "1.1.0", "sha256": "…", "bundle": "/…/fleet-agent-1.3.0.tar.gz",
     "attempt": 1, "starts": 1, "reason": null, "began_at": 1764…, "since": 1764…}
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from agent.durable import write_atomic

FORMAT = 1
STATE_FILE = "state.json"
LOCK_FILE = "state.lock"


class State(StrEnum):
    IDLE = "idle"
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    INSTALLING = "installing"
    INSTALLED = "installed"
    SWITCHING = "switching"
    SWITCHED = "switched"  # the new version is current and must pass its health check
    COMMITTED = "committed"  # passed; waiting for the agent to report it
    FAILED = "failed"  # refused or interrupted before the switch; waiting to be reported
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"  # back on the previous version; waiting to be reported


class Event(StrEnum):
    BEGIN = "begin"
    DOWNLOADED = "downloaded"
    INSTALL = "install"
    INSTALLED = "installed"
    SWITCH = "switch"
    SWITCHED = "switched"
    STARTED = "started"  # one more start of the switched version (counted against the cap)
    HEALTHY = "healthy"
    ERROR = "error"
    ROLLBACK = "rollback"
    ROLLED_BACK = "rolled_back"
    REPORTED = "reported"


S, E = State, Event
# fmt: off
TRANSITIONS: dict[tuple[State, Event], State] = {
    (S.IDLE,         E.BEGIN):       S.DOWNLOADING,
    (S.DOWNLOADING,  E.DOWNLOADED):  S.DOWNLOADED,
    (S.DOWNLOADED,   E.INSTALL):     S.INSTALLING,
    (S.INSTALLING,   E.INSTALLED):   S.INSTALLED,
    (S.INSTALLED,    E.SWITCH):      S.SWITCHING,
    (S.SWITCHING,    E.SWITCHED):    S.SWITCHED,
    (S.SWITCHED,     E.STARTED):     S.SWITCHED,
    (S.SWITCHED,     E.HEALTHY):     S.COMMITTED,
    (S.COMMITTED,    E.REPORTED):    S.IDLE,
    (S.DOWNLOADING,  E.ERROR):       S.FAILED,
    (S.DOWNLOADED,   E.ERROR):       S.FAILED,
    (S.INSTALLING,   E.ERROR):       S.FAILED,
    (S.INSTALLED,    E.ERROR):       S.FAILED,
    (S.FAILED,       E.REPORTED):    S.IDLE,
    (S.SWITCHING,    E.ROLLBACK):    S.ROLLING_BACK,
    (S.SWITCHED,     E.ROLLBACK):    S.ROLLING_BACK,
    (S.ROLLING_BACK, E.ROLLED_BACK): S.ROLLED_BACK,
    (S.ROLLED_BACK,  E.REPORTED):    S.IDLE,
}
# fmt: on
del S, E

#: States in which the update has not reached the switch: a restart cleans up and fails it.
BEFORE_SWITCH = frozenset({State.DOWNLOADING, State.DOWNLOADED, State.INSTALLING, State.INSTALLED})
#: States whose outcome the agent still has to report.
OUTCOMES = frozenset({State.COMMITTED, State.FAILED, State.ROLLED_BACK})


class IllegalTransition(Exception):
    def __init__(self, state: State, event: Event) -> None:
        super().__init__(f"no transition from {state} on {event}")
        self.state = state
        self.event = event


class CorruptState(Exception):
    """state.json cannot be read, or names a state or format this code does not know."""


def next_state(state: State, event: Event) -> State:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(state, event) from None


@dataclass(frozen=True)
class Record:
    state: State = State.IDLE
    target: str | None = None  # the version being installed
    source: str | None = None  # the version that ran when the update began: the rollback target
    source_previous: str | None = None  # `previous` before the switch, restored on rollback
    sha256: str | None = None
    bundle: str | None = None
    attempt: int = 0  # attempts at this target, this one included
    starts: int = 0  # starts of the switched version without a commit
    reason: str | None = None
    began_at: float | None = None
    since: float = 0.0  # when this state was entered (epoch seconds)

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["state"] = str(self.state)
        return {"format": FORMAT, **d}

    @classmethod
    def from_json(cls, doc: object) -> Record:
        if not isinstance(doc, dict):
            raise CorruptState("state.json is not a JSON object")
        if doc.get("format") != FORMAT:
            raise CorruptState(f"unknown state format {doc.get('format')!r}")
        try:
            state = State(str(doc.get("state")))
        except ValueError:
            raise CorruptState(f"unknown state {doc.get('state')!r}") from None
        kw: dict[str, Any] = {"state": state}
        for f in dataclasses.fields(cls):
            if f.name == "state" or f.name not in doc:
                continue
            value = doc[f.name]
            ok = {
                "attempt": lambda v: isinstance(v, int) and not isinstance(v, bool),
                "starts": lambda v: isinstance(v, int) and not isinstance(v, bool),
                "began_at": lambda v: v is None or isinstance(v, int | float),
                "since": lambda v: isinstance(v, int | float),
            }.get(f.name, lambda v: v is None or isinstance(v, str))(value)
            if not ok:
                raise CorruptState(f"state.json field {f.name} has a bad value {value!r}")
            kw[f.name] = value
        return cls(**kw)


class StateStore:
    """`state.json` under `root`, changed only through `TRANSITIONS` (and `reset`), under a lock.

    The lock (flock on state.lock) serialises the launcher and the agent, which both write here.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / STATE_FILE

    def load(self) -> Record:
        """The persisted record; idle if there is none; CorruptState if it cannot be trusted."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return Record()
        except OSError as e:
            raise CorruptState(f"cannot read state.json: {e}") from e
        try:
            doc = json.loads(raw)
        except ValueError as e:
            raise CorruptState(f"state.json is not JSON: {e}") from e
        return Record.from_json(doc)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def write(self, record: Record) -> None:
        write_atomic(self.path, json.dumps(record.to_json(), indent=1).encode() + b"\n")

    def transition(self, event: Event, **changes: Any) -> Record:
        """Persist the state `event` leads to (IllegalTransition if none), with `changes`."""
        with self.locked():
            current = self.load()
            new = dataclasses.replace(
                current, state=next_state(current.state, event), since=time.time(), **changes
            )
            self.write(new)
            return new

    def reset(self, record: Record) -> Record:
        """Write `record` whatever was there: recovery from a state that cannot be read."""
        with self.locked():
            record = dataclasses.replace(record, since=time.time())
            self.write(record)
            return record
