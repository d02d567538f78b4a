"""A private pcscd with vpcd virtual readers, and the vicc card emulator, for the PC/SC tests.

What was found on this machine (pcsc-lite 1.9.9, vsmartcard 0.8; see REAL-SERVICES.md):
- pcscd's socket path is compiled in (/run/pcscd/pcscd.comm), but pcscd takes a listening socket
  from systemd socket activation (fd 3 with LISTEN_FDS=1 and LISTEN_PID=its pid). The helper binds
  a socket in a temp dir and hands it over, so every test run gets its own pcscd and never touches
  a system one. The client library finds it through PCSCLITE_CSOCK_NAME, which libpcsclite reads
  once per process: the path is fixed per process (`socket_path()`), and the Pcscd instances of one
  process take turns on it.
- Still shared between instances: /run/pcscd/pcscd.pid, which pcscd writes (and removes on exit)
  even when socket-activated. Socket-activated instances skip the check that reads it.
- A pcscd that is stopped (SIGSTOP) still gets connections queued by the kernel and never answers:
  `SCardEstablishContext` then blocks without a timeout. That is how the tests hang pcscd.
- vpcd opens two readers per config line, "Virtual PCD 00 00" on PORT and "Virtual PCD 00 01" on
  PORT+1, listening on 0.0.0.0; a `DEVICENAME /dev/null:PORT` line in `pcscd -c DIR` moves them.
  Never probe those ports with a bare connect: vpcd would take it for a card.
- Debian's /usr/bin/vicc cannot find its module: run it with PYTHONPATH=.../virtualsmartcard and a
  Python that has pycryptodome (the test venv's). It exits at once if vpcd is not listening.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.services.ports import free_port

PCSCD = shutil.which("pcscd") or "/usr/sbin/pcscd"
VPCD_DRIVER = "/usr/lib/pcsc/drivers/serial/libifdvpcd.so"
VICC = shutil.which("vicc") or "/usr/bin/vicc"
VICC_MODULES = "/usr/lib/python3/site-packages/virtualsmartcard"
READERS = ("Virtual PCD 00 00", "Virtual PCD 00 01")


_socket_dir: Path | None = None


def unavailable() -> str | None:
    """Why the real PC/SC stack cannot run here, or None when it can."""
    for path in (PCSCD, VPCD_DRIVER, VICC, VICC_MODULES):
        if not os.path.exists(path):
            return f"{path} is missing (apt-get install pcscd vsmartcard-vpcd vsmartcard-vpicc)"
    for module in ("smartcard", "Crypto"):
        if importlib.util.find_spec(module) is None:
            return f"Python module {module} is missing (pip install pyscard pycryptodome)"
    if os.geteuid() != 0 and not os.access("/run/pcscd", os.W_OK):
        return "pcscd needs to write /run/pcscd (its pid file): run as root"
    return None


def socket_path() -> Path:
    """This process's pcscd socket; sets PCSCLITE_CSOCK_NAME before libpcsclite first reads it."""
    global _socket_dir
    if _socket_dir is None:
        _socket_dir = Path(tempfile.mkdtemp(prefix="pcscd-sock-"))
        atexit.register(shutil.rmtree, _socket_dir, True)
        os.environ["PCSCLITE_CSOCK_NAME"] = str(_socket_dir / "pcscd.comm")
    return _socket_dir / "pcscd.comm"


def free_port_pair() -> int:
    """A port P with P and P+1 free on every address (vpcd binds 0.0.0.0)."""
    for _ in range(50):
        port = free_port()
        if port < 65535 and _bindable(port) and _bindable(port + 1):
            return port
    raise RuntimeError("no two consecutive free ports")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


@dataclass
class Pcscd:
    """One pcscd; `readers=False` runs it with no reader at all (a reader unplugged)."""

    readers: bool = True
    port: int = field(default_factory=free_port_pair)
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pcscd-")))
    proc: subprocess.Popen[bytes] | None = None
    viccs: list[Vicc] = field(default_factory=list)

    def __post_init__(self) -> None:
        conf = self.dir / "reader.conf.d"
        conf.mkdir(exist_ok=True)
        if self.readers:
            (conf / "vpcd").write_text(
                'FRIENDLYNAME "Virtual PCD"\n'
                f"DEVICENAME /dev/null:{self.port}\n"
                f"LIBPATH {VPCD_DRIVER}\n"
            )

    @property
    def reader_names(self) -> tuple[str, ...]:
        return READERS if self.readers else ()

    def start(self) -> Pcscd:
        listener = _listen(socket_path())
        try:
            self.proc = subprocess.Popen(
                [
                    "bash",
                    "-c",
                    _activation(listener.fileno()),
                    PCSCD,
                    str(self.dir / "reader.conf.d"),
                ],
                pass_fds=(listener.fileno(),),
                stdout=open(self.dir / "pcscd.log", "ab"),  # noqa: SIM115 - kept for the process
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            # pcscd alone holds the socket: once it dies, clients get "no service", not a hang.
            listener.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout_s: float = 10.0) -> None:
        from smartcard import scard

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"pcscd exited: {self.log()[-2000:]}")
            hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
            if hr == scard.SCARD_S_SUCCESS:
                _, names = scard.SCardListReaders(ctx, [])
                scard.SCardReleaseContext(ctx)
                if set(self.reader_names) <= set(names or []):
                    return
            time.sleep(0.02)
        raise TimeoutError(f"pcscd readers not up after {timeout_s}s: {self.log()[-2000:]}")

    def log(self) -> str:
        return (self.dir / "pcscd.log").read_text(errors="replace")

    def freeze(self) -> None:
        """SIGSTOP: pcscd keeps its socket but answers nothing, like a wedged daemon."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.send_signal(signal.SIGCONT)  # a frozen pcscd handles SIGTERM once continued
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        socket_path().unlink(missing_ok=True)

    def vicc(self, reader_index: int = 0) -> Vicc:
        """A card emulator for reader `READERS[reader_index]` (not started), stopped by close()."""
        vicc = Vicc(port=self.port + reader_index, log=self.dir / f"vicc-{reader_index}.log")
        self.viccs.append(vicc)
        return vicc

    def close(self) -> None:
        for vicc in self.viccs:
            vicc.stop()
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _activation(fd: int) -> str:
    """A bash line that execs pcscd ("$0") socket-activated by `fd`, config dir "$1".

    pcscd takes the socket as fd 3 and checks LISTEN_PID against its own pid, which `exec` keeps.
    bash, not sh: dash redirects only fds 0-9. Moving fd 3 onto itself and closing it would lose it.
    """
    move = "" if fd == 3 else f" 3<&{fd} {fd}<&-"
    return f'LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" -f -c "$1"{move}'


def _listen(path: Path) -> socket.socket:
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(64)
    return listener


@dataclass
class Vicc:
    """vicc's ISO 7816 card, inserted into the vpcd reader on `port` while it runs."""

    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Vicc:
        # vicc's own module path, run by this (the venv's) Python, which has pycryptodome.
        env = {**os.environ, "PYTHONPATH": VICC_MODULES}
        cmd = [sys.executable, VICC, "-t", "iso7816", "-H", "127.0.0.1", "-P", str(self.port)]
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "ab"),  # noqa: SIM115 - kept for the process
            start_new_session=True,
        )
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
