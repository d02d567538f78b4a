"""Turn one MQTT message (topic, payload bytes) into a typed message, or a Rejection with a reason.

`parse()` never raises: whatever a terminal (or anyone holding its credentials) publishes, the
ingest gets back a value it can count and store. Checks run cheapest first, and the first
failure is the reason:

    bad_topic -> payload_too_large -> not_utf8 -> not_json -> too_deep -> not_object
    -> schema (strings a database cannot store) -> bad_version -> terminal_mismatch -> schema

- The size limit is checked on the raw bytes, before decoding or parsing, so a huge payload
  costs nothing.
- JSON: NaN/Infinity literals and numbers that overflow a float (`1e999`) are refused (they
  cannot be stored or compared sanely); an integer with more digits than Python converts
  (ValueError) and nesting deep enough to hit the recursion limit are refused too.
- Strings holding NUL (`\\u0000`) or a lone UTF-16 surrogate are refused: PostgreSQL cannot
  store the first, and the second has no UTF-8 encoding at all.
- Nesting is bounded at MAX_DEPTH, so whatever is kept (unknown fields are kept, for forward
  compatibility) can later be serialised and stored without surprises.
- The schema follows agent/report.py exactly; fields may be added by the agent, never renamed,
  so unknown fields are kept in `raw` and never rejected. Fields the contract marks as possibly
  unknown (a device that could not be read, a paper level the printer does not tell) may be null.
- `reported` and `cmd/result`: only `v`, and `seq`/`ts` when present, are checked here and the
  rest is kept raw; their contracts are checked by the pipeline (`check_reported` of
  agent/desired/document.py, `check_result` of fleet/server/desired/commands.py), which
  dead-letters a bad one with reason `schema` like any other.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Final, Literal

log = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES: Final = 64 * 1024
MAX_DEPTH: Final = 32
#: seq is stored in a signed 64-bit column.
MAX_SEQ: Final = 2**63 - 1
TOPIC_PREFIX: Final = "fleet/v1/t/"
TERMINAL_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
KINDS: Final = ("presence", "status", "event", "reported", "cmd/result")
PRINTER_STATES: Final = frozenset({"idle", "printing", "stopped", "offline"})
READER_STATES: Final = frozenset({"ok", "no_reader", "error", "offline"})
#: Event names are identifiers (`print_completed`, `update_started`, ...), never free text; at
#: most 32 characters, the DB column's width.
EVENT_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,31}")
#: The agent version is stored in a 32-character column; "1.2.0" is the shape.
MAX_AGENT_CHARS: Final = 32
#: `printer.reasons`: IPP's printer-state-reasons are a handful of keywords. Every status sample
#: stores them, so unbounded they let one terminal write 65 MB/s of history (issue 12 attack).
MAX_REASONS: Final = 32
MAX_REASON_CHARS: Final = 64
#: Dead-letter rows keep the topic in a 255-character column.
MAX_TOPIC_CHARS: Final = 255
#: Payload keys that name a terminal; if present they must agree with the topic.
TERMINAL_KEYS: Final = ("terminal", "terminal_id")

Reason = Literal[
    "bad_topic",
    "payload_too_large",
    "not_utf8",
    "not_json",
    "too_deep",
    "not_object",
    "bad_version",
    "terminal_mismatch",
    "schema",
    "internal_error",
    # Set by the pipeline and the receiver, not by `parse`:
    "clock_skew",
    "bad_packet",
]
Kind = Literal["presence", "status", "event", "reported", "cmd/result"]


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: Reason
    detail: str
    topic: str
    #: The terminal named by the topic, when the topic could be parsed.
    terminal: str | None = None


@dataclass(frozen=True, slots=True)
class Presence:
    terminal: str
    online: bool
    ts: datetime
    agent: str | None
    #: "clean" or "will" if the agent says which (an optional, added field); see presence.py.
    reason: str | None
    raw: dict[str, Any] = field(repr=False)
    kind: Literal["presence"] = "presence"


@dataclass(frozen=True, slots=True)
class Paper:
    level_pct: float | None
    sheets_left: int | None
    capacity: int | None


@dataclass(frozen=True, slots=True)
class Printer:
    driver: str
    state: str
    reasons: tuple[str, ...]
    paper: Paper | None
    toner_pct: float | None
    pages_total: int | None


@dataclass(frozen=True, slots=True)
class Reader:
    driver: str
    state: str
    card_present: bool | None


@dataclass(frozen=True, slots=True)
class Status:
    terminal: str
    seq: int
    ts: datetime
    agent: str
    desired: str | None
    printer: Printer | None
    reader: Reader | None
    raw: dict[str, Any] = field(repr=False)
    kind: Literal["status"] = "status"


@dataclass(frozen=True, slots=True)
class Event:
    terminal: str
    seq: int
    ts: datetime
    agent: str
    event: str
    raw: dict[str, Any] = field(repr=False)
    kind: Literal["event"] = "event"


@dataclass(frozen=True, slots=True)
class Reported:
    terminal: str
    seq: int | None
    ts: datetime | None
    raw: dict[str, Any] = field(repr=False)
    kind: Literal["reported"] = "reported"


@dataclass(frozen=True, slots=True)
class CmdResult:
    terminal: str
    seq: int | None
    ts: datetime | None
    raw: dict[str, Any] = field(repr=False)
    kind: Literal["cmd/result"] = "cmd/result"


Message = Presence | Status | Event | Reported | CmdResult


class _SchemaError(Exception):
    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class _NotJson(ValueError):
    pass


def parse_topic(topic: str) -> tuple[str, Kind] | None:
    """`fleet/v1/t/{id}/{kind}` -> (id, kind); None for any other topic."""
    if not topic.startswith(TOPIC_PREFIX):
        return None
    terminal, sep, kind = topic[len(TOPIC_PREFIX) :].partition("/")
    if not sep or kind not in KINDS or not TERMINAL_ID.fullmatch(terminal):
        return None
    return terminal, kind  # type: ignore[return-value]  # kind checked against KINDS


#: Valid topics already parsed: a fleet publishes on a few topics per terminal, over and over.
#: Bounded (cleared when full), so a flood of distinct topics costs memory once, not forever.
_MAX_CACHED_TOPICS: Final = 65536
_TOPICS: dict[str, tuple[str, Kind]] = {}


def parse(topic: str, payload: bytes) -> Message | Rejection:
    """The typed message, or why it is refused. Never raises."""
    try:
        return _parse(topic, payload)
    except Exception as e:  # a bug here must cost one message, not the ingest
        log.exception("validator failed on a message for %r", topic)
        return Rejection("internal_error", type(e).__name__, str(topic)[:MAX_TOPIC_CHARS])


def topic_parts(topic: str) -> tuple[str, Kind] | None:
    """`parse_topic` through the cache of valid topics (the ingest asks twice a message)."""
    where = _TOPICS.get(topic) if type(topic) is str else None
    if where is None:
        where = parse_topic(topic) if isinstance(topic, str) else None
        if where is not None and type(topic) is str:
            if len(_TOPICS) >= _MAX_CACHED_TOPICS:
                _TOPICS.clear()
            _TOPICS[topic] = where
    return where


def _parse(topic: str, payload: bytes) -> Message | Rejection:
    where = topic_parts(topic)
    if where is None:
        return Rejection("bad_topic", "not fleet/v1/t/{id}/{kind}", str(topic)[:MAX_TOPIC_CHARS])
    terminal, kind = where
    if len(payload) > MAX_PAYLOAD_BYTES:
        return Rejection(
            "payload_too_large", f"{len(payload)} > {MAX_PAYLOAD_BYTES} bytes", topic, terminal
        )
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError as e:
        return Rejection("not_utf8", f"invalid UTF-8 at byte {e.start}", topic, terminal)
    try:
        doc = _decode(text)
    except RecursionError:
        return Rejection("too_deep", "nested beyond the parser's limit", topic, terminal)
    except ValueError as e:  # JSONDecodeError, _NotJson, and int digit limits are ValueErrors
        return Rejection("not_json", str(e)[:200], topic, terminal)
    # Counting brackets is a C-speed upper bound on depth; walk only when it might be too deep.
    if (text.count("{") + text.count("[") > MAX_DEPTH) and _too_deep(doc):
        return Rejection("too_deep", f"nested deeper than {MAX_DEPTH} levels", topic, terminal)
    if not isinstance(doc, dict):
        return Rejection("not_object", f"top level is {_type(doc)}", topic, terminal)
    # Both unstorable forms are `\\u` escapes: no backslash-u, nothing to look for.
    problem = _unstorable(text, doc) if "\\u" in text else None
    if problem:
        return Rejection("schema", problem, topic, terminal)
    v = doc.get("v")
    if type(v) is not int or v != 1:  # `type` check: True == 1 but is not a version
        return Rejection("bad_version", f"v is {v!r:.40}, expected 1", topic, terminal)
    for key in TERMINAL_KEYS:
        named = doc.get(key)
        if named is not None and named != terminal:
            return Rejection(
                "terminal_mismatch",
                f"{key} is {named!r:.80}, topic says {terminal}",
                topic,
                terminal,
            )
    try:
        return _BUILDERS[kind](terminal, doc)
    except _SchemaError as e:
        return Rejection("schema", str(e)[:300], topic, terminal)


# -- JSON hooks ------------------------------------------------------------------------------


def _refuse_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotJson(f"number {text[:40]} overflows")
    return value


_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")


def _unstorable(text: str, doc: Any) -> str | None:
    """Valid JSON that a database refuses: NUL characters (PostgreSQL text and jsonb cannot hold
    them) and lone UTF-16 surrogates (no UTF-8 encoding). Both can only come from `\\u` escapes,
    so the text is searched first (at C speed) and the document walked only on a hit."""
    if "\\u0000" in text:
        return "contains \\u0000, which cannot be stored"
    if _SURROGATE_ESCAPE.search(text):  # a pair (an escaped emoji) is fine; a lone one is not
        try:
            json.dumps(doc, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return "contains a lone UTF-16 surrogate, which cannot be stored"
    return None


# One decoder for all messages: json.loads with hooks would build a new one per call.
_DECODER: Final = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


#: The decoder's C scanner (set by JSONDecoder.__init__, absent from the typeshed stubs).
_SCAN: Final[Callable[[str, int], tuple[Any, int]]] = _DECODER.scan_once  # type: ignore[attr-defined]


def _decode(text: str) -> Any:
    """`_DECODER.decode(text)`, without its whitespace regexes for the usual compact document.

    Anything unusual (leading or trailing whitespace, or an error) goes through `decode` itself,
    so the error raised, and its message, are the decoder's own."""
    if text[:1] == "{":
        try:
            doc, end = _SCAN(text, 0)
        except (StopIteration, ValueError):
            pass  # decode() below raises the decoder's own error for it
        else:
            if end == len(text):
                return doc
    return _DECODER.decode(text)


