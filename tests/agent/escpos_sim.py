"""An ESC/POS receipt printer's real-time status, simulated from Epson's DLE EOT specification.

It answers DLE EOT n (0x10 0x04 n, n = 1..4) with one status byte built from a settable state, over
TCP on a loopback port (`TcpPrinterSim`) or over a pseudo-terminal pair (`SerialPrinterSim`) whose
slave side is a real tty device that pyserial opens. Every other byte is ignored, as a printer
prints it. The status bytes follow the spec's tables, not the driver: fixed bits 1 and 4 on and 0
and 7 off; n=1 bit 3 offline; n=2 bit 2 cover open, bit 3 feed button, bit 5 paper-end stop, bit 6
error; n=3 bit 3 autocutter, bit 5 unrecoverable, bit 6 auto-recoverable error; n=4 bits 2-3 near
end, bits 5-6 end (the near-end sensor also sees no paper once the roll has ended).

Behaviours a test can switch on: `silent` (reads, never answers), `garbage` (answers bytes that
break the fixed bits), `close` (drops the connection on a request; a serial line cannot be
dropped, so there it is silent), `answer_limit` (answers that many requests per connection, the
serial line being one, then the `after_limit` behaviour), `extra` (each answer followed by a stray
byte that looks like a status byte, to prove the driver drains before asking).
"""

from __future__ import annotations

import os
import select
import socket
import threading
import tty
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Paper = Literal["ok", "near_end", "end"]
Mode = Literal["normal", "silent", "garbage", "close"]

FIXED = 0x12  # bits 1 and 4 on
GARBAGE = 0xFF  # bits 0 and 7 on: no status byte looks like this
STRAY = FIXED | 0x04 | 0x08 | 0x20 | 0x40  # would read as cover open + everything if not drained


@dataclass
class SimState:
    paper: Paper = "ok"
    cover_open: bool = False
    feed_button: bool = False
    cutter_error: bool = False
    unrecoverable_error: bool = False
    auto_recoverable_error: bool = False
    #: ESC c 4 can make the near-end sensor stop printing too; then n=2 bit 5 sets at near end.
    stop_at_near_end: bool = False
    #: Forced offline with no cause in n=2/n=3 (e.g. "waiting for online recovery").
    waiting_online_recovery: bool = False

    def error(self) -> bool:
        return self.cutter_error or self.unrecoverable_error or self.auto_recoverable_error

    def paper_end_stop(self) -> bool:
        return self.paper == "end" or (self.stop_at_near_end and self.paper == "near_end")

    def offline(self) -> bool:
        return (
            self.cover_open
            or self.feed_button
            or self.paper_end_stop()
            or self.error()
            or self.waiting_online_recovery
        )

    def status_byte(self, n: int) -> int:
        """The answer to DLE EOT n, per the Epson tables."""
        bits = {1: self._printer, 2: self._offline_cause, 3: self._error_cause, 4: self._paper}
        return FIXED | bits[n]()

    def _printer(self) -> int:
        return (0x08 if self.offline() else 0) | (0x20 if self.waiting_online_recovery else 0)

    def _offline_cause(self) -> int:
        return (
            (0x04 if self.cover_open else 0)
            | (0x08 if self.feed_button else 0)
            | (0x20 if self.paper_end_stop() else 0)
            | (0x40 if self.error() else 0)
        )

    def _error_cause(self) -> int:
        return (
            (0x08 if self.cutter_error else 0)
            | (0x20 if self.unrecoverable_error else 0)
            | (0x40 if self.auto_recoverable_error else 0)
        )

    def _paper(self) -> int:
        return {"ok": 0x00, "near_end": 0x0C, "end": 0x0C | 0x60}[self.paper]


@dataclass
class Behaviour:
    mode: Mode = "normal"
    answer_limit: int | None = None
    after_limit: Mode = "silent"
    extra: bool = False


@dataclass
class _Session:
    """What one connection has seen: the request parser's buffer and the answers given."""

    buffer: bytearray = field(default_factory=bytearray)
    answered: int = 0


class _Sim:
    """The protocol half shared by both transports."""

    def __init__(self) -> None:
        self.state = SimState()
        self.behaviour = Behaviour()
        self.requests: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def _replies(self, session: _Session, data: bytes) -> bytes | None:
        """Bytes to send back for `data`; None means drop the connection."""
        session.buffer += data
        out = bytearray()
        while (i := session.buffer.find(b"\x10\x04")) >= 0 and len(session.buffer) > i + 2:
            n = session.buffer[i + 2]
            del session.buffer[: i + 3]
            if n not in (1, 2, 3, 4):
                continue
            with self._lock:
                self.requests.append(n)
                reply = self._answer(session, n)
            if reply is None:
                return None
            out += reply
        del session.buffer[: max(0, len(session.buffer) - 2)]  # keep a possible split request
        return bytes(out)

    def _answer(self, session: _Session, n: int) -> bytes | None:
        b = self.behaviour
        limited = b.answer_limit is not None and session.answered >= b.answer_limit
        mode = b.after_limit if limited else b.mode
        if mode == "close":
            return None
        if mode == "silent":
            return b""
        session.answered += 1
        answer = GARBAGE if mode == "garbage" else self.state.status_byte(n)
        return bytes([answer, STRAY]) if b.extra else bytes([answer])

    def stop(self) -> None:
        self._stop.set()


class TcpPrinterSim(_Sim):
    """A printer's port 9100 on 127.0.0.1 (an OS-chosen port, so parallel runs never collide)."""

    def __init__(self) -> None:
        super().__init__()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self.address = f"tcp://127.0.0.1:{self.port}"
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept_loop)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            if not select.select([self._server], [], [], 0.05)[0]:
                continue
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        session = _Session()
        with conn:
            while not self._stop.is_set():
                if not select.select([conn], [], [], 0.05)[0]:
                    continue
                try:
                    data = conn.recv(256)
                except OSError:
                    return
                reply = self._replies(session, data) if data else None
                if reply is None:
                    return
                conn.sendall(reply)

    def close(self) -> None:
        """The printer is gone: nothing listens on its port any more."""
        self.stop()
        for t in self._threads:
            t.join(timeout=2)
        self._server.close()


class SerialPrinterSim(_Sim):
    """A printer on a serial line: the driver opens `device`, the pty's slave side."""

    def __init__(self) -> None:
        super().__init__()
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo or line editing before pyserial sets its own modes
        self.device = os.ttyname(self._slave)
        self._session = _Session()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not select.select([self._master], [], [], 0.05)[0]:
                continue
            try:
                data = os.read(self._master, 256)
            except OSError:
                return
            reply = self._replies(self._session, data)
            if reply:
                os.write(self._master, reply)

    def close(self) -> None:
        """Unplugged: the tty device disappears."""
        if self._stop.is_set():
            return
        self.stop()
        self._thread.join(timeout=2)
        os.close(self._master)
        os.close(self._slave)
