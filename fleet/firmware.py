"""Hardware-model files (`firmware_configs/<model>.toml`): load them, and refuse bad ones.

One TOML file per terminal hardware model: what the hardware is (printer driver, trays, reader),
its paper thresholds and default intervals, and `[desired]`, the model's layer of the desired
configuration (DESIGN.md "Desired-state document": defaults <- model <- site <- terminal).
`firmware_configs/schema.json` publishes the same format as JSON Schema; the checks here are
the authority (explicit Python, no jsonschema at run time, so that every message names the file
and the field), and a test keeps the two listing the same fields, types and bounds.

Every problem becomes one `FirmwareConfigError` naming file and field, e.g.
"firmware_configs/kx-a4-ipp.toml: trays[1].capacity: must be an integer in 1..5000".

Beyond types, a model must be consistent with itself: its id is its file name, the trays'
total fits a document's `paper.capacity`, thresholds are ordered (critical < low), and anything
`[desired]` states that the hardware sections also state (capacity, low_pct, media, timeouts,
intervals) agrees with them, so the file has one truth.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, NoReturn

from agent.desired.document import CONFIG_SCHEMA, MODEL_ID, DocumentError, check_config

#: The format of the files; a file states it as `format = 1`.
FORMAT: Final = 1
#: The repository's model files (next to the `fleet` package); `FLEET_FIRMWARE_DIR` overrides.
DEFAULT_FIRMWARE_DIR: Final = Path(__file__).resolve().parents[1] / "firmware_configs"
ENV_DIR: Final = "FLEET_FIRMWARE_DIR"

PRINTER_DRIVERS: Final = ("ipp", "escpos")
#: Reader hardware. The agent drives `pcsc` today; a QR scanner types into the kiosk UI (HID).
READER_TYPES: Final = ("pcsc", "qr-scanner", "none")
READER_INTERFACES: Final = ("usb-ccid", "usb-hid", "usb-serial", "rs232")
MAX_TRAYS: Final = 4
#: A document's `paper.capacity` must hold the trays' total.
MAX_TOTAL_CAPACITY: Final = int(CONFIG_SCHEMA["paper"]["capacity"][2])


class FirmwareConfigError(ValueError):
    """A model file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Tray:
    name: str
    #: Sheets (for a roll: receipts) a full tray holds.
    capacity: int


@dataclass(frozen=True)
class HardwareModel:
    id: str
    name: str
    vendor: str
    description: str
    #: The file it was read from.
    source: str
    printer_driver: str
    printer_media: str
    printer_timeout_s: float
    duplex: bool
    #: None: the printer has no toner to watch (thermal) or the fleet default applies.
    toner_low_pct: int | None
    trays: tuple[Tray, ...]
    #: The trays' total.
    paper_capacity: int
    paper_low_pct: int
    paper_critical_pct: int | None
    #: paper_low holds until the level is this far above low_pct (None: the fleet default).
    paper_clear_margin_pct: int | None
    reader_type: str
    reader_interface: str | None
    reader_timeout_s: float | None
    status_interval_s: int
    poll_interval_s: float | None
    debounce_s: float | None
    #: The model's layer of the desired configuration (CONFIG_SCHEMA shape, checked).
    desired: dict[str, Any] = field(hash=False)


# -- the format, as data (schema.json lists the same; tests/server/test_firmware.py checks) ------

Kind = Literal["string", "integer", "number", "boolean"]


@dataclass(frozen=True)
class Field:
    kind: Kind
    required: bool = True
    #: Bounds of the value (numbers) or of the length (strings).
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    pattern: str | None = None


TOP: Final[Mapping[str, Field]] = {
    "format": Field("integer", low=FORMAT, high=FORMAT),
    "id": Field("string", pattern=MODEL_ID.pattern),
    "name": Field("string", low=1, high=100),
    "vendor": Field("string", low=1, high=100),
    "description": Field("string", required=False, low=0, high=500),
}
PRINTER: Final[Mapping[str, Field]] = {
    "driver": Field("string", choices=PRINTER_DRIVERS),
    "media": Field("string", low=1, high=64),
    "timeout_s": Field("number", low=0.5, high=60),
    "duplex": Field("boolean", required=False),
    "toner_low_pct": Field("integer", required=False, low=1, high=99),
}
TRAY: Final[Mapping[str, Field]] = {
    "name": Field("string", low=1, high=32),
    "capacity": Field("integer", low=1, high=5000),
}
PAPER: Final[Mapping[str, Field]] = {
    "low_pct": Field("integer", low=1, high=99),
    "critical_pct": Field("integer", required=False, low=0, high=98),
    "clear_margin_pct": Field("integer", required=False, low=0, high=50),
}
READER: Final[Mapping[str, Field]] = {
    "type": Field("string", choices=READER_TYPES),
    "interface": Field("string", required=False, choices=READER_INTERFACES),
    "timeout_s": Field("number", required=False, low=0.5, high=60),
}
INTERVALS: Final[Mapping[str, Field]] = {
    "status_interval_s": Field("integer", low=5, high=3600),
    "poll_interval_s": Field("number", required=False, low=0.5, high=60),
    "debounce_s": Field("number", required=False, low=0, high=300),
}
#: Tables of the file (besides `trays`, an array of TRAY tables, and `desired`).
TABLES: Final[Mapping[str, Mapping[str, Field]]] = {
    "printer": PRINTER,
    "paper": PAPER,
    "reader": READER,
    "intervals": INTERVALS,
}


