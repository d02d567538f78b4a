"""A real IPP Everywhere printer: CUPS's `ippeveprinter` on a free loopback port.

Started as REAL-SERVICES.md found to work: a private D-Bus (it wants a system bus even with
`-r off`), `-n localhost` (127.0.0.1 fails on its IPv6 listener), and a print command so jobs
finish at once instead of sleeping 5-15 s. The command also lets a test make the printer change
its state: lines queued with `next_job_says()` are written to its stderr when the next job runs,
and ippeveprinter applies `STATE: +media-jam` / `ATTR: marker-levels=42` lines it reads there.
Paper and toner are set through its /media and /supplies web forms, always with every parameter
(a missing one counts as 0, and a partial supplies form breaks that form until a restart).
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.services.ports import free_port, wait_listening

IPPEVEPRINTER = shutil.which("ippeveprinter") or "/usr/sbin/ippeveprinter"
DBUS_DAEMON = shutil.which("dbus-daemon") or "/usr/bin/dbus-daemon"

#: The print command: says what the test queued for this job on stderr, then forgets it.
PRINT_COMMAND = """\
#!/bin/sh
said="$(dirname "$0")/next-job-says"
if [ -f "$said" ]; then
    cat "$said" >&2
    rm -f "$said"
fi
exit 0
"""


def available() -> bool:
    return os.access(IPPEVEPRINTER, os.X_OK) and os.access(DBUS_DAEMON, os.X_OK)


def _wait_for_path(path: Path, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout_s}s")
        time.sleep(0.01)


def _stop(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class IppEvePrinter:
    """One printer and its private bus; `spool` keeps every job's file (`-k`)."""

    name: str = "kiosk-printer"
    port: int = field(default_factory=free_port)
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ippeve-")))
    printer: subprocess.Popen[bytes] | None = None
    bus: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"ipp://localhost:{self.port}/ipp/print"

    @property
    def spool(self) -> Path:
        return self.dir / "spool"

    @property
    def log(self) -> Path:
        return self.dir / "ippeveprinter.log"

    def start(self) -> IppEvePrinter:
        self.spool.mkdir(exist_ok=True)
        command = self.dir / "print-command"
        command.write_text(PRINT_COMMAND)
        command.chmod(0o755)
        bus_socket = self.dir / "bus.sock"
        self.bus = self._spawn(
            [DBUS_DAEMON, "--session", f"--address=unix:path={bus_socket}", "--nofork",
             "--nopidfile"],
            self.dir / "dbus.log",
        )  # fmt: skip
        _wait_for_path(bus_socket)
        self.printer = self._spawn(
            [IPPEVEPRINTER, "-r", "off", "-n", "localhost", "-p", str(self.port), "-k",
             "-d", str(self.spool), "-c", str(command), "-f", "application/pdf", self.name],
            self.log,
            DBUS_SYSTEM_BUS_ADDRESS=f"unix:path={bus_socket}",
        )  # fmt: skip
        self._wait_ready()
        return self

    def _wait_ready(self, timeout_s: float = 10.0) -> None:
        """Listening, or a clear error with its log if it exited (port taken, no D-Bus...)."""
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.printer is not None
            if self.printer.poll() is not None:
                log = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"ippeveprinter exited with {self.printer.returncode}:\n{log}")
            try:
                wait_listening(self.port, timeout_s=0.05)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise

    def _spawn(self, argv: list[str], log: Path, **env: str) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            return subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                start_new_session=True,
            )

    def kill(self) -> None:
        """The printer vanishes at once (power cut), its bus stays."""
        _stop(self.printer, signal.SIGKILL)
        self.printer = None

    def close(self) -> None:
        _stop(self.printer, signal.SIGTERM)
        _stop(self.bus, signal.SIGTERM)
        self.printer = self.bus = None
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- what a technician or the hardware would change ------------------------------------

    def set_paper(self, main: int, bypass: int = -2) -> None:
        """Sheets in the main tray (of 250) and the by-pass tray (of 25); -2 is unknown.

        ippeveprinter: 0 sheets -> media-empty, 1-24 -> media-low, in any tray.
        """
        self._form(
            "/media",
            size1="na_letter_8.5x11in",
            type1="stationery",
            level1=main,
            size3="na_number-10_4.125x9.5in",
            type3="envelope",
            level3=bypass,
        )

    def set_supplies(self, toner: int, waste: int = 25) -> None:
        """Black toner percent (below 10 -> toner-low, 0 -> toner-empty) and the waste tank."""
        self._form("/supplies", supply0=waste, supply1=toner)

    def next_job_says(self, *lines: str) -> None:
        """Lines the print command writes to stderr when the next job runs (STATE:, ATTR:)."""
        tmp = self.dir / "next-job-says.tmp"
        tmp.write_text("".join(line + "\n" for line in lines))
        tmp.rename(self.dir / "next-job-says")

    def _form(self, path: str, **params: str | int) -> None:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        conn = http.client.HTTPConnection("localhost", self.port, timeout=5)
        try:
            conn.request("GET", f"{path}?{query}")
            resp = conn.getresponse()
            body = resp.read().decode("utf-8", "replace")
        finally:
            conn.close()
        if resp.status != 200 or "Error:" in body:
            error = body[body.find("Error:") :][:300]
            raise RuntimeError(f"ippeveprinter refused {path}?{query}: HTTP {resp.status} {error}")
