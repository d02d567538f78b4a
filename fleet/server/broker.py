"""The fleet server's own Mosquitto: generated config, users, ACL, and a supervisor to restart it.

Used when no broker URL is configured (one machine). Two listeners (`broker_config.render_config`):
the terminals' one (loopback by default), where each terminal's username is its id and also its
client id, under the ACL of `broker_config.render_acl`; and the server's own on loopback, where
only the server's user exists. The supervisor reads Mosquitto's log and counts what matters for
security (`BrokerLog`): session takeovers and refused logins.

Restarting keeps the port, the users and the persistence file, so terminals and the server's
persistent session reconnect to the same broker and find their queued messages.

A server that dies without stopping its broker (SIGKILL, OOM) leaves it running: it has its own
session, keeps every terminal connected and queues for the server's session. The next start
adopts it when it runs exactly the config that start would write (issue 13): stopping it would
disconnect every terminal, and Mosquitto 2.0.11 publishes every client's Last Will when it
stops, so each terminal would be called offline and alerted at once. An adopted broker is not
our child: it is watched by polling (`ADOPTED_POLL_S`), restarted like ours if it dies, and
stopped like ours. A changed config (a new release's listeners or limits) restarts it, and the
log says what changed. Its log goes to a named pipe in its folder (`BrokerFiles.log_fifo`),
which the adopting server opens again; while no server reads it Mosquitto's writes fail with
EPIPE, which it ignores (it ignores SIGPIPE), so those lines are lost and nothing else. A
broker started by an older release logged into an anonymous pipe that died with that server:
nothing of its log is read until it is next restarted.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import difflib
import logging
import os
import re
import shutil
import signal
import socket
import stat
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
from fleet.server.log_throttle import LogThrottle

__all__ = ["BROKER_SUBDIR", "BrokerError", "EmbeddedBroker", "free_port"]

log = logging.getLogger("fleet.broker")
SERVER_HOST = SERVER_BIND_ADDRESS
mosquitto_log = logging.getLogger("fleet.broker.mosquitto")
#: How often an adopted Mosquitto, which we cannot wait() for, is checked for life (s).
ADOPTED_POLL_S = 0.5


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """One supervised Mosquitto process with its files in `data_dir` (created if missing).

    `port` None reuses the port of an earlier run in the same folder (kiosk configs name it),
    else picks a free one.
    `start()` writes the config, ACL and the server's user, starts Mosquitto (or adopts the one
    an earlier run left running on the same config, see the module docstring), waits until it
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
        self._proc: subprocess.Popen[bytes] | _Adopted | None = None
        self._proc_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._last_output: collections.deque[str] = collections.deque(maxlen=20)
        self.log = BrokerLog(on_event)
        # Clients can make Mosquitto log (a flood of malformed CONNECTs): bounded here.
        self._log_lines = LogThrottle(mosquitto_log, max_lines=50)
        self._start_error: str | None = None
        #: How many times the supervisor has restarted Mosquitto after it died.
        self.restarts = 0
        #: Whether start() adopted a Mosquitto left running by an earlier run.
        self.adopted = False

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
        left = self.files.running_pid()  # one an earlier run of this folder left running
        if left is not None:
            # Stopped before the new config is written: the file must always be what it runs.
            left = self._keep_if_same_config(left)
        changed = self.files.prepare(
            port=self.port,
            bind_address=self.bind_address,
            server_port=self.server_port,
            server_user=self.server_user,
            server_password=self._server_password,
            limits=self.limits,
        )
        adopted = self._adopt(left, changed) if left is not None else None
        self.adopted = adopted is not None
        self._stopping.clear()
        self._first_attempt.clear()
        self._start_error = None
        self._thread = threading.Thread(
            target=self._supervise, args=(adopted,), name="mosquitto-supervisor"
        )
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
            "mosquitto listening on %s for terminals, %s for the server (pid %s%s, files in %s)",
            self.url,
            self.server_url,
            self.pid,
            ", adopted from an earlier run" if self.adopted else "",
            self.dir,
        )
        return self

    def _keep_if_same_config(self, pid: int) -> int | None:
        """`pid` if the Mosquitto an earlier run left running runs the config we would write;
        else stop it (it restarts with the new one), saying what changed, and None."""
        wanted = self.files.config_text(
            port=self.port,
            bind_address=self.bind_address,
            server_port=self.server_port,
            limits=self.limits,
        )
        try:
            running = self.files.conf_file.read_text("utf-8")
        except OSError as e:
            running = f"(unreadable: {e.strerror or e})"
        if running == wanted:
            return pid
        self._stop_left(pid, "its config changed: " + _diff(running, wanted))
        return None

    def _adopt(self, pid: int, changed: set[Path]) -> _Adopted | None:
        """Supervise the Mosquitto `pid` an earlier run left running on our config (see the
        module docstring), after it reloads the password files and ACLs that `changed`; if it
        does not answer, stop it (it restarts) and say why."""
        proc = _Adopted(pid, self.files.conf_file)
        if changed:
            # Rereads the password files and ACLs; only clients whose password changed or whose
            # user is gone are disconnected (REAL-SERVICES.md).
            proc.send_signal(signal.SIGHUP)
        # The server's login proves it answers and has (re)read the server's password.
        if self._answers(proc):
            log.info("adopting mosquitto pid %d left running by an earlier run", pid)
            return proc
        why = f"it does not answer the server's login within {self.ready_timeout_s:.0f} s"
        self._stop_left(pid, why)
        return None

    def _stop_left(self, pid: int, why: str) -> None:
        # SIGTERM makes it save its state, and also publish every client's Last Will.
        log.warning("restarting mosquitto pid %d left running by an earlier run: %s", pid, why)
        _stop_stale(self.files)

    def _answers(self, proc: _Adopted) -> bool:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError):
                if mqtt_login(
                    SERVER_HOST, self.server_port, self.server_user, self._server_password
                ):
                    with socket.create_connection((self.host, self.port), timeout=0.5):
                        return True
            time.sleep(0.05)
        return False

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

    def _supervise(self, adopted: _Adopted | None) -> None:
        backoff = 0.2
        first = True
        while not self._stopping.is_set():
            started = time.monotonic()
            proc: subprocess.Popen[bytes] | _Adopted | None
            if adopted is not None:
                proc, ready = adopted, True  # start() saw it answer
                self._follow(adopted)
                adopted = None
            else:
                proc = self._spawn()
                ready = proc is not None and self._wait_ready(proc)
            if first:
                first = False
                if not ready:
                    self._start_error = self._why_failed(proc, "did not start")
                self._first_attempt.set()
                if not ready:
                    return
            if isinstance(proc, _Adopted):
                while proc.poll() is None and not self._stopping.wait(ADOPTED_POLL_S):
                    pass
            elif proc is not None and ready:
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
            # Our end first: a FIFO opens for writing only once it has a reader.
            reader, writer = self._open_log(), None
            if reader is not None:
                try:
                    writer = os.open(self.files.log_fifo, os.O_WRONLY)
                except OSError:
                    reader.close()
                    reader = None
            try:
                proc = subprocess.Popen(
                    [self._mosquitto, "-c", str(self.files.conf_file)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE if writer is None else writer,
                    stderr=subprocess.STDOUT,
                    # Its own session: a Ctrl-C meant for the server does not kill it
                    # mid-save; stop() ends it with SIGTERM, which saves its state.
                    start_new_session=True,
                )
            except OSError as e:
                self._last_output.append(f"cannot run {self._mosquitto}: {e.strerror or e}")
                if reader is not None:
                    reader.close()
                return None
            finally:
                if writer is not None:
                    os.close(writer)  # Mosquitto holds it: end of file when it exits
            self._proc = proc
            self.files.pid_file.write_text(f"{proc.pid}\n")
        stream = reader or proc.stdout
        assert stream is not None
        threading.Thread(
            target=self._pump_output, args=(stream,), name="mosquitto-log", daemon=True
        ).start()
        return proc

    def _open_log(self) -> IO[bytes] | None:
        """Our (reading) end of the log FIFO, made if missing; None if this folder cannot hold
        one (a file system without FIFOs): then an anonymous pipe, as before."""
        fifo = self.files.log_fifo
        try:
            with contextlib.suppress(FileNotFoundError):
                if not stat.S_ISFIFO(fifo.lstat().st_mode):
                    fifo.unlink()
            if not fifo.exists():
                os.mkfifo(fifo, 0o600)
            # Without O_NONBLOCK, opening waits for a writer; reads then block again.
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as e:
            log.warning("no log FIFO at %s (%s); an anonymous pipe instead", fifo, e)
            return None
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")

    def _follow(self, adopted: _Adopted) -> None:
        """Read the log of an adopted broker; an older release's (no FIFO) gives end of file."""
        with self._proc_lock:
            self._proc = adopted
            self._last_output.clear()
            stream = self._open_log() if self.files.log_fifo.exists() else None
        if stream is not None:
            threading.Thread(
                target=self._pump_output, args=(stream,), name="mosquitto-log", daemon=True
            ).start()

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
                self._log_lines.log(logging.ERROR, "%s", line)
            elif lower.startswith("warning"):
                self._log_lines.log(logging.WARNING, "%s", line)
            else:
                self._log_lines.log(logging.INFO, "%s", line)
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

    def _why_failed(self, proc: subprocess.Popen[bytes] | _Adopted | None, what: str) -> str:
        if proc is None:
            status = "could not be run"
        elif isinstance(proc, _Adopted):
            status = f"(pid {proc.pid}, adopted: not our child) is gone, status unknown"
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
    logged at most once every `log_every_s`, then counted (LogThrottle), so a flood of them
    cannot flood the log.
    """

    KINDS = ("takeover", "login_refused")

    def __init__(
        self, on_event: Callable[[str], None] | None = None, log_every_s: float = 10.0
    ) -> None:
        self.on_event = on_event
        self.counts: collections.Counter[str] = collections.Counter()
        self._lines = {k: LogThrottle(log, max_lines=1, window_s=log_every_s) for k in self.KINDS}

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
        self._lines[kind].log(logging.WARNING, "broker: %s by client %s", kind, client)


# --------------------------------------------------------------------- helpers


class _Adopted:
    """A Mosquitto an earlier run of the server started, seen through the parts of Popen the
    supervisor uses. Not our child, so it cannot be waited for: alive means `runs_config` (a
    zombie or a reused pid is not it). Its exit status is unknown (reported as 0)."""

    def __init__(self, pid: int, conf_file: Path) -> None:
        self.pid = pid
        self._conf_file = conf_file
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not runs_config(self.pid, self._conf_file):
            self.returncode = 0
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"mosquitto pid {self.pid}", timeout or 0)
            time.sleep(0.05)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _diff(old: str, new: str) -> str:
    """The config lines that differ, for the log: "-old line; +new line"."""
    lines = difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=0)
    return "; ".join(
        line for line in lines if line[:1] in "+-" and not line.startswith(("+++", "---"))
    )


def _stop_stale(files: BrokerFiles) -> None:
    """End a Mosquitto left running on our config by a server that died without stopping it."""
    pid = files.running_pid()
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)  # SIGTERM: it saves its queued messages first
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not runs_config(pid, files.conf_file):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
