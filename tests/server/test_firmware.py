"""Hardware-model files (firmware_configs/): the shipped ones load, broken ones are refused with
the file and the field named, schema.json describes what the checker checks, and `fleet config
validate` says so with its exit status."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.desired.document import CONFIG_SCHEMA, MODEL_ID, check_config
from fleet.firmware import (
    DEFAULT_FIRMWARE_DIR,
    MAX_TRAYS,
    TABLES,
    TOP,
    TRAY,
    Field,
    FirmwareConfigError,
    HardwareModel,
    Tray,
    load_model,
    load_models,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "firmware_configs"
SCHEMA = json.loads((SHIPPED / "schema.json").read_text("utf-8"))
FLEET = Path(sys.executable).parent / "fleet"


def shipped_files() -> list[Path]:
    return sorted(SHIPPED.glob("*.toml"))


# -- the shipped files ---------------------------------------------------------------------------


def test_default_dir_is_the_repositorys() -> None:
    assert DEFAULT_FIRMWARE_DIR == SHIPPED


@pytest.mark.parametrize("path", shipped_files(), ids=lambda p: p.stem)
def test_every_shipped_file_loads(path: Path) -> None:
    m = load_model(path)
    assert m.id == path.stem and MODEL_ID.fullmatch(m.id)
    assert m.source == str(path)
    assert m.paper_capacity == sum(t.capacity for t in m.trays) > 0
    check_config(m.desired)
    assert m.desired.get("paper", {}).get("capacity", m.paper_capacity) == m.paper_capacity
    if m.printer_driver == "escpos":
        assert not m.duplex and m.toner_low_pct is None


def test_the_three_required_models() -> None:
    models = load_models(SHIPPED)
    assert {"kx-a4-ipp", "kx-receipt-escpos", "kx-a4-dualtray-ipp"} <= models.keys()
    a4, receipt, dual = (
        models[k] for k in ("kx-a4-ipp", "kx-receipt-escpos", "kx-a4-dualtray-ipp")
    )
    assert (a4.printer_driver, a4.reader_type, a4.paper_capacity) == ("ipp", "pcsc", 500)
    assert (receipt.printer_driver, receipt.reader_type) == ("escpos", "qr-scanner")
    assert "reader" not in receipt.desired  # the agent has no driver for a QR scanner
    assert dual.trays == (Tray("tray-1", 550), Tray("tray-2", 550))
    assert dual.paper_capacity == dual.desired["paper"]["capacity"] == 1100
    assert isinstance(dual, HardwareModel) and dual.status_interval_s == 30


def test_load_models_skips_readme_and_schema(tmp_path: Path) -> None:
    for p in SHIPPED.iterdir():
        shutil.copy(p, tmp_path)
    assert sorted(load_models(tmp_path)) == sorted(p.stem for p in shipped_files())
    with pytest.raises(FirmwareConfigError, match="no such directory"):
        load_models(tmp_path / "missing")


# -- broken files --------------------------------------------------------------------------------

A4 = (SHIPPED / "kx-a4-ipp.toml").read_text("utf-8")
DUAL = (SHIPPED / "kx-a4-dualtray-ipp.toml").read_text("utf-8")
RECEIPT = (SHIPPED / "kx-receipt-escpos.toml").read_text("utf-8")


def edit(text: str, old: str, new: str, count: int = 1) -> str:
    assert old in text, old
    return text.replace(old, new, count)


def second(text: str, old: str, new: str) -> str:
    """Replace the second occurrence of `old`."""
    first = text.index(old) + len(old)
    return text[:first] + edit(text[first:], old, new)


BROKEN: list[tuple[str, str, str, str]] = [
    # (case, file, text, expected "field: problem")
    (
        "wrong type",
        "kx-a4-dualtray-ipp",
        second(DUAL, "capacity = 550", 'capacity = "550"'),
        "trays[1].capacity: must be an integer in 1..5000",
    ),
    (
        "out of range",
        "kx-a4-ipp",
        edit(A4, "capacity = 500", "capacity = 9000"),
        "trays[0].capacity: must be an integer in 1..5000",
    ),
    (
        "unknown field",
        "kx-a4-ipp",
        edit(A4, "[printer]\n", "[printer]\ncolour = true\n"),
        "printer.colour: unknown field",
    ),
    ("unknown table", "kx-a4-ipp", A4 + "\n[scanner]\ntype = 'qr'\n", "scanner: unknown field"),
    (
        "unknown tray field",
        "kx-a4-ipp",
        edit(A4, "capacity = 500", "capacity = 500\nsize = 'A4'"),
        "trays[0].size: unknown field",
    ),
    (
        "id is not the file name",
        "kx-a4-ipp",
        edit(A4, 'id = "kx-a4-ipp"', 'id = "kx-a4"'),
        "id: 'kx-a4' differs from the file name 'kx-a4-ipp.toml'",
    ),
    (
        "bad id",
        "KX",
        edit(A4, 'id = "kx-a4-ipp"', 'id = "KX"'),
        "id: must be a string matching ^[a-z0-9][a-z0-9_-]{0,63}$",
    ),
    (
        "missing field",
        "kx-a4-ipp",
        edit(A4, 'driver = "ipp"\n', ""),
        "printer.driver: missing (one of ipp, escpos)",
    ),
    (
        "missing table",
        "kx-a4-ipp",
        edit(A4, "[reader]\ntype", "[reader_]\ntype"),
        "reader_: unknown field",
    ),
    (
        "unknown driver",
        "kx-a4-ipp",
        edit(A4, 'driver = "ipp"', 'driver = "pcl"'),
        "printer.driver: must be one of ipp, escpos",
    ),
    (
        "bool is not a number",
        "kx-a4-ipp",
        edit(A4, "timeout_s = 5.0", "timeout_s = true"),
        "printer.timeout_s: must be a number in 0.5..60",
    ),
    (
        "format",
        "kx-a4-ipp",
        edit(A4, "format = 1", "format = 2"),
        "format: must be an integer in 1..1",
    ),
    (
        "tray total disagrees",
        "kx-a4-dualtray-ipp",
        edit(DUAL, "capacity = 1100", "capacity = 550"),
        "desired.paper.capacity: 550 disagrees with the trays' total (1100)",
    ),
    (
        "low_pct disagrees",
        "kx-a4-ipp",
        second(A4, "low_pct = 20", "low_pct = 30"),
        "desired.paper.low_pct: 30 disagrees with paper.low_pct (20)",
    ),
    (
        "media disagrees",
        "kx-a4-ipp",
        second(A4, 'media = "iso_a4_210x297mm"', 'media = "a4"'),
        "desired.printer.media: 'a4' disagrees with printer.media ('iso_a4_210x297mm')",
    ),
    (
        "invalid desired value",
        "kx-a4-ipp",
        edit(A4, "idle_timeout_s = 120", "idle_timeout_s = 5"),
        "desired.kiosk.idle_timeout_s: 5 is outside 10..3600",
    ),
    (
        "unknown desired setting",
        "kx-a4-ipp",
        edit(A4, "[desired.kiosk]\n", "[desired.kiosk]\nx=1\n"),
        "desired.kiosk.x: unknown setting",
    ),
    (
        "desired not a table",
        "kx-a4-ipp",
        'desired = "yes"\n' + A4.split("[desired]")[0],
        "desired: must be a table, not a string",
    ),
    ("no desired", "kx-a4-ipp", A4.split("[desired]")[0], "desired: missing (a [desired] table)"),
    (
        "no trays",
        "kx-a4-ipp",
        edit(A4, '[[trays]]\nname = "tray-1"\ncapacity = 500\n', ""),
        "trays: missing",
    ),
    (
        "empty trays",
        "kx-a4-ipp",
        "trays = []\n" + edit(A4, '[[trays]]\nname = "tray-1"\ncapacity = 500\n', ""),
        f"trays: must be an array of 1 to {MAX_TRAYS} tables",
    ),
    (
        "duplicate tray",
        "kx-a4-dualtray-ipp",
        edit(DUAL, 'name = "tray-2"', 'name = "tray-1"'),
        "trays[1].name: 'tray-1' appears twice",
    ),
    (
        "trays over a document's capacity",
        "kx-a4-ipp",
        edit(
            A4,
            "capacity = 500\n",
            "capacity = 5000\n" + "[[trays]]\nname='b'\ncapacity=5000\n"
            "[[trays]]\nname='c'\ncapacity=5000\n",
        ),
        "trays: total capacity 15000 is over 10000 sheets",
    ),
    (
        "critical above low",
        "kx-a4-ipp",
        edit(A4, "critical_pct = 5", "critical_pct = 20"),
        "paper.critical_pct: must be below paper.low_pct (20)",
    ),
    (
        "margin past 100",
        "kx-a4-ipp",
        edit(A4, "clear_margin_pct = 5", "clear_margin_pct = 50").replace(
            "low_pct = 20", "low_pct = 60"
        ),
        "paper.clear_margin_pct: low_pct + clear_margin_pct must stay below 100",
    ),
    (
        "poll slower than status",
        "kx-a4-ipp",
        A4.replace("poll_interval_s = 2.0", "poll_interval_s = 40"),
        "intervals.poll_interval_s: must not be longer than status_interval_s",
    ),
    (
        "escpos duplex",
        "kx-receipt-escpos",
        edit(RECEIPT, "timeout_s = 2.0\n", "timeout_s = 2.0\nduplex = true\n"),
        "printer.duplex: an ESC/POS receipt printer does not print duplex",
    ),
    (
        "escpos toner",
        "kx-receipt-escpos",
        edit(RECEIPT, "timeout_s = 2.0\n", "timeout_s = 2.0\ntoner_low_pct = 10\n"),
        "printer.toner_low_pct: an ESC/POS (thermal) printer has no toner",
    ),
    (
        "no reader but desired.reader",
        "kx-a4-ipp",
        edit(A4, 'type = "pcsc"\ninterface = "usb-ccid"\ntimeout_s = 3.0', 'type = "none"'),
        "desired.reader: the model has no reader",
    ),
    ("bad TOML", "kx-a4-ipp", edit(A4, 'name = "KX-A4', "name = KX-A4"), "not valid TOML"),
    ("half-written (cut mid-string)", "kx-a4-ipp", A4[: A4.index('"iso_a4') + 5], "not valid TOML"),
    (
        "half-written (cut after a table)",
        "kx-a4-ipp",
        A4[: A4.index("[[trays]]")],
        "paper: missing (a [paper] table)",
    ),
    ("empty file", "kx-a4-ipp", "", "format: missing"),
]


@pytest.mark.parametrize(
    ("stem", "text", "expected"),
    [(stem, text, expected) for _, stem, text, expected in BROKEN],
    ids=[case for case, *_ in BROKEN],
)
def test_broken_file_names_path_and_field(
    tmp_path: Path, stem: str, text: str, expected: str
) -> None:
    path = tmp_path / f"{stem}.toml"
    path.write_text(text, "utf-8")
    with pytest.raises(FirmwareConfigError) as e:
        load_model(path)
    message = str(e.value)
    assert message.startswith(f"{path}: "), message
    assert expected in message, message


def test_not_utf8_and_unreadable(tmp_path: Path) -> None:
    bad = tmp_path / "kx-a4-ipp.toml"
    bad.write_bytes(A4.encode("gbk", errors="replace"))
    with pytest.raises(FirmwareConfigError, match=f"^{re.escape(str(bad))}: not UTF-8 text$"):
        load_model(bad)
    with pytest.raises(FirmwareConfigError, match="cannot read"):
        load_model(tmp_path / "missing.toml")
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(FirmwareConfigError, match="is a directory"):
        load_model(tmp_path / "dir.toml")


def test_every_truncation_is_refused_or_loads_never_crashes(tmp_path: Path) -> None:
    """A file cut anywhere (a copy or an editor interrupted) is a FirmwareConfigError naming
    the file, never another exception."""
    path = tmp_path / "kx-a4-ipp.toml"
    data = A4.encode()
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        try:
            load_model(path)
        except FirmwareConfigError as e:
            assert str(e).startswith(f"{path}: "), (cut, str(e))


# -- schema.json says what the checker checks ----------------------------------------------------

ANNOTATIONS = {"description", "default", "examples", "$comment", "title"}


def fragment(rule: Field) -> dict[str, Any]:
    """The JSON Schema a Field stands for."""
    out: dict[str, Any] = {"type": rule.kind}
    if rule.choices:
        out["enum"] = list(rule.choices)
    elif rule.pattern is not None:
        out["pattern"] = rule.pattern
    elif rule.kind == "string":
        out["minLength"], out["maxLength"] = rule.low, rule.high
    elif rule.kind in ("integer", "number"):
        out["minimum"], out["maximum"] = rule.low, rule.high
    return out


def checks(prop: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in prop.items() if k not in ANNOTATIONS}


def assert_object_matches(schema: dict[str, Any], spec: dict[str, Field], where: str) -> None:
    assert schema["type"] == "object" and schema["additionalProperties"] is False, where
    assert set(schema["properties"]) == set(spec), where
    assert set(schema.get("required", [])) == {k for k, r in spec.items() if r.required}, where
    for key, rule in spec.items():
        assert checks(schema["properties"][key]) == fragment(rule), f"{where}.{key}"


def test_schema_is_2020_12_and_lists_the_same_fields() -> None:
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert SCHEMA["additionalProperties"] is False
    assert set(SCHEMA["properties"]) == {*TOP, *TABLES, "trays", "desired"}
    assert set(SCHEMA["required"]) == {
        *(k for k, r in TOP.items() if r.required),
        *TABLES,
        "trays",
        "desired",
    }
    for key, rule in TOP.items():
        assert checks(SCHEMA["properties"][key]) == fragment(rule), key
    for name, spec in TABLES.items():
        assert_object_matches(SCHEMA["properties"][name], dict(spec), name)
    trays = SCHEMA["properties"]["trays"]
    assert (trays["type"], trays["minItems"], trays["maxItems"]) == ("array", 1, MAX_TRAYS)
    assert_object_matches(trays["items"], dict(TRAY), "trays[]")
    assert SCHEMA["properties"]["desired"] == {"$ref": "#/$defs/config"}


def test_schema_config_is_config_schema() -> None:
    config = SCHEMA["$defs"]["config"]
    assert config["additionalProperties"] is False and "required" not in config
    assert set(config["properties"]) == set(CONFIG_SCHEMA)

    def rule_fragment(rule: tuple[type, float, float]) -> dict[str, Any]:
        kind, low, high = rule
        if kind is str:
            return {"type": "string", "minLength": low, "maxLength": high}
        return {"type": "integer" if kind is int else "number", "minimum": low, "maximum": high}

    for key, rule in CONFIG_SCHEMA.items():
        prop = config["properties"][key]
        if key == "service_hours":
            assert prop["required"] == ["tz", "days"]
            continue
        if isinstance(rule, dict):
            assert prop["additionalProperties"] is False and set(prop["properties"]) == set(rule)
            for sub, r in rule.items():
                assert checks(prop["properties"][sub]) == rule_fragment(r), f"{key}.{sub}"
        else:
            assert checks(prop) == rule_fragment(rule), key


def test_hardware_bounds_fit_the_desired_bounds() -> None:
    """A value that must agree with [desired] cannot be allowed where [desired] refuses it."""
    pairs = [
        (TABLES["printer"]["timeout_s"], CONFIG_SCHEMA["printer"]["timeout_s"]),
        (TABLES["reader"]["timeout_s"], CONFIG_SCHEMA["reader"]["timeout_s"]),
        (TABLES["paper"]["low_pct"], CONFIG_SCHEMA["paper"]["low_pct"]),
        (TABLES["intervals"]["status_interval_s"], CONFIG_SCHEMA["status_interval_s"]),
        (TABLES["intervals"]["poll_interval_s"], CONFIG_SCHEMA["poll_interval_s"]),
        (TABLES["intervals"]["debounce_s"], CONFIG_SCHEMA["debounce_s"]),
    ]
    for field, (_, low, high) in pairs:
        assert (field.low, field.high) == (low, high)
    assert (TABLES["printer"]["media"].low, TABLES["printer"]["media"].high) == (1, 64)


# -- fleet config validate -----------------------------------------------------------------------


def validate(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "FLEET_FIRMWARE_DIR"}
    proc = subprocess.run(
        [str(FLEET), "config", "validate", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**environ, **(env or {})},
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def test_validate_good_directory(tmp_path: Path) -> None:
    for p in shipped_files():
        shutil.copy(p, tmp_path)
    r = validate(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == len(shipped_files())
    assert all(line.startswith("ok ") for line in lines)
    assert any("kx-a4-dualtray-ipp (ipp, 2 tray(s), 1100 sheets" in line for line in lines)


def test_validate_defaults_to_the_repository_or_the_env(tmp_path: Path) -> None:
    r = validate()
    assert r.returncode == 0 and str(SHIPPED) in r.stdout, r.stdout + r.stderr
    (tmp_path / "kx-a4-ipp.toml").write_text(edit(A4, "format = 1", "format = 2"), "utf-8")
    r = validate(env={"FLEET_FIRMWARE_DIR": str(tmp_path)})
    assert r.returncode == 1 and "format: must be an integer" in r.stdout


def test_validate_reports_each_bad_file_and_exits_1(tmp_path: Path) -> None:
    for p in shipped_files():
        shutil.copy(p, tmp_path)
    (tmp_path / "kx-a4-dualtray-ipp.toml").write_text(
        second(DUAL, "capacity = 550", 'capacity = "550"'), "utf-8"
    )
    (tmp_path / "kx-half.toml").write_text(A4[: len(A4) // 2], "utf-8")
    r = validate(tmp_path)
    assert r.returncode == 1
    out = r.stdout.splitlines()
    assert len(out) == len(shipped_files()) + 1
    dual = tmp_path / "kx-a4-dualtray-ipp.toml"
    assert f"error {dual}: trays[1].capacity: must be an integer in 1..5000" in out
    assert any(line.startswith(f"error {tmp_path / 'kx-half.toml'}: ") for line in out)
    assert sum(line.startswith("ok ") for line in out) == len(shipped_files()) - 1
    assert "2 of 4 files are bad" in r.stderr


def test_validate_missing_or_empty_directory(tmp_path: Path) -> None:
    r = validate(tmp_path / "nope")
    assert r.returncode == 1 and "no such directory" in r.stderr
    r = validate(tmp_path)
    assert r.returncode == 1 and "no model files" in r.stderr


# -- the server reads them at start --------------------------------------------------------------


def test_server_setting_and_start_up_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleet.server.serve import load_hardware_models
    from fleet.server.settings import Settings

    monkeypatch.delenv("FLEET_FIRMWARE_DIR", raising=False)
    s = Settings(dev_mode=True)
    assert s.firmware_dir == DEFAULT_FIRMWARE_DIR
    assert set(load_hardware_models(s)) == {p.stem for p in shipped_files()}
    monkeypatch.setenv("FLEET_FIRMWARE_DIR", str(tmp_path))
    assert Settings(dev_mode=True).firmware_dir == tmp_path
    assert load_hardware_models(Settings(dev_mode=True)) == {}
    with pytest.raises(FirmwareConfigError, match="no such directory"):
        load_hardware_models(Settings(dev_mode=True, firmware_dir=tmp_path / "typo"))
    (tmp_path / "kx-a4-ipp.toml").write_text("format = 1\n", "utf-8")
    with pytest.raises(ValueError, match=r"kx-a4-ipp\.toml: id: missing"):
        load_hardware_models(Settings(dev_mode=True))