# -- loading -----------------------------------------------------------------------------------


def firmware_dir() -> Path:
    """The directory commands read by default: `$FLEET_FIRMWARE_DIR`, else the repository's."""
    env = os.environ.get(ENV_DIR)
    return Path(env) if env else DEFAULT_FIRMWARE_DIR


def model_files(directory: str | Path) -> list[Path]:
    """The model files of a directory (`*.toml`, sorted); README and schema.json are not."""
    d = Path(directory)
    if not d.is_dir():
        raise FirmwareConfigError(f"{d}: no such directory")
    return sorted(p for p in d.iterdir() if p.suffix == ".toml" and not p.name.startswith("."))


def load_models(directory: str | Path) -> dict[str, HardwareModel]:
    """Every model of a directory by id; the first bad file raises."""
    models = {}
    for path in model_files(directory):
        model = load_model(path)
        models[model.id] = model
    return models


def load_model(path: str | Path) -> HardwareModel:
    """Read and check one model file; raises FirmwareConfigError naming the file and field."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except IsADirectoryError:
        raise FirmwareConfigError(f"{source}: is a directory") from None
    except OSError as e:
        raise FirmwareConfigError(f"{source}: cannot read: {e.strerror or e}") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise FirmwareConfigError(f"{source}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise FirmwareConfigError(f"{source}: not valid TOML ({e})") from None
    return parse(doc, source=source, stem=Path(path).stem)


def parse(doc: dict[str, Any], *, source: str, stem: str | None = None) -> HardwareModel:
    """Check an already-parsed file. `stem` (the file name without .toml) must equal the id."""
    c = _Checker(source)
    c.known(doc, "", (*TOP, *TABLES, "trays", "desired"))
    top = c.fields(doc, "", TOP)
    if stem is not None and top["id"] != stem:
        c.fail("id", f"{top['id']!r} differs from the file name {stem + '.toml'!r}")
    tables = {}
    for name, spec in TABLES.items():
        table = c.table(doc, name)
        c.known(table, f"{name}.", spec)
        tables[name] = c.fields(table, f"{name}.", spec)
    printer, paper, reader, intervals = (
        tables[n] for n in ("printer", "paper", "reader", "intervals")
    )
    trays = _trays(c, doc)
    total = sum(t.capacity for t in trays)

    if printer["driver"] == "escpos":
        if printer.get("duplex"):
            c.fail("printer.duplex", "an ESC/POS receipt printer does not print duplex")
        if "toner_low_pct" in printer:
            c.fail("printer.toner_low_pct", "an ESC/POS (thermal) printer has no toner")
    if "critical_pct" in paper and paper["critical_pct"] >= paper["low_pct"]:
        c.fail("paper.critical_pct", f"must be below paper.low_pct ({paper['low_pct']})")
    if paper["low_pct"] + paper.get("clear_margin_pct", 0) >= 100:
        c.fail("paper.clear_margin_pct", "low_pct + clear_margin_pct must stay below 100")
    poll = intervals.get("poll_interval_s")
    if poll is not None and poll > intervals["status_interval_s"]:
        c.fail("intervals.poll_interval_s", "must not be longer than status_interval_s")
    if reader["type"] == "none" and ("interface" in reader or "timeout_s" in reader):
        c.fail("reader.type", '"none" takes no interface or timeout_s')

    desired = c.table(doc, "desired")
    try:
        check_config(desired, path="desired")
    except DocumentError as e:
        c.fail(e.path, e.problem)
    # What [desired] says about the hardware must be what the hardware sections say.
    agree = (
        (("paper", "capacity"), total, "the trays' total"),
        (("paper", "low_pct"), paper["low_pct"], "paper.low_pct"),
        (("printer", "media"), printer["media"], "printer.media"),
        (("printer", "timeout_s"), printer["timeout_s"], "printer.timeout_s"),
        (("reader", "timeout_s"), reader.get("timeout_s"), "reader.timeout_s"),
        (("status_interval_s",), intervals["status_interval_s"], "intervals.status_interval_s"),
        (("poll_interval_s",), intervals.get("poll_interval_s"), "intervals.poll_interval_s"),
        (("debounce_s",), intervals.get("debounce_s"), "intervals.debounce_s"),
    )
    for keys, expected, what in agree:
        value = _dig(desired, keys)
        if value is not None and expected is not None and value != expected:
            c.fail("desired." + ".".join(keys), f"{value!r} disagrees with {what} ({expected!r})")
    if reader["type"] == "none" and "reader" in desired:
        c.fail("desired.reader", "the model has no reader")

    return HardwareModel(
        id=top["id"],
        name=top["name"],
        vendor=top["vendor"],
        description=top.get("description", ""),
        source=source,
        printer_driver=printer["driver"],
        printer_media=printer["media"],
        printer_timeout_s=float(printer["timeout_s"]),
        duplex=bool(printer.get("duplex", False)),
        toner_low_pct=printer.get("toner_low_pct"),
        trays=trays,
        paper_capacity=total,
        paper_low_pct=paper["low_pct"],
        paper_critical_pct=paper.get("critical_pct"),
        paper_clear_margin_pct=paper.get("clear_margin_pct"),
        reader_type=reader["type"],
        reader_interface=reader.get("interface"),
        reader_timeout_s=_float_or_none(reader.get("timeout_s")),
        status_interval_s=intervals["status_interval_s"],
        poll_interval_s=_float_or_none(intervals.get("poll_interval_s")),
        debounce_s=_float_or_none(intervals.get("debounce_s")),
        desired=desired,
    )


def _trays(c: _Checker, doc: dict[str, Any]) -> tuple[Tray, ...]:
    raw = doc.get("trays")
    if raw is None:
        c.fail("trays", "missing (one [[trays]] table per paper tray or roll)")
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_TRAYS:
        c.fail("trays", f"must be an array of 1 to {MAX_TRAYS} tables ([[trays]])")
    trays: list[Tray] = []
    for i, item in enumerate(raw):
        where = f"trays[{i}]"
        if not isinstance(item, dict):
            c.fail(where, "must be a table")
        c.known(item, f"{where}.", TRAY)
        t = c.fields(item, f"{where}.", TRAY)
        if any(t["name"] == other.name for other in trays):
            c.fail(f"{where}.name", f"{t['name']!r} appears twice")
        trays.append(Tray(name=t["name"], capacity=t["capacity"]))
    total = sum(t.capacity for t in trays)
    if total > MAX_TOTAL_CAPACITY:
        c.fail("trays", f"total capacity {total} is over {MAX_TOTAL_CAPACITY} sheets")
    return tuple(trays)


class _Checker:
    """Typed reads of one file's tables; every failure names `source: field`."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> NoReturn:
        raise FirmwareConfigError(f"{self.source}: {where}: {problem}")

    def table(self, doc: dict[str, Any], name: str) -> dict[str, Any]:
        if name not in doc:
            self.fail(name, f"missing (a [{name}] table)")
        value = doc[name]
        if not isinstance(value, dict):
            self.fail(name, f"must be a table, not {_kind(value)}")
        return value

    def known(self, doc: dict[str, Any], prefix: str, names: Any) -> None:
        allowed = set(names)
        for key in doc:
            if key not in allowed:
                self.fail(prefix + key, "unknown field")

    def fields(self, doc: dict[str, Any], prefix: str, spec: Mapping[str, Field]) -> dict[str, Any]:
        """The table's values named in `spec`, each checked against its Field."""
        out: dict[str, Any] = {}
        for key, rule in spec.items():
            where = prefix + key
            if key not in doc:
                if rule.required:
                    self.fail(where, f"missing ({_expected(rule)})")
                continue
            value = doc[key]
            if not _fits(value, rule):
                self.fail(where, f"must be {_expected(rule)}")
            out[key] = value
        return out


