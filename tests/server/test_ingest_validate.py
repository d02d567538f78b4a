"""The ingest validator: exactly what the agent sends is accepted, anything else is a Rejection."""

from __future__ import annotations

import contextlib
import json
import random
from datetime import UTC, datetime
from typing import Any

import pytest

from agent import report
from agent.drivers.base import PaperLevel, PrinterStatus, ReaderStatus
from fleet.server.ingest import validate
from fleet.server.ingest.validate import (
    MAX_PAYLOAD_BYTES,
    CmdResult,
    Event,
    Presence,
    Rejection,
    Reported,
    Status,
    parse,
    parse_topic,
)

T = "T-0001"
TS = "2026-11-27T09:30:00Z"


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def agent_status(**over: Any) -> dict[str, Any]:
    """A status report built by the agent's own code (agent/report.py), as the reporter does."""
    printer = PrinterStatus(
        driver="ipp",
        state="idle",
        reasons=("media-low",),
        paper=PaperLevel(level_pct=18, sheets_left=90, capacity=500),
        toner_pct=41,
        pages_total=18211,
    )
    reader = ReaderStatus(driver="pcsc", state="ok", card_present=False)
    doc = report.status(
        seq=1041,
        agent_version="1.2.0",
        printer=printer,
        reader=reader,
        host={"uptime_s": 86400, "disk_free_mb": 5120},
        desired="sha256:abc",
        ts=TS,
    )
    doc["outbox"] = {"queued": 0, "dropped_status": 0, "dropped_events": 0, "rejected": 0}
    doc.update(over)
    return doc


def rejected(result: object, reason: str) -> Rejection:
    assert isinstance(result, Rejection), result
    assert result.reason == reason, result
    return result


# -- what the agent sends ---------------------------------------------------------------------


def test_agent_status_is_accepted_with_every_field() -> None:
    doc = agent_status()
    msg = parse(report.topic(T, "status"), dumps(doc))
    assert isinstance(msg, Status)
    assert (msg.terminal, msg.seq, msg.agent, msg.desired) == (T, 1041, "1.2.0", "sha256:abc")
    assert msg.ts == datetime(2026, 11, 27, 9, 30, tzinfo=UTC)
    assert msg.printer is not None and msg.printer.state == "idle"
    assert msg.printer.reasons == ("media-low",)
    assert msg.printer.paper is not None and msg.printer.paper.level_pct == 18
    assert msg.reader is not None and msg.reader.state == "ok"
    assert msg.raw == doc  # extras (outbox, estimated, reader_name, ...) are kept


def test_agent_status_with_unreadable_devices_and_unknown_levels() -> None:
    printer = PrinterStatus(driver="escpos", state="offline", reasons=("offline",))
    doc = report.status(seq=1, agent_version="1.2.0", printer=printer, reader=None, host={}, ts=TS)
    msg = parse(report.topic(T, "status"), dumps(doc))
    assert isinstance(msg, Status)
    assert msg.printer is not None and msg.printer.paper is None
    assert msg.reader is None and msg.desired is None


def test_agent_presence_event_and_will() -> None:
    msg = parse(report.topic(T, "presence"), dumps(report.presence(True, "1.2.0", ts=TS)))
    assert isinstance(msg, Presence) and msg.online and msg.agent == "1.2.0"
    will = parse(report.topic(T, "presence"), dumps(report.presence(False, "1.2.0")))
    assert isinstance(will, Presence) and not will.online and will.reason is None
    ev = report.event(
        seq=7, kind="print_completed", agent_version="1.2.0", pages=1, serial=None, ts=TS
    )
    msg2 = parse(report.topic(T, "event"), dumps(ev))
    assert isinstance(msg2, Event)
    assert (msg2.event, msg2.seq, msg2.raw["pages"]) == ("print_completed", 7, 1)


def test_reported_and_cmd_result_are_kept_raw() -> None:
    r = parse(f"fleet/v1/t/{T}/reported", dumps({"v": 1, "version": 3, "hash": "sha256:x"}))
    assert isinstance(r, Reported) and r.seq is None and r.raw["version"] == 3
    c = parse(f"fleet/v1/t/{T}/cmd/result", dumps({"v": 1, "id": "c1", "ok": True, "seq": 4}))
    assert isinstance(c, CmdResult) and c.seq == 4
    rejected(parse(f"fleet/v1/t/{T}/reported", dumps({"v": 1, "seq": -1})), "schema")


@pytest.mark.parametrize(
    "ts", ["2026-11-27T09:30:00Z", "2026-11-27T09:30:00.123Z", "2026-11-27T09:30:00+00:00"]
)
def test_utc_timestamps(ts: str) -> None:
    assert isinstance(parse(report.topic(T, "status"), dumps(agent_status(ts=ts))), Status)


