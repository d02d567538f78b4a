"""A real Mosquitto 2 broker on a free loopback port, with passwords and an ACL.

Set up as REAL-SERVICES.md found to work: per-listener settings off, no anonymous access, a
password file and ACL readable by the `mosquitto` user it drops to when started as root. The
per-client queue limits are raised so the tests' own subscribers never lose QoS 1 messages.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.services.ports import free_port, wait_listening

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"

#: The ACL of DESIGN.md: a terminal writes only its own topics and reads its desired and cmd.
TERMINAL_ACL = """\
user fleet-server
topic readwrite fleet/#
topic readwrite $share/#

pattern write fleet/v1/t/%u/presence
pattern write fleet/v1/t/%u/status
pattern write fleet/v1/t/%u/event
pattern write fleet/v1/t/%u/reported
pattern write fleet/v1/t/%u/cmd/result
pattern read fleet/v1/t/%u/desired
pattern read fleet/v1/t/%u/cmd
"""


def available() -> bool:
    return os.path.exists(MOSQUITTO) and os.path.exists(MOSQUITTO_PASSWD)


@dataclass
class Broker:
    """One broker process; `stop()` and `start()` again keep its port, users and data dir."""

    users: dict[str, str]
    acl: str = TERMINAL_ACL
    persistence: bool = False
    port: int = field(default_factory=free_port)
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mosq-")))
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        os.chmod(self.dir, 0o755)
        passwd = self.dir / "passwd"
        passwd.touch()
        for user, password in self.users.items():
            subprocess.run([MOSQUITTO_PASSWD, "-b", str(passwd), user, password], check=True)
        (self.dir / "acl").write_text(self.acl)
        lines = [
            "per_listener_settings false",
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous false",
            f"password_file {passwd}",
            f"acl_file {self.dir / 'acl'}",
            # Never drop QoS 1 messages to a slow test subscriber (default limit is 1000).
            "max_queued_messages 0",
            "max_inflight_messages 0",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.dir}/",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        (self.dir / "mosquitto.conf").write_text("\n".join(lines) + "\n")
        for f in self.dir.iterdir():
            os.chmod(f, 0o644)
        if os.geteuid() == 0:
            shutil.chown(self.dir, user="mosquitto")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Broker:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.dir / "mosquitto.conf")],
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "mosquitto.log", "ab"),  # noqa: SIM115 - kept for the process
            start_new_session=True,
        )
        wait_listening(self.port)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
