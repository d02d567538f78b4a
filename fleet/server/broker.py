"""The fleet server's own Mosquitto: generated config, users, ACL, and a supervisor to restart it.

Used when no broker URL is configured (one machine). Two listeners (`broker_config.render_config`):
the terminals' one (loopback by default), where each terminal's username is its id and also its
client id, under the ACL of `broker_config.render_acl`; and the server's own on loopback, where
only the server's user exists. The supervisor reads Mosquitto's log and counts what matters for
security (`BrokerLog`): session takeovers and refused logins.

Restarting keeps the port, the users and the persistence file, so terminals and the server's
persistent session reconnect to the same broker and find their queued messages.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from fleet.server.broker_config import QueueLimits
from fleet.server.broker_files import (
    BROKER_SUBDIR,
    SERVER_BIND_ADDRESS,
    BrokerError,
    BrokerFiles,
    check_password,
    check_username,
    mqtt_login,
    runs_config,
)

__all__ = ["BROKER_SUBDIR", "BrokerError", "EmbeddedBroker", "free_port"]

log = logging.getLogger("fleet.broker")
SERVER_HOST = SERVER_BIND_ADDRESS
mosquitto_log = logging.getLogger("fleet.broker.mosquitto")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """One supervised Mosquitto process with its files in `data_dir` (created if missing).

    `port` None reuses the port of an earlier run in the same folder (kiosk configs name it),
    else picks a free one.
    `start()` writes the config, ACL and the server's user, starts Mosquitto, waits until it
    listens and keeps it running: if it dies, it is restarted on the same port after a backoff
    (0.2 s doubling to `max_backoff_s`), and why it died is logged. `stop()` ends it cleanly, which
    makes Mosquitto save its sessions and queued messages.
    """

    def __init__(
        self,
        data_dir: str | Path,
        port: int | None = None,
        server_user: str = "fleet-server",
        server_password: str = "",
        *,
        bind_address: str = "127.0.0.1",
        server_port: int | None = None,
        limits: QueueLimits | None = None,
        on_event: Callable[[str], None] | None = None,
        max_backoff_s: float = 10.0,
        ready_timeout_s: float = 10.0,
        mosquitto: str | None = None,
        mosquitto_passwd: str | None = None,
    ) -> None:
        if not server_password:
            raise BrokerError("the broker's server user needs a password")
        check_username(server_user)
        check_password(server_password)
        self.dir = Path(data_dir).absolute()
        self.files = BrokerFiles(self.dir, mosquitto_passwd=mosquitto_passwd)
        self.files.reload_timeout_s = ready_timeout_s
        self.bind_address = bind_address
        previous = self._previous_ports()
        self.port = port if port is not None else previous[0] or free_port(bind_address)
        #: The server's own listener (loopback): the ingest and the publisher connect here.
        self.server_port = (
            server_port if server_port is not None else previous[1] or free_port(SERVER_HOST)
        )
        self.server_user = server_user
        self._server_password = server_password
        self.limits = limits or QueueLimits()
        self.max_backoff_s = max_backoff_s
        self.ready_timeout_s = ready_timeout_s
        self._mosquitto = mosquitto or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self._stopping = threading.Event()
        self._first_attempt = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._proc_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._last_output: collections.deque[str] = collections.deque(maxlen=20)
        self.log = BrokerLog(on_event)
        self._start_error: str | None = None
        #: How many times the supervisor has restarted Mosquitto after it died.
        self.restarts = 0

    def _previous_ports(self) -> tuple[int | None, int | None]:
        """The ports of an earlier run: kiosk configs name the first, so it must not change."""
        if not self.files.conf_file.exists():
            return None, None
        terminals: int | None = None
        try:
            terminals = self.files.listener()[1]
            return terminals, self.files.server_listener()[1]
        except (BrokerError, ValueError):
            return terminals, None

    # ----------------------------------------------------------------- lifecycle

    @property
    def host(self) -> str:
        return "127.0.0.1" if self.bind_address in ("0.0.0.0", "") else self.bind_address

    @property
    def url(self) -> str:
        """The terminals' listener."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def server_url(self) -> str:
        """The server's own listener."""
        return f"mqtt://{SERVER_HOST}:{self.server_port}"

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> EmbeddedBroker:
        """Write the files, start Mosquitto and return once it listens; raises BrokerError."""
        if self._thread is not None:
            raise BrokerError("the broker is already started")
        self.files.prepare(
            port=self.port,
            bind_address=self.bind_address,
            server_port=self.server_port,
            server_user=self.server_user,
            server_password=self._server_password,
            limits=self.limits,
        )
        _stop_stale(self.files)
        self._stopping.clear()
        self._first_attempt.clear()
        self._start_error = None
        self._thread = threading.Thread(target=self._supervise, name="mosquitto-supervisor")
        self._thread.daemon = True
        self._thread.start()
        self._first_attempt.wait()
        if self._start_error is not None:
            self.stop()
            raise BrokerError(self._start_error)
        # An exception that ends the program must not leave the broker running on our port
        # (it has its own session, so it would outlive us); a SIGKILL is handled by
        # the next start instead, through the pid file.
        atexit.register(self.stop)
        log.info(
            "mosquitto listening on %s for terminals, %s for the server (pid %s, files in %s)",
            self.url,
            self.server_url,
            self.pid,
            self.dir,
        )
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop supervising and end Mosquitto cleanly (SIGTERM, then SIGKILL after timeout_s)."""
        atexit.unregister(self.stop)
        self._stopping.set()
        with self._proc_lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("mosquitto did not stop in %.0f s; killing it", timeout_s)
                proc.kill()
                proc.wait()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout_s)
        self._thread = None
        with contextlib.suppress(FileNotFoundError):
            self.files.pid_file.unlink()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- users

    def add_user(self, username: str, password: str) -> None:
        """Add a user or change its password; the running broker accepts it when this returns."""
        self.files.add_user(username, password)

    def remove_user(self, username: str) -> bool:
        """Remove a user (False if it had none); its connected clients are disconnected.

        The reload itself disconnects them (Mosquitto re-authenticates every client). We then
        also take over the session whose client id is the username (agents use their terminal
        id) with a clean start, which discards the commands still queued for it.
        """
        if username == self.server_user:
            raise BrokerError(f"{username!r} is the server's own user")
        removed = self.files.remove_user(username)
        if removed and self.pid is not None:
            with contextlib.suppress(OSError):
                # On the server's listener, where client ids are not tied to usernames.
                mqtt_login(
                    SERVER_HOST,
                    self.server_port,
                    self.server_user,
                    self._server_password,
                    client_id=username,
                )
        return removed

    def users(self) -> set[str]:
        return self.files.users()

    # ----------------------------------------------------------------- supervision

    def _supervise(self) -> None:
        backoff = 0.2
        first = True
        while not self._stopping.is_set():
            started = time.monotonic()
            proc = self._spawn()
            ready = proc is not None and self._wait_ready(proc)
            if first:
                first = False
                if not ready:
                    self._start_error = self._why_failed(proc, "did not start")
                self._first_attempt.set()
                if not ready:
                    return
            if proc is not None and ready:
                proc.wait()
            if self._stopping.is_set():
                return
            log.error("%s; restarting in %.1f s", self._why_failed(proc, "died"), backoff)
            # A broker that ran a good while gets a quick restart; a crash loop slows down.
            if time.monotonic() - started > 30:
                backoff = 0.2
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, self.max_backoff_s)
            self.restarts += 1

    def _spawn(self) -> subprocess.Popen[bytes] | None:
        with self._proc_lock:
            if self._stopping.is_set():
                return None
            self._last_output.clear()
            try:
                proc = subprocess.Popen(
                    [self._mosquitto, "-c", str(self.files.conf_file)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    # Its own session: a Ctrl-C meant for the server does not kill it
                    # mid-save; stop() ends it with SIGTERM, which saves its state.
                    start_new_session=True,
                )
            except OSError as e:
                self._last_output.append(f"cannot run {self._mosquitto}: {e.strerror or e}")
                return None
            self._proc = proc
            self.files.pid_file.write_text(f"{proc.pid}\n")
        assert proc.stdout is not None
        reader = threading.Thread(
            target=self._pump_output, args=(proc.stdout,), name="mosquitto-log", daemon=True
        )
        reader.start()
        return proc

    def _pump_output(self, stream: IO[bytes]) -> None:
        """Forward Mosquitto's log to Python logging; keep the last lines for error messages."""
        for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            if not line:
                continue
            if self.log.routine(line):
                continue
            self._last_output.append(line)
            lower = line.lower()
            if lower.startswith("error"):
                mosquitto_log.error("%s", line)
            elif lower.startswith("warning"):
                mosquitto_log.warning("%s", line)
            else:
                mosquitto_log.info("%s", line)
        stream.close()

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> bool:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline and not self._stopping.is_set():
            if proc.poll() is not None:
                return False
            try:
                for host, port in ((self.host, self.port), (SERVER_HOST, self.server_port)):
                    with socket.create_connection((host, port), timeout=0.5):
                        pass
                return True
            except OSError:
                time.sleep(0.02)
        return False

    def _why_failed(self, proc: subprocess.Popen[bytes] | None, what: str) -> str:
        if proc is None:
            status = "could not be run"
        elif proc.poll() is None:
            status = f"is not listening on {self.host}:{self.port} after {self.ready_timeout_s}s"
            proc.kill()
            proc.wait()
        elif proc.returncode < 0:
            status = f"was killed by {signal.Signals(-proc.returncode).name}"
        else:
            status = f"exited with status {proc.returncode}"
        time.sleep(0.05)  # let the log reader catch the last lines
        tail = " | ".join(list(self._last_output)[-5:]) or "no output"
        return f"mosquitto {what}: it {status} (last output: {tail})"


