"""PC/SC card reader through pcscd, with pyscard's low-level `smartcard.scard` API.

Each read opens a PC/SC context, lists the readers, asks for the chosen reader's state with a zero
timeout and releases the context. Nothing is held between reads, so a restarted pcscd needs no
reconnect logic.

pyscard calls block inside libpcsclite: a stopped or wedged pcscd accepts the connection and never
answers, and `SCardEstablishContext` then waits forever. So each read runs in a daemon thread that
the caller waits on for at most `timeout_s`. A worker that outlives it is abandoned; no new worker
starts until it returns, so a hung pcscd costs one thread, not one per read. (Not an executor: its
threads are joined at interpreter exit, and a hung one would then hang the agent's shutdown.)

What `read()` returns or raises:
- state "ok": the reader is there; `card_present` says whether a card is in it (a card that does not
  answer, "mute", is still present: the reader works, the card does not, and `detail` says so).
- state "no_reader": pcscd answers but no reader matches: unplugged, never attached, or the name
  filter matches none (`detail` lists the readers pcscd has).
- state "error": pcscd has the reader but marks it unavailable (its driver lost it).
- `DriverError`: the PC/SC stack itself cannot be read: pcscd not running, not answering within
  `timeout_s`, or failing a call. This is the Reader protocol's contract; the agent reports it as
  the reader being offline.

One caller at a time: the agent's status loop, not several threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from agent.drivers.base import DriverError, ReaderStatus

NAME = "pcsc"

# Reader state flags of SCardGetStatusChange: fixed by the PC/SC API (winscard.h), so the mapping
# can be tested without pyscard; tests/agent/test_pcsc_driver.py checks them against pyscard's.
STATE_UNAWARE = 0x0000
STATE_IGNORE = 0x0001
STATE_UNKNOWN = 0x0004
STATE_UNAVAILABLE = 0x0008
STATE_EMPTY = 0x0010
STATE_PRESENT = 0x0020
STATE_MUTE = 0x0200

T = TypeVar("T")


class PcscReader:
    """A reader known to pcscd; `reader` is a substring of its name, None picks the first."""

    name = NAME

    def __init__(self, reader: str | None = None, timeout_s: float = 3.0) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.reader = reader
        self.timeout_s = timeout_s
        self._worker: threading.Thread | None = None

    def read(self) -> ReaderStatus:
        return self._bounded(self._read_once)

    def close(self) -> None:
        """Nothing to release: contexts live for one read. A hung worker finishes on its own."""

    def _bounded(self, call: Callable[[], T]) -> T:
        """Run `call` in a worker thread and wait at most timeout_s for it."""
        if self._worker is not None and self._worker.is_alive():
            raise DriverError(NAME, "an earlier call into pcscd has not returned (pcscd hung)")
        outcome: _Outcome[T] = _Outcome(call)
        self._worker = threading.Thread(target=outcome.run, name="pcsc-read", daemon=True)
        self._worker.start()
        self._worker.join(self.timeout_s)
        if self._worker.is_alive():
            raise DriverError(NAME, f"pcscd did not answer within {self.timeout_s:g} s")
        return outcome.result()

    def _read_once(self) -> ReaderStatus:
        scard = _scard()
        context = _establish(scard)
        try:
            return self._status(scard, context)
        finally:
            scard.SCardReleaseContext(context)

    def _status(self, scard: Any, context: Any) -> ReaderStatus:
        names = _list_readers(scard, context)
        chosen = self._pick(names)
        if chosen is None:
            return ReaderStatus(NAME, "no_reader", detail=self._missing(names))
        hr, states = scard.SCardGetStatusChange(context, 0, [(chosen, STATE_UNAWARE)])
        if hr == scard.SCARD_E_UNKNOWN_READER:  # unplugged between the two calls
            return ReaderStatus(NAME, "no_reader", detail=f"reader {chosen!r} went away")
        _check(scard, hr, "SCardGetStatusChange")
        return status_from_state(chosen, int(states[0][1]))

    def _pick(self, names: list[str]) -> str | None:
        matching = [n for n in names if self.reader is None or self.reader in n]
        return matching[0] if matching else None

    def _missing(self, names: list[str]) -> str:
        if not names:
            return "pcscd has no reader"
        return f"no reader matching {self.reader!r}; pcscd has {', '.join(names)}"


def status_from_state(reader_name: str, flags: int) -> ReaderStatus:
    """Map a reader's SCardGetStatusChange event state onto a ReaderStatus."""
    if flags & (STATE_UNKNOWN | STATE_IGNORE):
        return ReaderStatus(NAME, "no_reader", detail=f"reader {reader_name!r} went away")
    if flags & STATE_UNAVAILABLE:
        return ReaderStatus(NAME, "error", None, reader_name, detail="reader unavailable")
    if flags & STATE_MUTE:
        return ReaderStatus(NAME, "ok", True, reader_name, detail="card does not answer (mute)")
    if flags & STATE_PRESENT:
        return ReaderStatus(NAME, "ok", True, reader_name)
    if flags & STATE_EMPTY:
        return ReaderStatus(NAME, "ok", False, reader_name)
    return ReaderStatus(NAME, "error", None, reader_name, detail=f"reader state 0x{flags:x}")


class _Outcome(Generic[T]):
    """What the worker thread produced: a value or the exception, handed back to the caller."""

    def __init__(self, call: Callable[[], T]) -> None:
        self._call = call
        self._value: list[T] = []
        self._error: DriverError | None = None

    def run(self) -> None:
        try:
            self._value.append(self._call())
        except DriverError as e:
            self._error = e
        except Exception as e:  # pyscard raising instead of returning an error code
            self._error = DriverError(NAME, f"{type(e).__name__}: {e}")

    def result(self) -> T:
        if self._error is not None:
            raise self._error
        return self._value[0]


def _scard() -> Any:
    # Imported on first use: an agent with another reader driver must not need libpcsclite.
    try:
        from smartcard import scard
    except ImportError as e:
        raise DriverError(NAME, f"pyscard is not usable: {e}") from e
    return scard


def _establish(scard: Any) -> Any:
    hr, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if hr == scard.SCARD_E_NO_SERVICE:
        raise DriverError(NAME, "pcscd is not running (SCARD_E_NO_SERVICE)")
    _check(scard, hr, "SCardEstablishContext")
    return context


def _list_readers(scard: Any, context: Any) -> list[str]:
    hr, names = scard.SCardListReaders(context, [])
    if hr == scard.SCARD_E_NO_READERS_AVAILABLE:
        return []
    _check(scard, hr, "SCardListReaders")
    return [str(n) for n in names]


def _check(scard: Any, hr: int, call: str) -> None:
    if hr != scard.SCARD_S_SUCCESS:
        message = scard.SCardGetErrorMessage(hr)
        raise DriverError(NAME, f"{call} failed: {message} (0x{hr & 0xFFFFFFFF:08X})")
