"""The embedded broker's folder: config, ACL, password file, pid file, and live user changes.

Shared by the supervisor (`broker.EmbeddedBroker`) and by commands run beside a running server
(`fleet terminals add`): both change users the same way, and a broker that is running (named by
the pid file) rereads its password file before the change returns.

Facts this relies on (Mosquitto 2.0.11, checked by tests/server/test_broker.py):
- Started as root it drops to the `mosquitto` user, so the folder must be reachable and the
  password file and ACL readable by that user; the persistence folder must be writable by it.
- SIGHUP rereads the password file and ACL, and re-authenticates every connected client against
  them: a client whose user was removed or whose password changed is disconnected; the others
  (the server's ingest among them) stay connected. (mosquitto.conf(5) still says connected
  clients are unaffected; 2.0.11 does disconnect them.)
- The reload happens in Mosquitto's main loop some time after the signal, so a change waits for
  a probe login with a password written in that same change to succeed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import hmac
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from fleet.server.broker_config import (
    Listener,
    QueueLimits,
    render_acl,
    render_config,
    render_server_acl,
)

#: The embedded broker's folder inside the server's data dir: `fleet serve` and
#: `fleet terminals add` must agree on it.
BROKER_SUBDIR = "mosquitto"
#: Usernames the password file can hold: no ':' (its field separator), no whitespace.
USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")
#: A user that exists only to tell when a reload has happened. Its name is not a valid terminal
#: id (leading underscore), and its password never leaves this process.
PROBE_USER = "_fleet-reload-probe"
#: The server's own listener is for processes on this machine only.
SERVER_BIND_ADDRESS = "127.0.0.1"


class BrokerError(RuntimeError):
    """The embedded broker cannot be set up, started or changed; the message says why."""


class BrokerFiles:
    """The files of one embedded broker in `directory`."""

    def __init__(self, directory: str | Path, *, mosquitto_passwd: str | None = None) -> None:
        self.dir = Path(directory).absolute()
        self.conf_file = self.dir / "mosquitto.conf"
        #: The terminals' listener: one user per terminal (and the reload probe).
        self.passwd_file = self.dir / "passwd"
        self.acl_file = self.dir / "acl"
        #: The server's listener: the server's user alone.
        self.server_passwd_file = self.dir / "server-passwd"
        self.server_acl_file = self.dir / "server-acl"
        self.db_dir = self.dir / "db"
        self.pid_file = self.dir / "mosquitto.pid"
        #: A named pipe Mosquitto logs into, so a server started after one that was killed can
        #: read the log of the broker it adopts (an anonymous pipe dies with its reader).
        self.log_fifo = self.dir / "log.fifo"
        self._lock_file = self.dir / ".users.lock"
        self._mosquitto_passwd = (
            mosquitto_passwd or shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
        )
        #: When we are root Mosquitto runs as this uid/gid (it drops privileges itself).
        self.run_as = broker_identity()
        self.reload_timeout_s = 10.0

    # ------------------------------------------------------------- writing the folder

    def prepare(
        self,
        *,
        port: int,
        bind_address: str,
        server_port: int,
        server_user: str,
        server_password: str,
        limits: QueueLimits,
    ) -> set[Path]:
        """Write config and ACLs, and (re)set the server's user; terminal users are kept.

        Returns the files whose content changed. A file whose content is already right is not
        rewritten, and the server's password is kept when it already matches (mosquitto_passwd
        salts afresh each time), so a broker left running by an earlier run (which the server
        adopts) sees no change it would have to reload.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db_dir.mkdir(exist_ok=True)
        uid, gid = self.run_as
        # The folder and its readable files are ours with the broker's group: it reads, we write.
        self._own(self.dir, 0o750)
        if uid is not None:
            # Persistence writes mosquitto.db.new and renames it: the broker owns this folder.
            os.chown(self.db_dir, uid, gid if gid is not None else -1)
        os.chmod(self.db_dir, 0o700)
        check_reachable(self.dir, uid, gid)
        conf = self.config_text(
            port=port, bind_address=bind_address, server_port=server_port, limits=limits
        )
        changed = {
            path
            for path, text in (
                (self.conf_file, conf),
                (self.acl_file, render_acl()),
                (self.server_acl_file, render_server_acl(server_user)),
            )
            if self._write(path, text)
        }
        with self._locked():
            if not self.passwd_file.exists():
                self._write(self.passwd_file, "")
            # Before the two listeners, the server's user was in the terminals' file: not there.
            if server_user in self.users():
                self._edit_passwd([], [server_user])
                changed.add(self.passwd_file)
            if not self.server_passwd_file.exists():
                self._write(self.server_passwd_file, "")
            if not password_matches(self.server_passwd_file, server_user, server_password):
                self._edit_passwd([(server_user, server_password)], [], self.server_passwd_file)
                changed.add(self.server_passwd_file)
        return changed

    def config_text(
        self, *, port: int, bind_address: str, server_port: int, limits: QueueLimits
    ) -> str:
        """The mosquitto.conf `prepare` writes for these settings."""
        return render_config(
            terminals=Listener(port, bind_address, self.passwd_file, self.acl_file),
            server=Listener(
                server_port, SERVER_BIND_ADDRESS, self.server_passwd_file, self.server_acl_file
            ),
            persistence_dir=self.db_dir,
            limits=limits,
        )

    def _own(self, path: Path, mode: int) -> None:
        """`mode` on `path`, group-owned by the broker's group when it runs as another user."""
        _, gid = self.run_as
        if gid is not None:
            os.chown(path, -1, gid)
        os.chmod(path, mode)

    def _write(self, path: Path, text: str) -> bool:
        """Replace `path` with `text` (atomically) unless it holds it already; True if changed."""
        data = text.encode()
        with contextlib.suppress(FileNotFoundError):
            if path.read_bytes() == data:
                self._own(path, 0o640)
                return False
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        self._own(tmp, 0o640)
        os.replace(tmp, path)
        return True

    # ------------------------------------------------------------- users

    def users(self) -> set[str]:
        """The usernames in the password file (the probe user left out)."""
        try:
            text = self.passwd_file.read_text("utf-8")
        except FileNotFoundError:
            return set()
        names = {line.split(":", 1)[0] for line in text.splitlines() if ":" in line}
        return names - {PROBE_USER}

    def add_user(self, username: str, password: str) -> None:
        """Add a user or change its password; a running broker accepts it when this returns."""
        check_username(username)
        if username == PROBE_USER:
            raise BrokerError(f"{username!r} is reserved")
        check_password(password)
        if not self.passwd_file.exists():
            raise BrokerError(f"no broker password file at {self.passwd_file}")
        with self._locked():
            self._change_and_reload([(username, password)], [])

    def remove_user(self, username: str) -> bool:
        """Remove a user (False if there was none); a running broker forgets it on return."""
        check_username(username)
        with self._locked():
            if username not in self.users():
                return False
            self._change_and_reload([], [username])
        return True

    def _change_and_reload(self, upserts: list[tuple[str, str]], removals: list[str]) -> None:
        # A fresh probe password in the same file: once the broker accepts it, the whole
        # file is live.
        probe = secrets.token_urlsafe(18)
        self._edit_passwd([*upserts, (PROBE_USER, probe)], removals)
        pid = self.running_pid()
        if pid is None:
            return  # the broker reads the file when it next starts
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGHUP)
        host, port = self.listener()
        deadline = time.monotonic() + self.reload_timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if mqtt_login(host, port, PROBE_USER, probe):
                    return
            if self.running_pid() is None:
                return  # it died meanwhile; its supervisor restarts it with the new file
            time.sleep(0.01)
        raise BrokerError(f"mosquitto did not reload its password file in {self.reload_timeout_s}s")

    def _edit_passwd(
        self, upserts: list[tuple[str, str]], removals: list[str], path: Path | None = None
    ) -> None:
        """Change a copy of `path` (default: the terminals' file) with mosquitto_passwd, then
        rename it over the file.

        The broker may reread the file at any moment (a SIGHUP of ours, or an operator's), so it
        must never see it half rewritten, which mosquitto_passwd editing in place could show.
        """
        target = path or self.passwd_file
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(target, tmp)
        try:
            for username, password in upserts:
                # The password goes through stdin (asked twice), not argv: with `-b` every
                # local user could read it in the process list.
                self._run_passwd([str(tmp), username], f"{password}\n{password}\n")
            for username in removals:
                self._run_passwd(["-D", str(tmp), username], "")
            self._own(tmp, 0o640)
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _run_passwd(self, args: list[str], stdin: str) -> None:
        try:
            done = subprocess.run(
                [self._mosquitto_passwd, *args],
                input=stdin.encode(),
                capture_output=True,
                timeout=30,
                start_new_session=True,  # no controlling tty: it reads the password from stdin
            )
        except FileNotFoundError:
            raise BrokerError(
                f"{self._mosquitto_passwd} not found (apt-get install mosquitto)"
            ) from None
        if done.returncode != 0:
            why = (done.stderr or done.stdout).decode(errors="replace").strip()
            raise BrokerError(f"mosquitto_passwd failed: {why}")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One user change at a time, across processes (the server and `fleet terminals add`)."""
        with open(self._lock_file, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # ------------------------------------------------------------- the running broker

    def running_pid(self) -> int | None:
        """The pid of a Mosquitto running this folder's config, from the pid file."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if runs_config(pid, self.conf_file) else None

    def listener(self) -> tuple[str, int]:
        """(host, port) of the terminals' listener (the first), as a client reaches it."""
        return self._listeners()[0]

    def server_listener(self) -> tuple[str, int]:
        """(host, port) of the server's own listener (the second)."""
        found = self._listeners()
        if len(found) < 2:
            raise BrokerError(f"{self.conf_file} has no server listener (an older server's?)")
        return found[1]

    def _listeners(self) -> list[tuple[str, int]]:
        try:
            text = self.conf_file.read_text("utf-8")
        except OSError as e:
            raise BrokerError(f"cannot read {self.conf_file}: {e.strerror or e}") from None
        found = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "listener":
                address = parts[2] if len(parts) > 2 else "127.0.0.1"
                found.append((("127.0.0.1" if address == "0.0.0.0" else address), int(parts[1])))
        if not found:
            raise BrokerError(f"{self.conf_file} has no listener line")
        return found