def _too_deep(doc: Any) -> bool:
    # Iterative, so a deep document cannot exhaust the stack here either.
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(node, dict):
            children = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue  # scalars add no level: depth counts containers, as brackets do
        if depth > MAX_DEPTH:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _type(value: Any) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


# -- field readers: each raises _SchemaError with the field's path -------------------------


def _get(obj: dict[str, Any], key: str, path: str, *, required: bool) -> Any:
    if key not in obj:
        if required:
            raise _SchemaError(f"{path}{key}", "missing")
        return None
    return obj[key]


def _str(obj: dict[str, Any], key: str, path: str, *, required: bool, nullable: bool) -> str | None:
    value = _get(obj, key, path, required=required)
    if value is None:
        if required and not nullable:
            raise _SchemaError(f"{path}{key}", "must not be null")
        return None
    if not isinstance(value, str):
        raise _SchemaError(f"{path}{key}", f"expected a string, got {_type(value)}")
    return value


def _int(
    obj: dict[str, Any], key: str, path: str, *, required: bool, lo: int = 0, hi: int = MAX_SEQ
) -> int | None:
    value = _get(obj, key, path, required=required)
    if value is None:
        if required:
            raise _SchemaError(f"{path}{key}", "must not be null")
        return None
    if type(value) is not int:
        raise _SchemaError(f"{path}{key}", f"expected an integer, got {_type(value)}")
    if not lo <= value <= hi:
        raise _SchemaError(f"{path}{key}", f"{value} is outside {lo}..{hi}")
    return value