def _fits(value: Any, rule: Field) -> bool:
    if rule.kind == "boolean":
        return isinstance(value, bool)
    if rule.kind == "string":
        if not isinstance(value, str):
            return False
        if rule.choices:
            return value in rule.choices
        if rule.pattern is not None:
            return re.fullmatch(rule.pattern, value) is not None
        return _within(len(value), rule)
    if isinstance(value, bool):
        return False
    if rule.kind == "integer":
        return isinstance(value, int) and _within(value, rule)
    return isinstance(value, int | float) and math.isfinite(value) and _within(value, rule)


def _within(value: float, rule: Field) -> bool:
    return (rule.low is None or value >= rule.low) and (rule.high is None or value <= rule.high)


def _expected(rule: Field) -> str:
    if rule.kind == "boolean":
        return "true or false"
    if rule.kind == "string":
        if rule.choices:
            return "one of " + ", ".join(rule.choices)
        if rule.pattern is not None:
            return f"a string matching {rule.pattern}"
        return f"a string of {rule.low:g} to {rule.high:g} characters"
    article = "an integer" if rule.kind == "integer" else "a number"
    return f"{article} in {rule.low:g}..{rule.high:g}"


def _dig(doc: dict[str, Any], keys: tuple[str, ...]) -> Any:
    value: Any = doc
    for k in keys:
        if not isinstance(value, dict) or k not in value:
            return None
        value = value[k]
    return value


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, bool):
        return "a boolean"
    return {str: "a string", int: "an integer", float: "a number"}.get(type(value), "a value")
