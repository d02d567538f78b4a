"""`fleet-agent run`: wire config, outbox, drivers, MQTT link and reporter together, until SIGTERM.

Shutdown on SIGTERM/SIGINT: the reporter stops, the link flushes the outbox for at most
`shutdown_flush_s`, publishes presence `online:false` and disconnects cleanly; whatever could not
be sent stays in the outbox for the next start.

Desired state (agent.desired): the stored document is re-verified and its settings applied before
the first report; `desired` messages go from the MQTT thread to the applier's worker thread.
`cmd` messages go to agent.commands.CommandRunner on a worker thread of their own; results go
out on `cmd/result`. `restart_agent` stops the agent cleanly (exit 0): systemd's
Restart=always starts it again.

Self-update (agent.update): the agent version a document names goes to the UpdateWorker, which
downloads it through TUF, installs and switches, then stops the agent the same clean way; the
launcher starts the new version and judges its health. An update's outcome is emitted once, as
an `update_*` event, by whichever version runs next.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import queue
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO, Any

from agent.commands import CommandRunner
from agent.config import AgentConfig, ConfigError
from agent.desired.apply import Applier, Effective, LiveTarget, load_key
from agent.desired.store import DesiredStore
from agent.devices import BoundedDevice
from agent.drivers.base import PrinterStatus, ReaderStatus
from agent.drivers.factory import make_printer, make_reader
from agent.mqtt_link import MqttLink
from agent.outbox import Outbox, OutboxError
from agent.paper import PaperTracker
from agent.reporter import Reporter
from agent.update.health import ROOT_ENV as UPDATE_ROOT_ENV
from agent.update.health import HealthProbe
from agent.update.tuf_client import UpdateClient
from agent.update.updater import Updater
from agent.update.worker import UpdateWorker
from agent.version import agent_version

log = logging.getLogger("agent")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

OUTBOX_FILE = "outbox.db"
LOCK_FILE = "agent.lock"
DESIRED_DIR = "desired"
UPDATE_DIR = "update"  # TUF metadata trusted so far, downloads, the last attempt
#: Test hook: seconds to sleep after each step of a desired-state commit, so the power-cut
#: test can kill the process inside the write sequence. Unset in production.
STEP_DELAY_ENV = "FLEET_AGENT_TEST_DESIRED_STEP_DELAY_S"


def setup_logging(level: str) -> None:
    # journald adds its own timestamps, but a terminal or a test log needs them too.
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run(cfg: AgentConfig) -> int:
    setup_logging(cfg.log_level)
    try:
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        log.error("cannot create data_dir %s: %s", cfg.data_dir, e)
        return EXIT_FAILURE
    lock = _single_instance(cfg.data_dir)
    if lock is None:
        log.error("another fleet-agent is running with data_dir %s", cfg.data_dir)
        return EXIT_FAILURE
    try:
        return _run(cfg)
    finally:
        lock.close()


def _run(cfg: AgentConfig) -> int:
    try:
        outbox = Outbox(cfg.data_dir / OUTBOX_FILE, cfg.outbox_budget_bytes)
    except (OutboxError, sqlite3.Error, OSError) as e:
        log.error("cannot open the outbox: %s", e)
        return EXIT_FAILURE
    printer: BoundedDevice[PrinterStatus] | None = None
    reader: BoundedDevice[ReaderStatus] | None = None
    try:
        if cfg.printer:
            printer = BoundedDevice(make_printer(cfg.printer, source=cfg.source))
        if cfg.reader:
            reader = BoundedDevice(make_reader(cfg.reader, source=cfg.source))
    except ConfigError as e:
        log.error("%s", e)
        outbox.close()
        return EXIT_CONFIG

    version = agent_version()
    # Self-update: the launcher starts a just-switched version with the probe's environment; the
    # marks below are what its health check waits for (a no-op otherwise).
    probe = HealthProbe.from_env()
    updater = (
        Updater(Path(os.environ[UPDATE_ROOT_ENV])) if os.environ.get(UPDATE_ROOT_ENV) else None
    )

    def status_acked() -> None:
        was_armed = probe.armed
        probe.mark("status_published")
        if updater is not None:  # (the link starts after the reporter exists)
            _report_update_outcome(updater, reporter)
            if was_armed and not probe.armed:
                # Proven: the launcher commits within its poll; say so now, not at the next report.
                threading.Thread(
                    target=_await_outcome, args=(updater, reporter), daemon=True
                ).start()

    applier: Applier | None = None
    commands: CommandWorker | None = None
    link = MqttLink(
        terminal_id=cfg.terminal_id,
        broker=cfg.broker,
        outbox=outbox,
        agent_version=version,
        on_desired=lambda payload: applier.submit(payload) if applier else None,
        on_cmd=lambda payload: commands.submit(payload) if commands else None,
        on_ready=lambda: _connected(probe, applier),
        on_status_acked=status_acked,
    )
    paper = None
    if printer is not None and cfg.printer is not None:
        capacity = cfg.printer.settings.get("capacity")
        paper = PaperTracker(outbox, capacity if isinstance(capacity, int) else None)
    reporter = Reporter(
        terminal_id=cfg.terminal_id,
        outbox=outbox,
        agent_version=version,
        data_dir=cfg.data_dir,
        status_interval_s=cfg.intervals.status_interval_s,
        poll_interval_s=cfg.intervals.poll_interval_s,
        debounce_s=cfg.intervals.debounce_s,
        printer=printer,
        reader=reader,
        paper=paper,
        wake=link.wake,
        on_devices_ok=lambda: probe.mark("drivers_ok"),
    )
    if updater is not None:
        _report_update_outcome(updater, reporter)
    stop = threading.Event()
    restart = threading.Event()

    def request_restart(why: str) -> None:
        log.info("%s", why)
        restart.set()
        stop.set()
        reporter.kick()

    update_worker = _update_worker(
        cfg,
        updater,
        version,
        reporter,
        request_restart,
        idle=lambda: commands is None or commands.idle(),
    )
    applier = Applier(
        terminal_id=cfg.terminal_id,
        key=load_key(cfg.config_public_key),
        store=DesiredStore(cfg.data_dir / DESIRED_DIR, step=_step_hook()),
        base=Effective.from_agent_config(cfg),
        target=LiveTarget(reporter, printer, reader, update=update_worker.want),
        publish=lambda msg: link.publish("reported", _dumps(msg)),
        server_url=cfg.server_url,
    )
    applier.load()
    commands = CommandWorker(
        CommandRunner(
            cfg.terminal_id,
            printer.driver if printer is not None else None,
            reporter.refresh,
            lambda: request_restart("restart requested by a remote command"),
            state_dir=cfg.data_dir,
        ),
        publish=lambda msg: link.publish("cmd/result", _dumps(msg)),
    )
    if outbox.recovered:
        # Say so on the wire too: the server sees why seq may jump or restart.
        reporter.emit("outbox_reset", detail=outbox.recovered)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()
        reporter.kick()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info(
        "fleet-agent %s for %s: broker %s, next seq %d, %d queued",
        version,
        cfg.terminal_id,
        cfg.broker.url,
        outbox.next_seq,
        outbox.stats().queued,
    )
    applier.start()
    commands.start()
    update_worker.start()
    link.start()
    try:
        reporter.run(stop)
    finally:
        update_worker.stop()
        applier.stop()
        commands.stop()  # before the link: a result (of restart_agent, say) still goes out
        link.stop(cfg.shutdown_flush_s)
        for dev in (printer, reader):
            if dev is not None:
                try:
                    dev.close()
                except Exception as e:
                    log.warning("%s", e)
        outbox.close()
    log.info("stopped%s", " for a restart (the service manager starts us again)" * restart.is_set())
    return EXIT_OK


def _connected(probe: HealthProbe, applier: Applier | None) -> None:
    probe.mark("connected")
    if applier is not None:
        applier.request_state_report()


#: Outcomes are reported from the MQTT thread, the update worker and the commit watcher: one at
#: a time, so that one is never emitted twice.
_OUTCOME_LOCK = threading.Lock()


def _report_update_outcome(updater: Updater, reporter: Reporter) -> None:
    """An update's end (succeeded, failed, rolled back) goes out once, as an `update_*` event."""
    try:
        with _OUTCOME_LOCK:
            outcome = updater.on_agent_start()
            if outcome is None:
                return
            data = outcome.to_json()
            data.pop("event", None)
            if reporter.emit(outcome.event, **data) is not None:
                updater.acknowledge()  # the outbox is durable: the server will get it
    except Exception:  # the update state must never stop the agent from reporting
        log.exception("reading the update state failed")