# --------------------------------------------------------------------- helpers


def mqtt_login(
    host: str, port: int, username: str, password: str, *, client_id: str = "", timeout: float = 2
) -> bool:
    """One MQTT 3.1.1 CONNECT with clean session; True if the broker accepts the login.

    Small enough to write by hand, and it keeps the broker code free of a client library's
    threads. An accepted connection ends with DISCONNECT: no session, no Last Will left behind.
    """

    def field(s: str) -> bytes:
        data = s.encode()
        return struct.pack("!H", len(data)) + data

    flags = 0x80 | 0x40 | 0x02  # username, password, clean session
    body = field("MQTT") + bytes([4, flags]) + struct.pack("!H", 10)
    body += field(client_id) + field(username) + field(password)
    packet = bytes([0x10]) + _remaining_length(len(body)) + body
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(packet)
        connack = b""
        while len(connack) < 4:
            chunk = s.recv(4 - len(connack))
            if not chunk:
                return False  # closed without a CONNACK
            connack += chunk
        accepted = connack[0] == 0x20 and connack[3] == 0
        if accepted:
            with contextlib.suppress(OSError):
                s.sendall(b"\xe0\x00")  # DISCONNECT
        return accepted


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def password_matches(path: Path, username: str, password: str) -> bool:
    """Whether the password file `path` holds `username` with `password`.

    Reads Mosquitto 2's own hash (`$7$ITERATIONS$SALT$HASH`: PBKDF2-HMAC-SHA512, base64); any
    other form, or no such user, is a mismatch (the caller then writes a fresh entry).
    """
    try:
        lines = path.read_text("utf-8").splitlines()
    except OSError:
        return False
    for line in lines:
        name, _, hashed = line.partition(":")
        if name != username:
            continue
        parts = hashed.split("$")  # "", "7", iterations, salt, hash
        if len(parts) != 5 or parts[1] != "7" or not parts[2].isdigit():
            return False
        try:
            salt, digest = base64.b64decode(parts[3]), base64.b64decode(parts[4])
        except binascii.Error:
            return False
        mine = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2]))
        return hmac.compare_digest(mine, digest)
    return False