# -- topics -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic",
    [
        "fleet/v1/t/T-1/desired",  # server -> agent, never ingested
        "fleet/v1/t/T-1/cmd",
        "fleet/v1/t/T-1/status/extra",
        "fleet/v2/t/T-1/status",
        "fleet/v1/t//status",
        "fleet/v1/t/-bad/status",
        "fleet/v1/t/" + "x" * 65 + "/status",
        "fleet/v1/t/T 1/status",
        "fleet/v1/t/T-1",
        "other",
        "",
    ],
)
def test_bad_topics(topic: str) -> None:
    assert parse_topic(topic) is None
    rejected(parse(topic, dumps(agent_status())), "bad_topic")


def test_rejected_topic_fits_the_dead_letter_column() -> None:
    r = rejected(parse("x" * 10_000, b"{}"), "bad_topic")
    assert len(r.topic) == validate.MAX_TOPIC_CHARS and r.terminal is None


def test_topic_kinds() -> None:
    assert parse_topic("fleet/v1/t/T_9/cmd/result") == ("T_9", "cmd/result")
    assert parse_topic("fleet/v1/t/" + "a" * 64 + "/status") == ("a" * 64, "status")


# -- rejections, in order -----------------------------------------------------------------------


def test_size_is_checked_before_parsing() -> None:
    big = b"{" * (MAX_PAYLOAD_BYTES + 1)  # would be "too deep" if it were parsed
    r = rejected(parse(report.topic(T, "status"), big), "payload_too_large")
    assert r.terminal == T
    ok = agent_status(pad="x" * (MAX_PAYLOAD_BYTES - len(dumps(agent_status())) - 9))
    assert len(dumps(ok)) == MAX_PAYLOAD_BYTES
    assert isinstance(parse(report.topic(T, "status"), dumps(ok)), Status)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe{}", "not_utf8"),
        (b"", "not_json"),
        (b"{", "not_json"),
        (b'{"v":1,"seq":NaN}', "not_json"),
        (b'{"v":1,"x":Infinity}', "not_json"),
        (b'{"v":1,"x":-Infinity}', "not_json"),
        (b'{"v":1,"x":1e999}', "not_json"),
        (b'{"v":1,"seq":' + b"9" * 5000 + b"}", "not_json"),
        (b"[" * 100_000 + b"]" * 100_000, "payload_too_large"),
        (b"[" * 30_000 + b"]" * 30_000, "too_deep"),
        (b'{"a":' * 40 + b"1" + b"}" * 40, "too_deep"),
        (b"[1,2]", "not_object"),
        (b'"v"', "not_object"),
        (b"null", "not_object"),
        (b"{}", "bad_version"),
        (b'{"v":2}', "bad_version"),
        (b'{"v":true}', "bad_version"),
        (b'{"v":"1"}', "bad_version"),
        (b'{"v":1.0}', "bad_version"),
        (b'{"v":1,"terminal":"T-0002"}', "terminal_mismatch"),
        (b'{"v":1,"terminal_id":"T-0002"}', "terminal_mismatch"),
    ],
)
def test_rejection_reasons(payload: bytes, reason: str) -> None:
    rejected(parse(report.topic(T, "status"), payload), reason)


def test_deep_but_allowed_nesting_is_kept() -> None:
    nested: Any = 1
    for _ in range(validate.MAX_DEPTH - 1):
        nested = {"a": nested}
    assert isinstance(parse(report.topic(T, "status"), dumps(agent_status(x=nested))), Status)
    many_flat = agent_status(xs=[[1]] * 100)  # many brackets, shallow: the exact walk says ok
    assert isinstance(parse(report.topic(T, "status"), dumps(many_flat)), Status)


@pytest.mark.parametrize(
    "payload",
    [
        rb'{"v":1,"seq":1,"ts":"2026-11-27T09:30:00Z","agent":"a\u0000b"}',
        rb'{"v":1,"seq":1,"ts":"2026-11-27T09:30:00Z","agent":"1","x\u0000":1}',
        rb'{"v":1,"seq":1,"ts":"2026-11-27T09:30:00Z","agent":"1","x":"\ud800"}',
        rb'{"v":1,"seq":1,"ts":"2026-11-27T09:30:00Z","agent":"1","x":["\udfff\ud800"]}',
    ],
)
def test_strings_a_database_cannot_store_are_refused(payload: bytes) -> None:
    r = rejected(parse(report.topic(T, "status"), payload), "schema")
    assert "cannot be stored" in r.detail