def _pct(obj: dict[str, Any], key: str, path: str) -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) not in (int, float):
        raise _SchemaError(f"{path}{key}", f"expected a number, got {_type(value)}")
    if not 0 <= value <= 100:
        raise _SchemaError(f"{path}{key}", f"{value} is outside 0..100")
    return value  # type: ignore[no-any-return]  # int or finite float, checked above


def _bool(obj: dict[str, Any], key: str, path: str, *, required: bool) -> bool | None:
    value = _get(obj, key, path, required=required)
    if value is None:
        if required:
            raise _SchemaError(f"{path}{key}", "must not be null")
        return None
    if not isinstance(value, bool):
        raise _SchemaError(f"{path}{key}", f"expected true or false, got {_type(value)}")
    return value


def _obj(obj: dict[str, Any], key: str, path: str) -> dict[str, Any] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _SchemaError(f"{path}{key}", f"expected an object, got {_type(value)}")
    return value


def _ts(obj: dict[str, Any], key: str, path: str, *, required: bool) -> datetime | None:
    value = _str(obj, key, path, required=required, nullable=False)
    if value is None:
        return None
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise _SchemaError(f"{path}{key}", f"{value[:40]!r} is not ISO 8601") from None
    offset = ts.utcoffset()
    if offset is None or offset.total_seconds() != 0:
        raise _SchemaError(f"{path}{key}", f"{value[:40]!r} is not UTC (end it with Z)")
    return ts.astimezone(UTC)