def check_username(username: str) -> None:
    if not USERNAME.fullmatch(username):
        raise BrokerError(f"MQTT username {username!r} does not match {USERNAME.pattern}")


def check_password(password: str) -> None:
    if not password or any(c in password for c in "\r\n\0") or len(password) > 256:
        raise BrokerError("an MQTT password must be 1-256 characters without line breaks")


def broker_identity() -> tuple[int | None, int | None]:
    """The uid and gid Mosquitto drops to when started by root; (None, None) otherwise."""
    if os.geteuid() != 0:
        return None, None
    for name in ("mosquitto", "nobody"):  # Mosquitto's own fallback order
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return entry.pw_uid, entry.pw_gid
    raise BrokerError("running as root but there is no `mosquitto` user for the broker")


def check_reachable(path: Path, uid: int | None, gid: int | None) -> None:
    """Refuse a folder the broker's user cannot reach, with a message naming the closed folder.

    Otherwise Mosquitto starts as root, drops privileges and fails on the password file without
    saying which parent folder is closed (pytest's 0700 temporary folders, say).
    """
    if uid is None:
        return
    for folder in [path, *path.parents]:
        st = folder.stat()
        if st.st_uid == uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid == gid:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            raise BrokerError(
                f"the broker runs as uid {uid} and cannot enter {folder} "
                f"(mode {stat.filemode(st.st_mode)}); choose a data dir it can reach"
            )


def runs_config(pid: int, conf_file: Path) -> bool:
    """Whether process `pid` is alive and was started with `conf_file` (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(conf_file).encode() in cmdline