# --------------------------------------------------------------------- the broker's log

#: Mosquitto 2.0.11's lines for what a hostile or broken client does (connection_messages on).
#: The client id in a takeover line is the username on the terminals' listener.
_TAKEOVER = re.compile(r"^Client (\S+) already connected, closing old connection\.$")
_REFUSED = re.compile(r"^Client (\S+) disconnected, not authori[sz]ed\.$")
#: Lines of every connect and disconnect: thousands after a broker restart, worth nothing alone.
_ROUTINE = re.compile(
    r"^(New connection from |New client connected from |Client \S+ (disconnected\.|"
    r"closed its connection\.|has exceeded timeout|disconnected due to)|Socket error on client )"
)


class BrokerLog:
    """Counts security-relevant lines of Mosquitto's log and keeps routine ones out of ours.

    `on_event(kind)` is called for each: "takeover" (a second login with one terminal's
    credentials pushed the first off: a cloned or stolen identity, or a kiosk restarted before
    its old connection timed out), "login_refused" (wrong password, or terminal credentials on
    the server's listener). (A publish over `message_size_limit` is logged at debug level
    only, so it is not counted here; the terminal's agent counts it as rejected.) Each kind is
    logged at most once every `log_every_s` with the count since, so a flood of them
    cannot flood the log.
    """

    KINDS = ("takeover", "login_refused")

    def __init__(
        self, on_event: Callable[[str], None] | None = None, log_every_s: float = 10.0
    ) -> None:
        self.on_event = on_event
        self.log_every_s = log_every_s
        self.counts: collections.Counter[str] = collections.Counter()
        self._unlogged: collections.Counter[str] = collections.Counter()
        self._logged_at: dict[str, float] = {}

    def routine(self, line: str) -> bool:
        """True when `line` needs no log line of its own (counted here if it matters)."""
        for kind, pattern in (
            ("takeover", _TAKEOVER),
            ("login_refused", _REFUSED),
        ):
            found = pattern.match(line)
            if found:
                self._event(kind, found.group(1))
                return True
        return _ROUTINE.match(line) is not None

    def _event(self, kind: str, client: str) -> None:
        self.counts[kind] += 1
        if self.on_event is not None:
            self.on_event(kind)
        self._unlogged[kind] += 1
        now = time.monotonic()
        if now - self._logged_at.get(kind, -float("inf")) >= self.log_every_s:
            n = self._unlogged.pop(kind)
            self._logged_at[kind] = now
            log.warning("broker: %s by client %s (%d since the last such line)", kind, client, n)


# --------------------------------------------------------------------- helpers


def _stop_stale(files: BrokerFiles) -> None:
    """End a Mosquitto left running on our config by a server that died without stopping it."""
    pid = files.running_pid()
    if pid is None:
        return
    log.warning("stopping mosquitto pid %d left over from an earlier run", pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)  # SIGTERM: it saves its queued messages first
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not runs_config(pid, files.conf_file):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