def _enum(obj: dict[str, Any], key: str, path: str, allowed: frozenset[str]) -> str:
    value = _str(obj, key, path, required=True, nullable=False)
    if value not in allowed:
        raise _SchemaError(f"{path}{key}", f"{value!r:.40} is not one of {sorted(allowed)}")
    return value


# -- builders ---------------------------------------------------------------------------------


def _presence(terminal: str, doc: dict[str, Any]) -> Presence:
    online = _bool(doc, "online", "", required=True)
    ts = _ts(doc, "ts", "", required=True)
    assert online is not None and ts is not None  # required=True never returns None
    return Presence(
        terminal=terminal,
        online=online,
        ts=ts,
        agent=_agent_or_none(doc),
        reason=_str(doc, "reason", "", required=False, nullable=True),
        raw=doc,
    )


def _agent_or_none(doc: dict[str, Any]) -> str | None:
    agent = _str(doc, "agent", "", required=False, nullable=True)
    if agent is not None and len(agent) > MAX_AGENT_CHARS:
        raise _SchemaError("agent", f"longer than {MAX_AGENT_CHARS} characters")
    return agent


def _printer(doc: dict[str, Any]) -> Printer | None:
    p = _obj(doc, "printer", "")
    if p is None:
        return None
    reasons = p.get("reasons")
    if reasons is None:
        reasons = []
    if not isinstance(reasons, list):
        raise _SchemaError("printer.reasons", f"expected an array, got {_type(reasons)}")
    if len(reasons) > MAX_REASONS:
        raise _SchemaError("printer.reasons", f"more than {MAX_REASONS} reasons")
    for i, r in enumerate(reasons):
        if not isinstance(r, str):
            raise _SchemaError(f"printer.reasons[{i}]", f"expected a string, got {_type(r)}")
        if len(r) > MAX_REASON_CHARS:
            raise _SchemaError(
                f"printer.reasons[{i}]", f"longer than {MAX_REASON_CHARS} characters"
            )
    paper_doc = _obj(p, "paper", "printer.")
    paper = None
    if paper_doc is not None:
        paper = Paper(
            level_pct=_pct(paper_doc, "level_pct", "printer.paper."),
            sheets_left=_int(paper_doc, "sheets_left", "printer.paper.", required=False),
            capacity=_int(paper_doc, "capacity", "printer.paper.", required=False),
        )
    driver = _str(p, "driver", "printer.", required=True, nullable=False)
    assert driver is not None
    return Printer(
        driver=driver,
        state=_enum(p, "state", "printer.", PRINTER_STATES),
        reasons=tuple(reasons),
        paper=paper,
        toner_pct=_pct(p, "toner_pct", "printer."),
        pages_total=_int(p, "pages_total", "printer.", required=False),
    )