def test_escaped_non_ascii_is_fine() -> None:
    doc = agent_status(note="\u6267\u7167 \U0001f600")
    payload = json.dumps(doc, ensure_ascii=True).encode()  # emoji as a surrogate pair
    assert b"\\ud83d\\ude00" in payload
    msg = parse(report.topic(T, "status"), payload)
    assert isinstance(msg, Status) and msg.raw["note"] == "\u6267\u7167 \U0001f600"


def test_matching_terminal_field_is_fine() -> None:
    assert isinstance(parse(report.topic(T, "status"), dumps(agent_status(terminal=T))), Status)


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    node = doc
    *parents, last = path.split(".")
    for p in parents:
        node = node[p]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value
    return doc


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        ("seq", _DELETE, "seq: missing"),
        ("seq", -1, "seq: -1 is outside"),
        ("seq", 2**63, "seq:"),
        ("seq", "5", "seq: expected an integer"),
        ("seq", 5.0, "seq: expected an integer"),
        ("seq", True, "seq: expected an integer"),
        ("seq", None, "seq: must not be null"),
        ("ts", _DELETE, "ts: missing"),
        ("ts", "2026-11-27T09:30:00", "ts: '2026-11-27T09:30:00' is not UTC"),
        ("ts", "2026-11-27T09:30:00+08:00", "is not UTC"),
        ("ts", "yesterday", "is not ISO 8601"),
        ("ts", 1764235800, "ts: expected a string"),
        ("agent", _DELETE, "agent: missing"),
        ("agent", "1." * 20, "agent: longer than 32"),
        ("desired", 5, "desired: expected a string"),
        ("printer", [], "printer: expected an object"),
        ("printer.state", "jammed", "printer.state: 'jammed' is not one of"),
        ("printer.state", _DELETE, "printer.state: missing"),
        ("printer.driver", None, "printer.driver: must not be null"),
        ("printer.reasons", "media-low", "printer.reasons: expected an array"),
        ("printer.reasons", ["ok", 3], "printer.reasons[1]: expected a string"),
        ("printer.paper.level_pct", 101, "printer.paper.level_pct: 101 is outside 0..100"),
        ("printer.paper.level_pct", -0.5, "printer.paper.level_pct: -0.5 is outside"),
        ("printer.paper.level_pct", "18", "printer.paper.level_pct: expected a number"),
        ("printer.paper.sheets_left", -1, "printer.paper.sheets_left:"),
        ("printer.paper", 5, "printer.paper: expected an object"),
        ("printer.toner_pct", 200, "printer.toner_pct:"),
        ("printer.pages_total", 1.5, "printer.pages_total:"),
        ("reader.state", "broken", "reader.state:"),
        ("reader.card_present", "no", "reader.card_present: expected true or false"),
        ("host", "up", "host: expected an object"),
    ],
)
def test_schema_errors_name_the_field(path: str, value: Any, where: str) -> None:
    r = rejected(
        parse(report.topic(T, "status"), dumps(_set(agent_status(), path, value))), "schema"
    )
    assert where in r.detail


def test_event_and_presence_schema() -> None:
    ev = report.event(seq=1, kind="device_error", agent_version="1", ts=TS, reason="media-jam")
    for bad_name in ("", "Device Error", 5, None, "x" * 33):
        r = rejected(parse(report.topic(T, "event"), dumps({**ev, "event": bad_name})), "schema")
        assert r.detail.startswith("event")
    pres = report.presence(True, "1", ts=TS)
    r = rejected(parse(report.topic(T, "presence"), dumps({**pres, "online": "yes"})), "schema")
    assert r.detail.startswith("online")
    rejected(parse(report.topic(T, "presence"), dumps({**pres, "ts": None})), "schema")
    rejected(parse(report.topic(T, "presence"), dumps({**pres, "agent": "9" * 33})), "schema")
    assert isinstance(parse(report.topic(T, "presence"), dumps({**pres, "agent": None})), Presence)


def test_optional_fields_may_be_null() -> None:
    doc = agent_status()
    doc["printer"]["paper"] = {"level_pct": None, "sheets_left": None, "capacity": None}
    doc["printer"]["toner_pct"] = None
    doc["printer"]["pages_total"] = None
    doc["printer"]["reasons"] = None
    doc["reader"]["card_present"] = None
    msg = parse(report.topic(T, "status"), dumps(doc))
    assert isinstance(msg, Status) and msg.printer is not None
    assert msg.printer.reasons == () and msg.printer.paper is not None
    assert msg.printer.paper.level_pct is None