def _update_worker(
    cfg: AgentConfig,
    updater: Updater | None,
    version: str,
    reporter: Reporter,
    request_restart: Callable[[str], None],
    idle: Callable[[], bool],
) -> UpdateWorker:
    """The self-update worker; without the launcher or [update] it only says why it cannot."""
    client: UpdateClient | None = None
    unavailable: str | None = None
    if cfg.update is None:
        unavailable = "agent.toml has no [update] section (no trusted update root)"
    elif updater is None:
        unavailable = "the agent was not started by the update launcher (agent.update.launcher)"
    else:
        try:
            client = UpdateClient.from_root_file(
                cfg.data_dir / UPDATE_DIR / "metadata",
                cfg.data_dir / UPDATE_DIR / "downloads",
                cfg.update.url,
                cfg.update.trusted_root,
            )
        except OSError as e:
            unavailable = f"cannot read the trusted update root: {e}"
    return UpdateWorker(
        running=version,
        attempt_file=cfg.data_dir / UPDATE_DIR / "attempt.json",
        emit=reporter.emit,
        restart=lambda: request_restart("restart to switch to the new agent version"),
        report_outcome=(lambda: _report_update_outcome(updater, reporter)) if updater else _noop,
        updater=updater if client is not None else None,
        client=client,
        unavailable=unavailable,
        retry_delays_s=cfg.update.retry_delays_s if cfg.update else (),
        idle=idle,
    )