def _reader(doc: dict[str, Any]) -> Reader | None:
    r = _obj(doc, "reader", "")
    if r is None:
        return None
    driver = _str(r, "driver", "reader.", required=True, nullable=False)
    assert driver is not None
    return Reader(
        driver=driver,
        state=_enum(r, "state", "reader.", READER_STATES),
        card_present=_bool(r, "card_present", "reader.", required=False),
    )


def _seq_ts_agent(doc: dict[str, Any]) -> tuple[int, datetime, str]:
    seq = _int(doc, "seq", "", required=True)
    ts = _ts(doc, "ts", "", required=True)
    agent = _str(doc, "agent", "", required=True, nullable=False)
    assert seq is not None and ts is not None and agent is not None
    if len(agent) > MAX_AGENT_CHARS:
        raise _SchemaError("agent", f"longer than {MAX_AGENT_CHARS} characters")
    return seq, ts, agent


def _status(terminal: str, doc: dict[str, Any]) -> Status:
    # The agent's every-few-seconds report is the bulk of the traffic: a specialised path checks
    # exactly what the generic readers below check, and on any doubt hands the document to them,
    # so a refused report gets the same reason and field path either way.
    fast = _status_fast(terminal, doc)
    if fast is not None:
        return fast
    return _status_generic(terminal, doc)


_NUMBER: Final = (int, float)

# A frozen dataclass's __init__ sets each field through object.__setattr__, which costs more
# than the rest of a report's checks; the fast path sets the slots directly instead. The
# field lists are checked against the classes at import, so a field added there and not here
# fails at start-up, not silently.
_new = object.__new__


def _slot_setters(cls: type, names: tuple[str, ...]) -> tuple[Callable[[Any, Any], None], ...]:
    if tuple(f.name for f in fields(cls)) != names:
        raise RuntimeError(f"validate.py: the fast path's {cls.__name__} fields are stale")
    return tuple(cls.__dict__[name].__set__ for name in names)


_pa_level, _pa_sheets, _pa_capacity = _slot_setters(Paper, ("level_pct", "sheets_left", "capacity"))
_pr_driver, _pr_state, _pr_reasons, _pr_paper, _pr_toner, _pr_pages = _slot_setters(
    Printer, ("driver", "state", "reasons", "paper", "toner_pct", "pages_total")
)
_rd_driver, _rd_state, _rd_card = _slot_setters(Reader, ("driver", "state", "card_present"))
(
    _st_terminal,
    _st_seq,
    _st_ts,
    _st_agent,
    _st_desired,
    _st_printer,
    _st_reader,
    _st_raw,
    _st_kind,
) = _slot_setters(
    Status, ("terminal", "seq", "ts", "agent", "desired", "printer", "reader", "raw", "kind")
)


