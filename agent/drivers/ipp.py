"""IPP Everywhere / CUPS printers, read and fed over plain IPP/1.1 (RFC 8010/8011).

No IPP library: `ipp_wire` encodes the few requests we send and decodes whatever comes back, and
http.client carries them. Every call is bounded by `timeout_s` in total (connect, send, every
read), and every failure (refused, timed out, HTTP error, bytes that are not IPP, an IPP error
status) becomes a `DriverError`.

What is read, and how it maps onto `PrinterStatus`:
- `printer-state` 3/4/5 -> idle/printing/stopped. A printer that is idle or printing but reports a
  condition that stops printing (`media-jam`, `media-empty`, `cover-open`, ...) is reported
  `stopped`: a kiosk that cannot print a licence is stopped whatever the queue says (ippeveprinter,
  for one, stays "idle" with `media-jam`). An `offline` reason (a CUPS queue whose device is gone)
  is reported `offline`.
- `printer-state-reasons` without their `-report`/`-warning`/`-error` suffix; `none` -> ().
- toner: `marker-levels` of the black toner marker when the printer has markers, else the black
  toner in `printer-supply` (PWG 5100.13).
- paper: the tray in `printer-input-tray` (PWG 5100.13) that the printer feeds from by default
  (`media-col-default` media-source) or the one named in config; sheets and percent when it
  reports a level and a capacity (the capacity from config when it does not say).
- `printer-impressions-completed` for pages_total when present.
Anything the printer did not say stays None: unknown is never reported as empty.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from agent import testpage
from agent.drivers import ipp_wire as w
from agent.drivers.base import DriverError, PaperLevel, PrinterState, PrinterStatus

NAME = "ipp"
#: A Get-Printer-Attributes answer for the attributes below is a few KiB; refuse floods.
MAX_RESPONSE_BYTES = 1 << 20

STATUS_ATTRIBUTES = (
    "printer-state",
    "printer-state-reasons",
    "printer-state-message",
    "marker-names",
    "marker-types",
    "marker-colors",
    "marker-levels",
    "printer-supply",
    "printer-input-tray",
    "media-col-default",
    "printer-impressions-completed",
)

#: What a test page needs to know before it is sent.
TEST_PAGE_ATTRIBUTES = (
    "printer-state",
    "printer-state-reasons",
    "printer-is-accepting-jobs",
    "document-format-supported",
)
JOB_DONE = frozenset({"completed", "aborted", "canceled"})
#: Get-Job-Attributes polls while a test page prints.
JOB_POLL_S = 0.2

PRINTER_STATES: dict[int, PrinterState] = {3: "idle", 4: "printing", 5: "stopped"}
JOB_STATES = {
    3: "pending",
    4: "pending-held",
    5: "processing",
    6: "processing-stopped",
    7: "canceled",
    8: "aborted",
    9: "completed",
}
#: Reasons under which the printer cannot print whatever its printer-state says.
BLOCKING_REASONS = frozenset(
    {
        "media-empty",
        "media-needed",
        "media-jam",
        "cover-open",
        "door-open",
        "interlock-open",
        "input-tray-missing",
        "output-area-full",
        "toner-empty",
        "marker-supply-empty",
        "marker-waste-full",
        "paused",
        "shutdown",
    }
)
SEVERITY_SUFFIXES = ("-report", "-warning", "-error")
TONER_TYPES = frozenset({"toner", "tonerCartridge", "ink", "inkCartridge", "ribbonWax"})
# Printer MIB conventions for levels: -1 other, -2 unknown, -3 "some remains" (RFC 3805).
SOME_REMAINS = -3


# --- transport ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Endpoint:
    host: str
    port: int
    path: str
    tls: bool
    #: The printer-uri attribute: always ipp:// or ipps://, even when configured as http://.
    printer_uri: str

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_uri(uri: str) -> _Endpoint:
    """ipp://host[:631]/path (also ipps://, http://, https://); ValueError when it is not one."""
    parts = urlsplit(uri)
    tls = parts.scheme in ("ipps", "https")
    if parts.scheme not in ("ipp", "ipps", "http", "https") or not parts.hostname:
        raise ValueError(f"not an IPP printer URI: {uri!r} (expected ipp://host:port/path)")
    port = parts.port or (443 if parts.scheme == "https" else 631)
    path = parts.path or "/"
    scheme = "ipps" if tls else "ipp"
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return _Endpoint(parts.hostname, port, path, tls, f"{scheme}://{host}:{port}{path}")


