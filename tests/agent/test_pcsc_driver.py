"""The PC/SC reader driver against a real pcscd, the vpcd virtual readers and the vicc card.

Each test runs its own pcscd on a private socket (tests/services/pcsc.py), so runs that overlap on
one machine do not share a daemon, a reader or a card.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from agent.drivers import pcsc as driver
from agent.drivers.base import DriverError, ReaderStatus
from agent.drivers.pcsc import PcscReader, status_from_state
from tests.services import pcsc

WHY_NOT = pcsc.unavailable()
FIRST, SECOND = pcsc.READERS


@pytest.fixture
def pcscd() -> Iterator[pcsc.Pcscd]:
    if WHY_NOT:
        pytest.skip(f"no real PC/SC stack (pcscd + vpcd + vicc) here: {WHY_NOT}")
    daemon = pcsc.Pcscd()
    try:
        yield daemon.start()
    finally:
        daemon.close()


@pytest.fixture
def card(pcscd: pcsc.Pcscd) -> Iterator[pcsc.Vicc]:
    """A card in the first reader, once pcscd sees it."""
    vicc = pcscd.vicc(0).start()
    wait_for(lambda: PcscReader().read().card_present is True, what="the card to show")
    yield vicc
    vicc.stop()


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 5.0) -> float:
    """Poll until `check()`; returns the seconds it took. Generous: two cores shared with others."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - start


# --- the real stack ---------------------------------------------------------------------------


def test_reader_without_card_is_ok_and_empty(pcscd: pcsc.Pcscd) -> None:
    reader = PcscReader(timeout_s=2)
    assert reader.read() == ReaderStatus("pcsc", "ok", card_present=False, reader_name=FIRST)
    assert reader.read().to_json()["card_present"] is False
    reader.close()


def test_card_inserted_then_removed(pcscd: pcsc.Pcscd) -> None:
    reader = PcscReader(timeout_s=2)
    vicc = pcscd.vicc(0).start()
    try:
        wait_for(lambda: reader.read().card_present is True, what="the card to show")
        status = reader.read()
        assert (status.state, status.reader_name) == ("ok", FIRST)
    finally:
        vicc.stop()
    wait_for(lambda: reader.read().card_present is False, what="the card to go", timeout_s=2)
    assert reader.read().state == "ok"


def test_name_filter_picks_the_reader(pcscd: pcsc.Pcscd) -> None:
    vicc = pcscd.vicc(1).start()
    try:
        second = PcscReader(reader="00 01", timeout_s=2)
        wait_for(lambda: second.read().card_present is True, what="the card in the second reader")
        assert second.read().reader_name == SECOND
        assert PcscReader(reader="00 00").read() == ReaderStatus("pcsc", "ok", False, FIRST)
        assert PcscReader().read().reader_name == FIRST  # None picks the first reader
    finally:
        vicc.stop()


def test_name_filter_matching_nothing_is_no_reader(pcscd: pcsc.Pcscd) -> None:
    status = PcscReader(reader="ACME CardMan").read()
    assert (status.state, status.card_present, status.reader_name) == ("no_reader", None, None)
    assert status.detail is not None and FIRST in status.detail


def test_reader_unplugged_is_no_reader(pcscd: pcsc.Pcscd) -> None:
    """vpcd readers cannot be hot-unplugged: pcscd comes back without them, as after an unplug."""
    reader = PcscReader(timeout_s=2)
    assert reader.read().state == "ok"
    pcscd.stop()
    bare = pcsc.Pcscd(readers=False)
    try:
        bare.start()
        status = reader.read()
        assert (status.state, status.card_present) == ("no_reader", None)
        assert status.detail == "pcscd has no reader"
    finally:
        bare.close()


def test_pcscd_gone_is_a_driver_error_then_recovers(pcscd: pcsc.Pcscd) -> None:
    reader = PcscReader(timeout_s=2)
    assert reader.read().state == "ok"
    pcscd.stop()
    start = time.monotonic()
    with pytest.raises(DriverError, match="pcscd is not running") as info:
        reader.read()
    assert time.monotonic() - start < 1.0  # refused at once, not after the timeout
    assert info.value.driver == "pcsc"
    pcscd.start()  # same socket, fresh daemon: the next read needs no reconnect
    assert reader.read() == ReaderStatus("pcsc", "ok", False, FIRST)


def test_hung_pcscd_times_out_without_piling_up_threads(pcscd: pcsc.Pcscd) -> None:
    reader = PcscReader(timeout_s=0.5)
    assert reader.read().state == "ok"
    pcscd.freeze()
    try:
        start = time.monotonic()
        with pytest.raises(DriverError, match=r"did not answer within 0\.5 s"):
            reader.read()
        assert time.monotonic() - start < 1.5
        threads = threading.active_count()
        start = time.monotonic()
        for _ in range(3):  # the stuck worker is still there: fail at once, start no other
            with pytest.raises(DriverError, match="has not returned"):
                reader.read()
        assert time.monotonic() - start < 0.2
        assert threading.active_count() == threads
    finally:
        pcscd.thaw()
    wait_for(lambda: _state(reader) == "ok", what="the thawed pcscd to answer")


def test_card_answers_a_select(card: pcsc.Vicc) -> None:
    """The emulated card answers: SELECT MF with P2=0C (vicc 0.8 drops the card on P2=00, FCI)."""
    from smartcard import scard

    hr, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    assert hr == scard.SCARD_S_SUCCESS
    protocols = scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
    hr, handle, protocol = scard.SCardConnect(ctx, FIRST, scard.SCARD_SHARE_SHARED, protocols)
    assert hr == scard.SCARD_S_SUCCESS, scard.SCardGetErrorMessage(hr)
    hr, response = scard.SCardTransmit(handle, protocol, [0x00, 0xA4, 0x00, 0x0C, 0x02, 0x3F, 0x00])
    scard.SCardDisconnect(handle, scard.SCARD_LEAVE_CARD)
    scard.SCardReleaseContext(ctx)
    assert hr == scard.SCARD_S_SUCCESS, scard.SCardGetErrorMessage(hr)
    assert response[-2:] == [0x90, 0x00]
    assert PcscReader().read().card_present is True


def _state(reader: PcscReader) -> str | None:
    try:
        return reader.read().state
    except DriverError:
        return None


# --- the state mapping, without pcscd -----------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "state", "card"),
    [
        (0x12, "ok", False),  # EMPTY | CHANGED, as pcscd reports a vpcd reader without vicc
        (0x10022, "ok", True),  # PRESENT | CHANGED with the event count in the high word
        (0x0222, "ok", True),  # PRESENT | MUTE: the reader works, the card does not answer
        (0x000A, "error", None),  # UNAVAILABLE
        (0x0006, "no_reader", None),  # UNKNOWN: the reader went away
        (0x0002, "error", None),  # nothing we know
    ],
)
def test_state_flags_map_onto_reader_status(flags: int, state: str, card: bool | None) -> None:
    status = status_from_state("R", flags)
    assert (status.state, status.card_present) == (state, card)


def test_mute_card_says_so() -> None:
    assert status_from_state("R", 0x0222).detail == "card does not answer (mute)"


def test_state_flags_are_pcsc_lite_values() -> None:
    scard = pytest.importorskip("smartcard.scard")
    for flag in ("UNAWARE", "IGNORE", "UNKNOWN", "UNAVAILABLE", "EMPTY", "PRESENT", "MUTE"):
        assert getattr(driver, f"STATE_{flag}") == getattr(scard, f"SCARD_STATE_{flag}")


def test_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError):
        PcscReader(timeout_s=0)