def _status_fast(terminal: str, doc: dict[str, Any]) -> Status | None:
    """The Status for a well-formed report, or None to let `_status_generic` say what is wrong."""
    get = doc.get
    seq = get("seq")
    if type(seq) is not int or not 0 <= seq <= MAX_SEQ:
        return None
    ts_text = get("ts")
    agent = get("agent")
    if type(ts_text) is not str or type(agent) is not str or len(agent) > MAX_AGENT_CHARS:
        return None
    desired = get("desired")
    if desired is not None and type(desired) is not str:
        return None
    host = get("host")
    if host is not None and type(host) is not dict:
        return None
    try:
        ts = datetime.fromisoformat(ts_text)
    except ValueError:
        return None
    if ts.tzinfo is not UTC:
        offset = ts.utcoffset()
        if offset is None or offset.total_seconds() != 0:
            return None
    ts = ts.astimezone(UTC)

    printer: Printer | None = None
    p = get("printer")
    if p is not None:
        if type(p) is not dict:
            return None
        pget = p.get
        driver = pget("driver")
        state = pget("state")
        if type(driver) is not str or type(state) is not str or state not in PRINTER_STATES:
            return None
        reasons = pget("reasons")
        if reasons is None:
            reasons_t: tuple[str, ...] = ()
        elif type(reasons) is list:
            if len(reasons) > MAX_REASONS:
                return None
            for r in reasons:
                if type(r) is not str or len(r) > MAX_REASON_CHARS:
                    return None
            reasons_t = tuple(reasons)
        else:
            return None
        paper: Paper | None = None
        pd = pget("paper")
        if pd is not None:
            if type(pd) is not dict:
                return None
            level = pd.get("level_pct")
            sheets = pd.get("sheets_left")
            capacity = pd.get("capacity")
            if level is not None and (type(level) not in _NUMBER or not 0 <= level <= 100):
                return None
            if sheets is not None and (type(sheets) is not int or not 0 <= sheets <= MAX_SEQ):
                return None
            if capacity is not None and (type(capacity) is not int or not 0 <= capacity <= MAX_SEQ):
                return None
            paper = _new(Paper)
            _pa_level(paper, level)
            _pa_sheets(paper, sheets)
            _pa_capacity(paper, capacity)
        toner = pget("toner_pct")
        if toner is not None and (type(toner) not in _NUMBER or not 0 <= toner <= 100):
            return None
        pages = pget("pages_total")
        if pages is not None and (type(pages) is not int or not 0 <= pages <= MAX_SEQ):
            return None
        printer = _new(Printer)
        _pr_driver(printer, driver)
        _pr_state(printer, state)
        _pr_reasons(printer, reasons_t)
        _pr_paper(printer, paper)
        _pr_toner(printer, toner)
        _pr_pages(printer, pages)

    reader: Reader | None = None
    r = get("reader")
    if r is not None:
        if type(r) is not dict:
            return None
        rget = r.get
        rdriver = rget("driver")
        rstate = rget("state")
        if type(rdriver) is not str or type(rstate) is not str or rstate not in READER_STATES:
            return None
        card = rget("card_present")
        if card is not None and type(card) is not bool:
            return None
        reader = _new(Reader)
        _rd_driver(reader, rdriver)
        _rd_state(reader, rstate)
        _rd_card(reader, card)

    status: Status = _new(Status)
    _st_terminal(status, terminal)
    _st_seq(status, seq)
    _st_ts(status, ts)
    _st_agent(status, agent)
    _st_desired(status, desired)
    _st_printer(status, printer)
    _st_reader(status, reader)
    _st_raw(status, doc)
    _st_kind(status, "status")
    return status


def _status_generic(terminal: str, doc: dict[str, Any]) -> Status:
    seq, ts, agent = _seq_ts_agent(doc)
    _obj(doc, "host", "")  # free-form, but an object when present
    return Status(
        terminal=terminal,
        seq=seq,
        ts=ts,
        agent=agent,
        desired=_str(doc, "desired", "", required=False, nullable=True),
        printer=_printer(doc),
        reader=_reader(doc),
        raw=doc,
    )


def _event(terminal: str, doc: dict[str, Any]) -> Event:
    seq, ts, agent = _seq_ts_agent(doc)
    name = _str(doc, "event", "", required=True, nullable=False)
    assert name is not None
    if not EVENT_NAME.fullmatch(name):
        raise _SchemaError("event", f"{name!r:.40} is not an event name")
    return Event(terminal=terminal, seq=seq, ts=ts, agent=agent, event=name, raw=doc)


def _reported(terminal: str, doc: dict[str, Any]) -> Reported:
    return Reported(
        terminal=terminal,
        seq=_int(doc, "seq", "", required=False),
        ts=_ts(doc, "ts", "", required=False),
        raw=doc,
    )


def _cmd_result(terminal: str, doc: dict[str, Any]) -> CmdResult:
    return CmdResult(
        terminal=terminal,
        seq=_int(doc, "seq", "", required=False),
        ts=_ts(doc, "ts", "", required=False),
        raw=doc,
    )


_BUILDERS: Final[dict[str, Callable[[str, dict[str, Any]], Message]]] = {
    "presence": _presence,
    "status": _status,
    "event": _event,
    "reported": _reported,
    "cmd/result": _cmd_result,
}