class _Watchdog:
    """Shuts the socket down at the deadline, so a blocked send or recv returns at once.

    Per-operation socket timeouts alone do not bound a call: a server trickling one byte at a
    time restarts them forever. With this, a call never outlives its deadline.
    """

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        self.fired = threading.Event()
        self._sock = sock
        self._timer = threading.Timer(max(seconds, 0.0), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired.set()
        with contextlib.suppress(OSError):  # already closed: the call finished meanwhile
            self._sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        self._timer.cancel()


def _fail(message: str) -> DriverError:
    return DriverError(NAME, message)


def _connect(ep: _Endpoint, timeout_s: float) -> http.client.HTTPConnection:
    conn: http.client.HTTPConnection
    if ep.tls:
        ctx = ssl.create_default_context()
        conn = http.client.HTTPSConnection(ep.host, ep.port, timeout=timeout_s, context=ctx)
    else:
        conn = http.client.HTTPConnection(ep.host, ep.port, timeout=timeout_s)
    try:
        conn.connect()
    except TimeoutError:
        conn.close()
        raise _fail(f"no connection to {ep} within {timeout_s:g}s") from None
    except OSError as e:  # refused, unreachable, TLS handshake failed
        conn.close()
        raise _fail(f"cannot connect to {ep}: {e.strerror or e}") from None
    return conn


def post_ipp(ep: _Endpoint, body: bytes, timeout_s: float) -> bytes:
    """POST one IPP message and return the raw answer, all within timeout_s."""
    deadline = time.monotonic() + timeout_s
    conn = _connect(ep, timeout_s)
    assert conn.sock is not None  # connect() succeeded
    conn.sock.settimeout(max(deadline - time.monotonic(), 0.001))
    watchdog = _Watchdog(conn.sock, deadline - time.monotonic())
    try:
        payload = _exchange(conn, ep, body)
    except (OSError, http.client.HTTPException, DriverError) as e:
        # Once the watchdog fired, whatever broke (EOF, a cut body) was the deadline.
        if watchdog.fired.is_set() or isinstance(e, TimeoutError):
            raise _fail(f"no complete answer from {ep} within {timeout_s:g}s") from None
        if isinstance(e, DriverError):
            raise
        raise _fail(f"connection to {ep} failed: {type(e).__name__}: {e}") from None
    finally:
        watchdog.cancel()
        conn.close()
    if watchdog.fired.is_set():
        raise _fail(f"no complete answer from {ep} within {timeout_s:g}s")
    return payload


def _exchange(conn: http.client.HTTPConnection, ep: _Endpoint, body: bytes) -> bytes:
    conn.request("POST", ep.path, body, {"Content-Type": "application/ipp"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise _fail(f"HTTP {resp.status} {resp.reason} from {ep}{ep.path}")
    ctype = resp.getheader("Content-Type", "application/ipp")
    if not ctype.lower().startswith("application/ipp"):
        raise _fail(f"{ep}{ep.path} answered {ctype!r}, not application/ipp")
    if resp.length is not None and resp.length > MAX_RESPONSE_BYTES:
        raise _fail(f"answer from {ep} is {resp.length} bytes, over {MAX_RESPONSE_BYTES}")
    payload = resp.read(MAX_RESPONSE_BYTES + 1)
    if len(payload) > MAX_RESPONSE_BYTES:
        raise _fail(f"answer from {ep} is over {MAX_RESPONSE_BYTES} bytes")
    if resp.length:  # Content-Length promised more than arrived
        raise _fail(f"answer from {ep} cut off: {resp.length} bytes missing")
    return payload


# --- the driver -----------------------------------------------------------------------------


class IppPrinter:
    """A printer reached over IPP: status reads, and print jobs.

    `capacity` is the tray size in sheets from config, used when the printer reports a level
    but no capacity. `tray` names the input tray to watch (default: the printer's default
    media-source). `job_timeout_s` bounds how long a test page may take to come out. No
    connection is kept between calls: each one stands alone, so a printer that restarts between
    reads costs nothing.
    """

    name = NAME

    def __init__(
        self,
        uri: str,
        timeout_s: float = 5.0,
        capacity: int | None = None,
        *,
        tray: str | None = None,
        user: str = "fleet-agent",
        job_timeout_s: float = 120.0,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if job_timeout_s <= 0:
            raise ValueError(f"job_timeout_s must be positive, got {job_timeout_s}")
        if capacity is not None and capacity <= 0:
            raise ValueError(f"capacity must be a positive number of sheets, got {capacity}")
        self.uri = uri
        self.timeout_s = timeout_s
        self.capacity = capacity
        self.tray = tray
        self.user = user
        self.job_timeout_s = job_timeout_s
        self._endpoint = parse_uri(uri)
        self._request_id = 0

    def read(self) -> PrinterStatus:
        requested = w.attr("requested-attributes", w.KEYWORD, *STATUS_ATTRIBUTES)
        answer = self._call(w.GET_PRINTER_ATTRIBUTES, [requested])
        return status_from_attributes(
            answer.group(w.PRINTER_ATTRIBUTES), capacity=self.capacity, tray=self.tray
        )

    def print_document(
        self, data: bytes, mime: str = "application/pdf", job_name: str = "kiosk document"
    ) -> int:
        """Print-Job; returns the job-id. The job prints later: follow it with job_state()."""
        # name values are at most 255 octets (RFC 8011 §5.1.3); cut on a character boundary.
        job_name = job_name.encode("utf-8")[:255].decode("utf-8", "ignore")
        ops = [
            w.attr("job-name", w.NAME, job_name),
            w.attr("document-format", w.MIME_MEDIA_TYPE, mime),
        ]
        answer = self._call(w.PRINT_JOB, ops, data=data)
        job_id = _first(answer.group(w.JOB_ATTRIBUTES), "job-id")
        if not isinstance(job_id, int) or isinstance(job_id, bool):
            raise _fail(f"Print-Job answer from {self._endpoint} has no job-id")
        return job_id

    def job_state(self, job_id: int) -> str:
        """The job's RFC 8011 job-state keyword: pending, processing, completed, aborted, ..."""
        return self.job_status(job_id)[0]

    def job_status(self, job_id: int) -> tuple[str, tuple[str, ...]]:
        """The job's state keyword and its job-state-reasons (none of them "none")."""
        ops = [
            w.attr("job-id", w.INTEGER, job_id),
            w.attr("requested-attributes", w.KEYWORD, "job-state", "job-state-reasons"),
        ]
        attrs = self._call(w.GET_JOB_ATTRIBUTES, ops).group(w.JOB_ATTRIBUTES)
        state = _first(attrs, "job-state")
        if not isinstance(state, int) or state not in JOB_STATES:
            raise _fail(f"job {job_id} on {self._endpoint} has no valid job-state ({state!r})")
        reasons = tuple(
            r for r in attrs.get("job-state-reasons", ()) if isinstance(r, str) and r != "none"
        )
        return JOB_STATES[state], reasons

    def cancel_job(self, job_id: int) -> None:
        self._call(w.CANCEL_JOB, [w.attr("job-id", w.INTEGER, job_id)])

    def print_test_page(self, page: testpage.TestPage) -> str:
        """Print-Job of the test page, then Get-Job-Attributes until it is done.

        Refused before anything is sent when the printer is stopped or offline (a job sent to
        a printer out of paper would wait in its queue and print hours later, unasked) or
        takes none of our formats. A job still not done after `job_timeout_s` is cancelled.
        """
        offered = self._ready_formats()
        mime = testpage.choose_format(offered)
        if mime is None:
            raise _fail(f"printer takes none of {', '.join(testpage.FORMATS)} ({offered})")
        return self._print_and_wait(
            testpage.render(page, mime), mime, f"test page {page.command_id}"
        )

    def print_licence(self, pdf: bytes, serial: str) -> str:
        """Print a licence (the server's A4 PDF) as print_test_page prints a test page."""
        offered = self._ready_formats()
        if "application/pdf" not in offered:
            raise _fail(f"printer does not take application/pdf ({offered})")
        return self._print_and_wait(pdf, "application/pdf", f"licence {serial}")

    def _ready_formats(self) -> list[str]:
        """The document formats the printer takes; refused when it is stopped, offline or not
        accepting jobs (a job sent to a printer out of paper would wait in its queue and print
        hours later, unasked)."""
        requested = w.attr("requested-attributes", w.KEYWORD, *TEST_PAGE_ATTRIBUTES)
        attrs = self._call(w.GET_PRINTER_ATTRIBUTES, [requested]).group(w.PRINTER_ATTRIBUTES)
        status = status_from_attributes(attrs)
        if status.state in ("stopped", "offline"):
            said = ", ".join(status.reasons) or "no reason given"
            raise _fail(f"printer is {status.state} ({said})")
        if _first(attrs, "printer-is-accepting-jobs") is False:
            raise _fail("printer is not accepting jobs")
        return [v for v in attrs.get("document-format-supported", ()) if isinstance(v, str)]

    def _print_and_wait(self, data: bytes, mime: str, job_name: str) -> str:
        """Print-Job, then Get-Job-Attributes until it is done; cancelled after job_timeout_s."""
        job_id = self.print_document(data, mime, job_name=job_name)
        deadline = time.monotonic() + self.job_timeout_s
        while True:
            state, job_reasons = self.job_status(job_id)
            why = f" ({', '.join(job_reasons)})" if job_reasons else ""
            if state == "completed":
                return f"job {job_id} completed ({mime})"
            if state in JOB_DONE:
                raise _fail(f"job {job_id} {state}{why}")
            if time.monotonic() >= deadline:
                with contextlib.suppress(DriverError):  # it may finish meanwhile
                    self.cancel_job(job_id)
                raise _fail(f"job {job_id} still {state} after {self.job_timeout_s:g}s{why}")
            time.sleep(JOB_POLL_S)

    def close(self) -> None:
        """Nothing is held open between calls."""

    def _call(self, operation: int, ops: list[w.Attr], data: bytes = b"") -> w.IppMessage:
        self._request_id = self._request_id % 0x7FFFFFFF + 1
        request_id = self._request_id
        header = [
            w.attr("attributes-charset", w.CHARSET, "utf-8"),
            w.attr("attributes-natural-language", w.NATURAL_LANGUAGE, "en"),
            w.attr("printer-uri", w.URI, self._endpoint.printer_uri),
            w.attr("requesting-user-name", w.NAME, self.user),
        ]
        body = w.encode_request(operation, request_id, [(w.OPERATION_ATTRIBUTES, header + ops)])
        raw = post_ipp(self._endpoint, body + data, self.timeout_s)
        return _check_answer(raw, request_id, self._endpoint)


def _check_answer(raw: bytes, request_id: int, ep: _Endpoint) -> w.IppMessage:
    try:
        answer = w.decode_message(raw)
    except w.IppDecodeError as e:
        raise _fail(f"answer from {ep} is not valid IPP ({len(raw)} bytes): {e}") from None
    if answer.request_id != request_id:
        raise _fail(f"answer from {ep} is for request {answer.request_id}, not {request_id}")
    if answer.code >= 0x0100:  # anything but successful-ok* (RFC 8011 §4.1.6)
        message = _first(answer.group(w.OPERATION_ATTRIBUTES), "status-message")
        detail = f": {message}" if isinstance(message, str) else ""
        raise _fail(f"{ep} refused the request: {answer.status_name}{detail}")
    return answer


# --- mapping attributes onto PrinterStatus --------------------------------------------------


def status_from_attributes(
    attrs: Mapping[str, Sequence[w.IppValue]],
    capacity: int | None = None,
    tray: str | None = None,
) -> PrinterStatus:
    state_value = _first(attrs, "printer-state")
    if not isinstance(state_value, int) or state_value not in PRINTER_STATES:
        raise _fail(f"answer has no valid printer-state ({state_value!r})")
    reasons = state_reasons(attrs.get("printer-state-reasons", ()))
    return PrinterStatus(
        driver=NAME,
        state=_effective_state(PRINTER_STATES[state_value], reasons),
        reasons=reasons,
        paper=paper_level(attrs, capacity, tray),
        toner_pct=toner_pct(attrs),
        pages_total=_non_negative(_first(attrs, "printer-impressions-completed")),
    )


def state_reasons(values: Sequence[w.IppValue]) -> tuple[str, ...]:
    """Bare keywords, sorted and unique: `media-empty-error` -> `media-empty`; `none` -> ()."""
    out = set()
    for value in values:
        if not isinstance(value, str):
            continue
        for suffix in SEVERITY_SUFFIXES:
            if value.endswith(suffix):
                value = value[: -len(suffix)]
                break
        if value and value != "none":
            out.add(value)
    return tuple(sorted(out))


def _effective_state(state: PrinterState, reasons: tuple[str, ...]) -> PrinterState:
    if "offline" in reasons:
        return "offline"
    if state != "stopped" and BLOCKING_REASONS.intersection(reasons):
        return "stopped"
    return state


def toner_pct(attrs: Mapping[str, Sequence[w.IppValue]]) -> int | None:
    """Black toner level in percent from marker-levels, else from printer-supply."""
    levels = attrs.get("marker-levels", ())
    if levels:
        i = _black_toner_marker(attrs, len(levels))
        return _percent(levels[i], 100) if i is not None else None
    supplies = [_key_values(v) for v in attrs.get("printer-supply", ())]
    toners = [s for s in supplies if s.get("type") in TONER_TYPES]
    if not toners:
        return None
    black = next((s for s in toners if s.get("colorantname") == "black"), toners[0])
    unit_max = 100 if black.get("unit") == "percent" else _int(black.get("maxcapacity"))
    return _percent(_int(black.get("level")), unit_max)


def _black_toner_marker(attrs: Mapping[str, Sequence[w.IppValue]], count: int) -> int | None:
    """Index of the black toner in the marker-* arrays (CUPS fills them in parallel)."""
    types = list(attrs.get("marker-types", ()))
    colors = list(attrs.get("marker-colors", ()))
    names = list(attrs.get("marker-names", ()))
    candidates = [i for i in range(count) if i >= len(types) or types[i] in TONER_TYPES]
    for i in candidates:
        color = colors[i] if i < len(colors) else None
        name = names[i] if i < len(names) else None
        if color == "#000000" or (isinstance(name, str) and "black" in name.lower()):
            return i
    return candidates[0] if candidates else None


def paper_level(
    attrs: Mapping[str, Sequence[w.IppValue]], capacity: int | None, tray: str | None
) -> PaperLevel | None:
    """Paper in the watched tray; None when the printer reports no such tray."""
    trays = [_key_values(v) for v in attrs.get("printer-input-tray", ())]
    chosen = _pick_tray(trays, tray, _default_source(attrs))
    if chosen is None:
        return None
    level = _int(chosen.get("level"))
    if chosen.get("unit") == "percent":  # maxcapacity is then 100 (percent), not sheets
        pct = _percent(level, 100)
        sheets = round(capacity * pct / 100) if capacity and pct is not None else None
        return PaperLevel(level_pct=pct, sheets_left=sheets, capacity=capacity)
    max_capacity = _int(chosen.get("maxcapacity"))
    cap = max_capacity if max_capacity is not None and max_capacity > 0 else capacity
    if level is None or level < 0:  # unknown, other, or "some paper left": no number
        return PaperLevel(capacity=cap)
    return PaperLevel(level_pct=_percent(level, cap), sheets_left=level, capacity=cap)


def _pick_tray(
    trays: list[dict[str, str]], configured: str | None, default: str | None
) -> dict[str, str] | None:
    """The configured tray (None if the printer has no such tray), else the default source,
    else the first tray that knows its level ("auto" and manual feeds report -2), else the
    first real tray (one with a capacity)."""
    if configured is not None:
        return next((t for t in trays if t.get("name") == configured), None)
    named = next((t for t in trays if default is not None and t.get("name") == default), None)
    known = next((t for t in trays if _level_known(t)), None)
    return named or known or next((t for t in trays if _positive(t.get("maxcapacity"))), None)


def _positive(text: str | None) -> bool:
    value = _int(text)
    return value is not None and value > 0


def _level_known(tray: dict[str, str]) -> bool:
    level = _int(tray.get("level"))
    return level is not None and (level >= 0 or level == SOME_REMAINS)


def _default_source(attrs: Mapping[str, Sequence[w.IppValue]]) -> str | None:
    col = _first(attrs, "media-col-default")
    if isinstance(col, dict):
        source = col.get("media-source", [None])[0]
        return source if isinstance(source, str) else None
    return None


def _key_values(value: w.IppValue) -> dict[str, str]:
    """PWG 5100.13 `key=value;key=value;` strings (printer-supply, printer-input-tray)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return {}
    pairs = (item.partition("=") for item in value.split(";") if "=" in item)
    return {k.strip(): v.strip() for k, _, v in pairs}


def _percent(level: w.IppValue | None, full: int | None) -> int | None:
    if not isinstance(level, int) or isinstance(level, bool) or level < 0 or not full:
        return None
    return max(0, min(100, round(level * 100 / full)))


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _non_negative(value: w.IppValue | None) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _first(attrs: Mapping[str, Sequence[w.IppValue]], name: str) -> w.IppValue | None:
    values = attrs.get(name)
    return values[0] if values else None
