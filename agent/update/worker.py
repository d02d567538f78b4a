"""Self-update in the running agent: act on the agent version the desired-state document names.

What happens when an applied document names agent version V (agent.desired.apply hands it over):

    V is the running version                    nothing
    V was already attempted for this document   nothing: a release that failed or was rolled back
                                                here is tried again only when a newer document
                                                names it (a new rollout), never in a loop
    no [update] in agent.toml, or not started   one `update_failed` saying why
    by the launcher
    otherwise, on this worker's thread:
        the attempt is recorded (durably, before anything else)
        Updater.begin                           -> event `update_downloading`
        TUF refresh, then the signed bundle     a network failure is retried (retry_delays_s);
                                                a refusal (bad signature, hash, expiry...) is final
        Updater.downloaded(bundle, signed sha)  -> event `update_installing`
        Updater.install, Updater.switch
        a command in progress finishes          (a test page is not cut off; at most 5 min)
        the agent stops cleanly (exit 0)        the launcher starts V and judges its health;
                                                its outcome is reported by whichever version runs
    any failure before the switch               Updater.fail(reason) -> `update_failed`

The update's own state machine (agent.update.updater) is what survives kills; this worker only
decides when to start one, and waits while an earlier update's outcome is still unreported.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from agent.durable import write_atomic
from agent.update.install import InstallError
from agent.update.layout import check_version
from agent.update.state import BEFORE_SWITCH, CorruptState, State
from agent.update.tuf_client import UpdateClient, UpdateRefused
from agent.update.updater import UpdateError, Updater

log = logging.getLogger(__name__)

#: Refusal kinds that say the network failed, not that something was wrong with the release.
TRANSIENT = frozenset({"slow_retrieval", "http_error", "download_failed"})
#: How often to look again while an earlier update's outcome waits to be reported, or while a
#: command runs before the restart.
BUSY_POLL_S = 1.0
#: The longest a restart waits for a command in progress.
MAX_DEFER_S = 300.0

Emit = Callable[..., object]


class UpdateWorker:
    """One thread; `want` may be called from any thread and never blocks (the latest wins)."""

    def __init__(
        self,
        *,
        running: str,
        attempt_file: Path,
        emit: Emit,
        restart: Callable[[], None],
        report_outcome: Callable[[], None],
        updater: Updater | None = None,
        client: UpdateClient | None = None,
        unavailable: str | None = None,
        retry_delays_s: Sequence[float] = (5.0, 30.0, 120.0),
        idle: Callable[[], bool] = lambda: True,
        max_defer_s: float = MAX_DEFER_S,
    ) -> None:
        """`unavailable`: why this agent cannot update itself (then updater/client are None)."""
        self.running = running
        self.attempt_file = attempt_file
        self.emit = emit
        self.restart = restart
        self.report_outcome = report_outcome
        self.updater = updater
        self.client = client
        self.unavailable = unavailable
        self.retry_delays_s = tuple(retry_delays_s)
        self.idle = idle
        self.max_defer_s = max_defer_s
        self._cond = threading.Condition()
        self._pending: tuple[str, int | None] | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- any thread ------------------------------------------------------------------------------

    def want(self, version: str | None, document: int | None) -> None:
        """The applied document names `version` (None: no target) in its version `document`."""
        if version is None or version == self.running:
            return
        with self._cond:
            self._pending = (version, document)
            self._cond.notify()

    def start(self) -> None:
        if self.client is not None:
            # A download cut short by a kill or power cut: the launcher already failed that
            # update (agent.update.updater), so its partial file is just litter.
            _clear_downloads(self.client.targets_dir)
        self._thread = threading.Thread(target=self._run, name="update", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop between steps (an install in progress finishes, within `timeout`)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the worker thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or self._pending is not None)
                if self._stopping:
                    return
                assert self._pending is not None
                version, document = self._pending
                self._pending = None
            try:
                self.handle(version, document)
            except Exception:
                log.exception("self-update to %s: unexpected error", version)

    def handle(self, version: str, document: int | None) -> None:
        """Decide on and run one update (the worker thread; tests call it directly)."""
        if self._attempted() == (version, document):
            log.info("agent %s was already attempted for desired version %s", version, document)
            return
        why = self.unavailable or "self-update is not configured"
        if self.updater is not None and self.client is not None:
            try:
                check_version(version)
            except ValueError as e:
                why = str(e)
            else:
                why = ""
        if why:
            self._record(version, document)
            log.error("desired state names agent %s, but %s", version, why)
            self.emit(
                "update_failed", version=version, from_version=self.running, reason=why, attempt=1
            )
            return
        assert self.updater is not None and self.client is not None
        if not self._wait_idle():
            return
        self._record(version, document)
        self._update(self.updater, self.client, version)

    def _update(self, updater: Updater, client: UpdateClient, version: str) -> None:
        rec = updater.begin(version)
        log.info(
            "self-update %s -> %s (attempt %d): downloading", self.running, version, rec.attempt
        )
        self.emit("update_downloading", version=version, from_version=self.running)
        try:
            bundle = self._download(client, version)
            info = client.find(version)
            assert info is not None  # download() refuses an unknown target
            updater.downloaded(bundle, info.hashes["sha256"])
            self.emit("update_installing", version=version, from_version=self.running)
            updater.install()
            if self._stopping:
                raise UpdateError("the agent is stopping; installed but not switched")
            updater.switch()
        except (UpdateRefused, InstallError, UpdateError, OSError) as e:
            self._failed(updater, str(e))
            return
        finally:
            _clear_downloads(client.targets_dir)
        self._until_idle()
        log.info("agent %s installed and switched: restarting to run it", version)
        self.restart()

    def _until_idle(self) -> None:
        """A command in progress (a test page printing) finishes before the restart; the new
        version is current already, so a kill meanwhile still starts it."""
        deadline = time.monotonic() + self.max_defer_s
        while not self.idle() and not self._stopping and time.monotonic() < deadline:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping, timeout=BUSY_POLL_S)

    def _download(self, client: UpdateClient, version: str) -> Path:
        delays = iter(self.retry_delays_s)
        while True:
            try:
                client.refresh()
                return client.download(version)
            except UpdateRefused as e:
                delay = next(delays, None) if e.kind in TRANSIENT else None
                if delay is None or self._stopping:
                    raise
                log.warning("downloading agent %s: %s; again in %g s", version, e, delay)
                with self._cond:
                    if self._cond.wait_for(lambda: self._stopping, timeout=delay):
                        raise

    def _failed(self, updater: Updater, reason: str) -> None:
        rec = updater.store.load()
        if rec.state in BEFORE_SWITCH:  # (install() fails its own errors itself)
            updater.fail(reason)
        elif rec.state in (State.SWITCHING, State.SWITCHED):  # the switch itself failed
            updater.rollback(reason)
        self.report_outcome()

    def _wait_idle(self) -> bool:
        """Wait until no earlier update is in flight or unreported; False if stopping."""
        assert self.updater is not None
        warned = False
        while not self._stopping:
            try:
                state = self.updater.store.load().state
            except CorruptState as e:
                state = None
                reason = str(e)
            else:
                reason = f"state {state}"
            if state == State.IDLE:
                return True
            if not warned:
                log.info("self-update waits: an earlier update is not finished (%s)", reason)
                warned = True
            self.report_outcome()  # a finished one goes out as soon as the outbox takes it
            with self._cond:
                self._cond.wait_for(lambda: self._stopping, timeout=BUSY_POLL_S)
        return False

    # -- the attempt record ----------------------------------------------------------------------

    def _attempted(self) -> tuple[str, int | None] | None:
        try:
            doc = json.loads(self.attempt_file.read_bytes())
            return (str(doc["version"]), doc["document"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # none yet, or unreadable: at worst one more attempt

    def _record(self, version: str, document: int | None) -> None:
        doc = {"version": version, "document": document, "at": time.time()}
        self.attempt_file.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.attempt_file, json.dumps(doc).encode())


def _clear_downloads(directory: Path) -> None:
    """The bundle is installed (or refused): its download only takes disk space."""
    if directory.is_dir():
        for p in directory.iterdir():
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