# -- never raises -------------------------------------------------------------------------------


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(5)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b:
            del b[min(i, len(b) - 1)]
        elif op == 1:
            b[i:i] = bytes([rng.randrange(256)])
        elif op == 2 and b:
            b[min(i, len(b) - 1)] = rng.choice(b'{}[]",:0123456789eE.-+ntfaluNIxyz\\')
        elif op == 3:
            b[i:i] = rng.choice(
                [b"NaN", b"1e400", b"-", b"[[[[", b'"\\ud800"', b"null", b"9" * 50, b"\x00"]
            )
        else:
            j = rng.randrange(len(b) + 1)
            b[i:i] = b[min(i, j) : max(i, j)]
    return bytes(b)


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.randrange(9 if depth < 6 else 6)
    if pick == 0:
        return None
    if pick == 1:
        return rng.choice([True, False])
    if pick == 2:
        return rng.choice([0, -1, 1, 2**70, -(2**70), 100, 101, 1041])
    if pick == 3:
        return rng.choice([0.5, -1e300, 1e-300, 18.0, 99.99])
    if pick == 4:
        return rng.choice(["", "idle", "ok", TS, "1.2.0", "\u00e9\u6267\u7167", "x" * 300])
    if pick == 5:
        return rng.choice(["2026-02-30T00:00:00Z", "2026-11-27T09:30:00+08:00", "Z"])
    if pick == 6:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["v", "seq", "ts", "agent", "printer", "reader", "paper", "state", "level_pct", "x"]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(6))}


def test_fuzz_never_raises() -> None:
    rng = random.Random(20261127)
    seeds = [
        dumps(agent_status()),
        dumps(report.presence(False, "1.2.0", ts=TS)),
        dumps(report.event(seq=3, kind="paper_refilled", agent_version="1", ts=TS, how="x")),
    ]
    topics = [report.topic(T, k) for k in ("status", "event", "presence", "reported")]
    topics += [f"fleet/v1/t/{T}/cmd/result", "fleet/v1/t/x y/status", "#"]
    counts: dict[str, int] = {}
    for i in range(4000):
        if i % 4 == 0:
            payload = dumps(_random_json(rng))
        elif i % 4 == 1:
            doc = agent_status()
            _set(
                doc,
                rng.choice(["seq", "ts", "printer.state", "printer.paper", "reader"]),
                _random_json(rng),
            )
            payload = dumps(doc)
        elif i % 4 == 2:
            payload = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        else:
            payload = _mutate(rng, rng.choice(seeds))
        result = parse(rng.choice(topics), payload)
        key = result.reason if isinstance(result, Rejection) else result.kind
        counts[key] = counts.get(key, 0) + 1
    assert "internal_error" not in counts, counts
    # The fuzz reaches deep into the schema, not only the JSON parser.
    assert counts.get("schema", 0) > 100 and counts.get("not_json", 0) > 100, counts
    accepted = sum(counts.get(k, 0) for k in validate.KINDS)
    assert accepted > 100, counts


def test_internal_errors_are_contained(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(terminal: str, doc: dict[str, Any]) -> Any:
        raise KeyError("bug")

    monkeypatch.setitem(validate._BUILDERS, "status", boom)
    rejected(parse(report.topic(T, "status"), dumps(agent_status())), "internal_error")


def _mutations(rng: random.Random) -> list[Any]:
    """Values that break a field's type, range or enum, or are fine."""
    return [
        None,
        True,
        -1,
        0,
        1,
        50,
        100,
        101,
        1.5,
        float("inf"),
        "",
        "x",
        "idle",
        "offline",
        "media-low-report",
        [],
        ["media-low"],
        [1],
        {},
        {"level_pct": 200},
        2**63,
        rng.random(),
    ]


def test_fast_status_path_never_accepts_what_the_generic_checks_refuse() -> None:
    """The specialised status path duplicates the generic checks for speed: pin them together.

    For every mutated report, the fast path either gives exactly the generic result or steps
    aside (None); it never accepts a report the generic readers refuse.
    """
    rng = random.Random(20261127)
    paths = [
        "seq",
        "ts",
        "agent",
        "desired",
        "host",
        "printer",
        "printer.state",
        "printer.reasons",
        "printer.paper",
        "printer.paper.level_pct",
        "printer.paper.sheets_left",
        "printer.paper.capacity",
        "printer.paper.estimated",
        "printer.toner_pct",
        "printer.pages_total",
        "reader",
        "reader.state",
        "reader.card_present",
    ]
    checked = 0
    for _ in range(3000):
        doc = agent_status()
        for path in rng.sample(paths, rng.randint(1, 3)):
            # A parent replaced by an earlier mutation may no longer hold the child: skip it.
            with contextlib.suppress(TypeError, KeyError):
                doc = _set(doc, path, rng.choice(_mutations(rng)))
        fast = validate._status_fast("T-0001", doc)
        try:
            generic = validate._status_generic("T-0001", doc)
        except validate._SchemaError:
            assert fast is None, doc
            continue
        if fast is not None:
            assert fast == generic, doc
            checked += 1
    assert checked > 100, "too few reports went through both paths to compare them"
