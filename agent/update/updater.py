"""The update, step by step, and what each persisted state means after a restart.

The running agent drives the steps up to the switch, then restarts:

    u = Updater(root)
    u.begin(version[, sha256])         idle -> downloading   (the TUF client downloads meanwhile)
    u.downloaded(bundle[, sha256])     -> downloaded         (the signed hash, if begin had none)
    u.install()                        -> installing -> installed   (agent.update.install)
    u.switch()                         -> switching -> switched      (previous, current pointers)
    ... the agent stops (exit 0); systemd starts the launcher again

The launcher (agent.update.launcher) calls `prepare_start()` before every start, supervises the
health check of a switched version and calls `commit()` or `rollback()`. The agent, on start and
after each status report, calls `pending_outcome()` and, once it has queued the report,
`acknowledge()` (committed / failed / rolled_back -> idle).

`prepare_start()` (recovery), by persisted state:

    idle, committed/failed/rolled_back   nothing to undo (a commit's last steps are redone)
    downloading .. installed             remove the partial/unswitched version -> failed
    switching                            pointers may be half switched -> roll back
    switched                             one more start of the new version; at `max_starts`
                                         starts without a commit -> roll back (a crash loop)
    rolling_back                         finish the rollback
    unreadable / unknown state           back to `committed` (else `previous`) -> rolled_back

Whatever the state, the version started is complete (never a .partial) or `prepare_start` fails.
Tests: `FLEET_UPDATE_TEST_KILL_AT=<checkpoint>` makes the process SIGKILL itself there.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from agent.update.health import clear_health
from agent.update.install import InstallError, Limits
from agent.update.install import install as install_bundle
from agent.update.layout import (
    COMMITTED,
    CURRENT,
    PREVIOUS,
    Layout,
    check_version,
    read_manifest,
)
from agent.update.state import (
    BEFORE_SWITCH,
    OUTCOMES,
    CorruptState,
    Event,
    Record,
    State,
    StateStore,
)

log = logging.getLogger(__name__)

KILL_AT_ENV = "FLEET_UPDATE_TEST_KILL_AT"
DEFAULT_MAX_STARTS = 3


class UpdateError(Exception):
    """An update step was refused (InstallError says why for a bundle)."""


class NoWorkingVersion(Exception):
    """Neither current, committed nor previous names a complete version: nothing to run."""


def checkpoint(name: str) -> None:
    if os.environ.get(KILL_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class StartPlan:
    version: str
    path: Path
    module: str
    health_check: bool  # this start is a switched version that must prove itself
    record: Record


@dataclass(frozen=True)
class Outcome:
    """What the agent reports once: `update_succeeded`, `update_failed` or `update_rolled_back`."""

    event: str
    version: str | None
    from_version: str | None
    reason: str | None
    attempt: int

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


_OUTCOME_EVENTS = {
    State.COMMITTED: "update_succeeded",
    State.FAILED: "update_failed",
    State.ROLLED_BACK: "update_rolled_back",
}


class Updater:
    def __init__(
        self,
        root: Path,
        max_starts: int = DEFAULT_MAX_STARTS,
        limits: Limits | None = None,
    ) -> None:
        self.root = root
        self.layout = Layout(root)
        self.store = StateStore(root)
        self.max_starts = max_starts
        self.limits = limits or Limits()

    # -- first installation ------------------------------------------------------------------

    def provision(self, bundle: Path, version: str, sha256: str) -> None:
        """Install the factory version and point every pointer at it (a fresh root only)."""
        self.layout.ensure()
        if self.layout.resolve(CURRENT) is not None:
            raise UpdateError(f"{self.root} is already provisioned")
        install_bundle(bundle, version, sha256, self.layout, self.limits)
        for pointer in (PREVIOUS, COMMITTED, CURRENT):
            self.layout.set_pointer(pointer, version)
        self.store.reset(Record())

    # -- the steps the running agent drives -----------------------------------------------------

    def begin(self, version: str, sha256: str | None = None) -> Record:
        """Start an update to `version`; `sha256` may come with the download (`downloaded`)."""
        check_version(version)
        running = self.layout.resolve(CURRENT)
        if running == version:
            raise UpdateError(f"{version} is already the running version")
        last = self.store.load()
        attempt = last.attempt + 1 if last.target == version else 1
        rec = self.store.transition(
            Event.BEGIN,
            target=version,
            source=running,
            source_previous=None,
            sha256=sha256,
            bundle=None,
            attempt=attempt,
            starts=0,
            reason=None,
            began_at=time.time(),
        )
        checkpoint("downloading")
        return rec

    def downloaded(self, bundle: Path, sha256: str | None = None) -> Record:
        changes: dict[str, object] = {"bundle": str(bundle)}
        if sha256 is not None:
            changes["sha256"] = sha256
        rec = self.store.transition(Event.DOWNLOADED, **changes)
        if rec.sha256 is None:
            self.fail("no signed sha256 for the downloaded bundle")
            raise UpdateError("no signed sha256 for the downloaded bundle")
        checkpoint("downloaded")
        return rec

    def install(self) -> Record:
        rec = self.store.transition(Event.INSTALL)
        checkpoint("installing")
        assert rec.target is not None and rec.bundle is not None and rec.sha256 is not None
        try:
            install_bundle(
                Path(rec.bundle), rec.target, rec.sha256, self.layout, self.limits, _step
            )
        except InstallError as e:
            self.fail(str(e))
            raise
        rec = self.store.transition(Event.INSTALLED)
        checkpoint("installed")
        return rec

    def switch(self) -> Record:
        rec = self.store.load()
        if rec.state != State.INSTALLED or rec.target is None:
            raise UpdateError(f"nothing installed to switch to (state {rec.state})")
        if not self.layout.is_complete(rec.target):
            self.fail(f"{rec.target} is not installed whole")
            raise UpdateError(f"{rec.target} is not installed whole")
        rec = self.store.transition(Event.SWITCH, source_previous=self.layout.resolve(PREVIOUS))
        checkpoint("switching")
        assert rec.target is not None
        if rec.source is not None:
            self.layout.set_pointer(PREVIOUS, rec.source)
        checkpoint("switch_previous")
        self.layout.set_pointer(CURRENT, rec.target)
        checkpoint("switch_current")
        rec = self.store.transition(Event.SWITCHED, starts=0)
        checkpoint("switched")
        return rec

    def apply(self, bundle: Path, version: str, sha256: str) -> Record:
        """begin, downloaded, install, switch: for a bundle already on disk."""
        self.begin(version, sha256)
        self.downloaded(bundle)
        self.install()
        return self.switch()

    def fail(self, reason: str) -> Record:
        """An error before the switch: remove what was installed, state failed."""
        rec = self.store.transition(Event.ERROR, reason=reason)
        self._prune()
        log.error("update to %s failed: %s", rec.target, reason)
        return rec

    # -- what the launcher drives --------------------------------------------------------------

    def prepare_start(self) -> StartPlan:
        """Recover from whatever state a restart found (module docstring) and say what to run."""
        self.layout.ensure()
        try:
            rec = self.store.load()
        except CorruptState as e:
            rec = self._recover_unreadable(str(e))
        else:
            rec = self._recover(rec)
        return self._plan(rec)

    def _recover(self, rec: Record) -> Record:
        if rec.state in BEFORE_SWITCH:
            return self.fail(f"interrupted while {rec.state}")
        if rec.state == State.SWITCHING:
            return self.rollback("interrupted while switching")
        if rec.state == State.ROLLING_BACK:
            return self._finish_rollback(rec)
        if rec.state == State.SWITCHED:
            if self.layout.resolve(CURRENT) != rec.target or not self.layout.is_complete(
                rec.target
            ):
                return self.rollback(f"{rec.target} is not the current complete version")
            if rec.starts >= self.max_starts:
                return self.rollback(
                    f"{rec.target} started {rec.starts} times without passing its health check"
                )
            clear_health(self.root)
            return self.store.transition(Event.STARTED, starts=rec.starts + 1)
        if rec.state == State.COMMITTED:
            self._finish_commit(rec)
        elif rec.state in (State.IDLE, *OUTCOMES):
            self._repair_current()
            self._prune()  # a kill may have come between the last transition and the pruning
        return rec

    def _recover_unreadable(self, why: str) -> Record:
        log.error("update state unreadable (%s): back to the last committed version", why)
        good = self._last_good()
        running = self.layout.resolve(CURRENT)
        rec = self.store.reset(
            Record(
                state=State.ROLLING_BACK,
                target=running,
                source=good,
                source_previous=self.layout.resolve(PREVIOUS),
                reason=f"update state unreadable: {why}",
            )
        )
        return self._finish_rollback(rec)

    def _plan(self, rec: Record) -> StartPlan:
        version = self.layout.resolve(CURRENT)
        if version is None or not self.layout.is_complete(version):
            raise NoWorkingVersion(f"{self.root}: current names no complete version")
        vdir = self.layout.version_dir(version)
        return StartPlan(
            version=version,
            path=vdir,
            module=read_manifest(vdir).module,
            health_check=rec.state == State.SWITCHED and rec.target == version,
            record=rec,
        )

    def commit(self) -> Record:
        """The switched version passed: it becomes the committed one."""
        rec = self.store.load()
        if rec.state != State.SWITCHED or rec.target is None:
            raise UpdateError(f"nothing to commit (state {rec.state})")
        self.layout.set_pointer(COMMITTED, rec.target)
        checkpoint("commit_pointer")
        rec = self.store.transition(Event.HEALTHY, reason=None)
        checkpoint("committed")
        self._finish_commit(rec)
        log.info("update to %s committed", rec.target)
        return rec

    def _finish_commit(self, rec: Record) -> None:
        if rec.target is not None and self.layout.is_complete(rec.target):
            self.layout.set_pointer(COMMITTED, rec.target)
        self._prune()

    def rollback(self, reason: str) -> Record:
        """Back to the version that ran before the update (from switching or switched)."""
        rec = self.store.transition(Event.ROLLBACK, reason=reason)
        checkpoint("rolling_back")
        return self._finish_rollback(rec)

    def _finish_rollback(self, rec: Record) -> Record:
        back = rec.source if rec.source and self.layout.is_complete(rec.source) else None
        back = back or self._last_good()
        if back is None:
            raise NoWorkingVersion(f"{self.root}: no version to roll back to")
        self.layout.set_pointer(CURRENT, back)
        checkpoint("rollback_current")
        self.layout.set_pointer(COMMITTED, back)
        prev = rec.source_previous
        self.layout.set_pointer(PREVIOUS, prev if prev and self.layout.is_complete(prev) else back)
        rec = self.store.transition(Event.ROLLED_BACK)
        checkpoint("rolled_back")
        self._prune()
        log.error("update to %s rolled back to %s: %s", rec.target, back, rec.reason)
        return rec

    def crashed(self, how: str) -> Record:
        """The switched version stopped before its commit; rolls back once the cap is reached."""
        rec = self.store.load()
        if rec.state == State.SWITCHED and rec.starts >= self.max_starts:
            return self.rollback(f"{how} before passing its health check ({rec.starts} starts)")
        return rec

    # -- what the running agent reports --------------------------------------------------------

    def pending_outcome(self) -> Outcome | None:
        """The finished update not yet reported (a cheap read: on start and after each report)."""
        try:
            rec = self.store.load()
        except CorruptState:
            return None
        event = _OUTCOME_EVENTS.get(rec.state)
        if event is None:
            return None
        return Outcome(event, rec.target, rec.source, rec.reason, rec.attempt)

    def on_agent_start(self) -> Outcome | None:
        return self.pending_outcome()

    def acknowledge(self) -> None:
        """The outcome is queued for the server (the outbox is durable): back to idle."""
        rec = self.store.load()
        if rec.state in OUTCOMES:
            self.store.transition(Event.REPORTED)

    # -- helpers ---------------------------------------------------------------------------------

    def _last_good(self) -> str | None:
        for pointer in (COMMITTED, PREVIOUS, CURRENT):
            v = self.layout.resolve(pointer)
            if self.layout.is_complete(v):
                return v
        complete = [v for v in self.layout.installed() if self.layout.is_complete(v)]
        return complete[-1] if complete else None

    def _repair_current(self) -> None:
        """Outside an update, current must be the committed version."""
        committed = self.layout.resolve(COMMITTED)
        current = self.layout.resolve(CURRENT)
        if current != committed or not self.layout.is_complete(current):
            good = self._last_good()
            if good is not None and good != current:
                log.error("current (%s) is not the committed version: back to %s", current, good)
                self.layout.set_pointer(CURRENT, good)
                self.layout.set_pointer(COMMITTED, good)

    def _prune(self) -> None:
        removed = self.layout.prune(self.layout.referenced())
        if removed:
            log.info("removed versions %s", ", ".join(removed))


def _step(name: str) -> None:
    checkpoint(f"install_{name}")
