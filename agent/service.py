"""`fleet-agent run`: wire config, outbox, drivers, MQTT link and reporter together, until SIGTERM.

Shutdown on SIGTERM/SIGINT: the reporter stops, the link flushes the outbox for at most
`shutdown_flush_s`, publishes presence `online:false` and disconnects cleanly; whatever could not
be sent stays in the outbox for the next start.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sqlite3
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import IO

from agent.config import AgentConfig, ConfigError
from agent.devices import BoundedDevice
from agent.drivers.base import PrinterStatus, ReaderStatus
from agent.drivers.factory import make_printer, make_reader
from agent.mqtt_link import MqttLink
from agent.outbox import Outbox, OutboxError
from agent.paper import PaperTracker
from agent.reporter import Reporter
from agent.version import agent_version

log = logging.getLogger("agent")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

OUTBOX_FILE = "outbox.db"
LOCK_FILE = "agent.lock"


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
    link = MqttLink(
        terminal_id=cfg.terminal_id, broker=cfg.broker, outbox=outbox, agent_version=version
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
    )
    if outbox.recovered:
        # Say so on the wire too: the server sees why seq may jump or restart.
        reporter.emit("outbox_reset", detail=outbox.recovered)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

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
    link.start()
    try:
        reporter.run(stop)
    finally:
        link.stop(cfg.shutdown_flush_s)
        for dev in (printer, reader):
            if dev is not None:
                try:
                    dev.close()
                except Exception as e:
                    log.warning("%s", e)
        outbox.close()
    log.info("stopped")
    return EXIT_OK


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