def _noop() -> None:
    pass


def _await_outcome(updater: Updater, reporter: Reporter, timeout_s: float = 60.0) -> None:
    """Report the update's outcome as soon as the launcher has decided it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if updater.pending_outcome() is not None:
            _report_update_outcome(updater, reporter)
            return
        time.sleep(0.2)


def _dumps(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode()


def _step_hook() -> Callable[[str], None] | None:
    delay = float(os.environ.get(STEP_DELAY_ENV) or 0)
    if delay <= 0:
        return None
    return lambda step: time.sleep(delay)


class CommandWorker:
    """Runs `cmd` messages off the MQTT thread (a test page may print for a while), in order."""

    MAX_QUEUED = 64

    def __init__(self, runner: CommandRunner, publish: Callable[[dict[str, Any]], None]) -> None:
        self.runner = runner
        self.publish = publish
        self._queue: queue.Queue[bytes | None] = queue.Queue(self.MAX_QUEUED)
        self._thread = threading.Thread(target=self._run, name="commands", daemon=True)
        self._busy = False

    def idle(self) -> bool:
        """Nothing running or waiting (a self-update restarts only then: not mid-print)."""
        return not self._busy and self._queue.empty()

    def start(self) -> None:
        self._thread.start()

    def submit(self, payload: bytes) -> None:
        try:
            self._queue.put_nowait(payload)
        except queue.Full:
            # Not acknowledged to anyone: the server sees no result and the command expires.
            log.error("command dropped: %d commands already waiting", self.MAX_QUEUED)

    def stop(self, timeout: float = 10.0) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while (payload := self._queue.get()) is not None:
            self._busy = True
            try:
                result = self.runner.handle(payload)
                if result is not None:
                    self.publish(result)
            except Exception:
                log.exception("command handling failed")
            finally:
                self._busy = False


def _single_instance(data_dir: Path) -> IO[bytes] | None:
    """Hold an exclusive lock on the data dir: two agents would fight over one client id."""
    f = open(data_dir / LOCK_FILE, "ab")  # noqa: SIM115 - held open for the process lifetime
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    os.set_inheritable(f.fileno(), False)
    return f
