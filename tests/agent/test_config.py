"""agent.toml: a good file loads; a bad one gets one line naming the field, never a traceback."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from agent import cli, config
from agent.config import ConfigError, load
from agent.drivers import factory
from tests.agent.agent_harness import FLEET_AGENT

GOOD = """\
terminal_id = "T-0001"
data_dir = "data"

[broker]
url = "mqtts://fleet.example.org"
password_file = "pw"
ca_file = "ca.pem"

[intervals]
status_interval_s = 10
debounce_s = 1.5

[outbox]
budget_bytes = 1_000_000

[printer]
driver = "sim"
capacity = 300
jam_rate = 0.01

[reader]
driver = "sim"
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    p = tmp_path / "agent.toml"
    p.write_text(text)
    return p


def test_good_config_loads_with_defaults(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, GOOD))
    assert cfg.terminal_id == "T-0001"
    assert cfg.data_dir == tmp_path / "data"  # relative to the config file
    b = cfg.broker
    assert (b.host, b.port, b.tls, b.username) == ("fleet.example.org", 8883, True, "T-0001")
    assert b.password == "s3cret"  # the file's trailing newline is not part of it
    assert "s3cret" not in repr(b)
    assert b.ca_file == tmp_path / "ca.pem"
    assert cfg.intervals.status_interval_s == 10.0
    assert cfg.intervals.poll_interval_s == 2.0
    assert cfg.intervals.debounce_s == 1.5
    assert cfg.outbox_budget_bytes == 1_000_000
    assert cfg.printer is not None and cfg.printer.driver == "sim"
    assert cfg.printer.settings == {"capacity": 300, "jam_rate": 0.01}
    assert cfg.reader is not None and cfg.reader.settings == {}
    assert cfg.config_public_key is None
    factory.check(cfg.printer, "printer")
    factory.check(cfg.reader, "reader")


def test_plain_tcp_url_defaults_to_1883(tmp_path: Path) -> None:
    text = GOOD.replace("mqtts://fleet.example.org", "mqtt://10.0.0.5").replace(
        'ca_file = "ca.pem"\n', ""
    )
    b = load(write(tmp_path, text)).broker
    assert (b.host, b.port, b.tls) == ("10.0.0.5", 1883, False)


def test_devices_are_optional(tmp_path: Path) -> None:
    text = GOOD.split("[printer]")[0]
    cfg = load(write(tmp_path, text))
    assert cfg.printer is None and cfg.reader is None


BAD = {
    "unknown printer driver": (
        ('driver = "sim"\ncapacity', 'driver = "ipx"\ncapacity'),
        "agent.toml: printer.driver: unknown driver 'ipx' (expected ipp, escpos, sim)",
    ),
    "unknown reader driver": (
        ('[reader]\ndriver = "sim"', '[reader]\ndriver = "ipp"'),
        "agent.toml: reader.driver: unknown driver 'ipp' (expected pcsc, sim)",
    ),
    "terminal id": (
        ('terminal_id = "T-0001"', 'terminal_id = "T 0001/../x"'),
        "agent.toml: terminal_id: 'T 0001/../x' does not match",
    ),
    "missing terminal id": (
        ('terminal_id = "T-0001"\n', ""),
        "agent.toml: terminal_id: missing (expected a string)",
    ),
    "url scheme": (
        ("mqtts://fleet.example.org", "http://fleet.example.org"),
        "agent.toml: broker.url: 'http://fleet.example.org': scheme must be mqtt:// or mqtts://",
    ),
    "credentials in url": (
        ("mqtts://fleet.example.org", "mqtts://u:p@fleet.example.org"),
        "agent.toml: broker.url: put credentials in broker.username",
    ),
    "bad port": (
        ("mqtts://fleet.example.org", "mqtts://fleet.example.org:99999"),
        "agent.toml: broker.url: 'mqtts://fleet.example.org:99999': bad port",
    ),
    "both passwords": (
        ('password_file = "pw"', 'password_file = "pw"\npassword = "x"'),
        "agent.toml: broker.password: give exactly one of broker.password and",
    ),
    "missing password file": (
        ('password_file = "pw"', 'password_file = "nope"'),
        "agent.toml: broker.password_file: nope: no such file",
    ),
    "ca file without tls": (
        ("mqtts://", "mqtt://"),
        "agent.toml: broker.ca_file: only used with an mqtts:// URL",
    ),
    "interval type": (
        ("status_interval_s = 10", 'status_interval_s = "10s"'),
        "agent.toml: intervals.status_interval_s: expected a number of seconds, got a string",
    ),
    "interval range": (
        ("status_interval_s = 10", "status_interval_s = 0"),
        "agent.toml: intervals.status_interval_s: 0 is below the minimum 0.05",
    ),
    "budget too small": (
        ("budget_bytes = 1_000_000", "budget_bytes = 1000"),
        "agent.toml: outbox.budget_bytes: 1000 is below the minimum 65536",
    ),
    "typo in a table": (
        ("debounce_s = 1.5", "debounce_sec = 1.5"),
        "agent.toml: intervals.debounce_sec: unknown setting",
    ),
    "unknown table": (
        ("[outbox]", "[outbx]"),
        "agent.toml: outbx: unknown setting",
    ),
    "path type": (
        ('data_dir = "data"', 'data_dir = ["data"]'),
        "agent.toml: data_dir: expected a path, got an array",
    ),
    "not toml": (
        ("[intervals]", "[intervals"),
        "agent.toml: not valid TOML: ",
    ),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_config_names_the_field(tmp_path: Path, case: str) -> None:
    (old, new), expected = BAD[case]
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as e:
        load(path)
    message = str(e.value).replace(str(tmp_path) + "/", "")
    assert message.startswith(expected), message
    assert "\n" not in message


DRIVER_BAD = {
    "unknown setting": (
        "capacity = 300",
        "capacity = 300\ncapacty = 3",
        "agent.toml: printer.capacty: unknown setting for driver 'sim' (expected capacity,",
    ),
    "wrong type": (
        "capacity = 300",
        'capacity = "lots"',
        "agent.toml: printer.capacity: expected int, got str",
    ),
    "wiring is not a setting": (
        "capacity = 300",
        'capacity = 300\nclock = "fast"',
        "agent.toml: printer.clock: not a setting of driver 'sim'",
    ),
    "value the driver refuses": (
        "jam_rate = 0.01",
        "jam_rate = 3.0",
        "agent.toml: printer: jam_rate is a probability per print",
    ),
}


@pytest.mark.parametrize("case", DRIVER_BAD, ids=list(DRIVER_BAD))
def test_bad_driver_settings_name_the_field(tmp_path: Path, case: str) -> None:
    old, new, expected = DRIVER_BAD[case]
    cfg = load(write(tmp_path, GOOD.replace(old, new, 1)))
    assert cfg.printer is not None
    with pytest.raises(ConfigError) as e:
        factory.make_printer(cfg.printer, source=cfg.source)
    message = str(e.value).replace(str(tmp_path) + "/", "")
    assert message.startswith(expected), message


def test_required_driver_setting(tmp_path: Path) -> None:
    text = GOOD.split("[printer]")[0] + '[printer]\ndriver = "ipp"\ntimeout_s = 2\n'
    cfg = load(write(tmp_path, text))
    assert cfg.printer is not None
    with pytest.raises(ConfigError, match=r"printer\.uri: missing \(required by driver 'ipp'\)"):
        factory.check(cfg.printer, "printer", source="agent.toml")


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, GOOD)
    assert cli.main(["check-config", "--config", str(path)]) == 0
    assert "OK (terminal T-0001, broker mqtts://fleet.example.org, printer sim, reader sim)" in (
        capsys.readouterr().out
    )


def test_bad_config_from_the_real_command_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('driver = "sim"\ncapacity', 'driver = "ipx"\ncapacity'))
    for command in ("check-config", "run"):
        r = subprocess.run(
            [str(FLEET_AGENT), command, "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 2
        assert r.stdout == ""
        expected = "printer.driver: unknown driver 'ipx' (expected ipp, escpos, sim)"
        assert r.stderr == f"fleet-agent: {path}: {expected}\n"


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--config", str(tmp_path / "nope.toml")]) == 2
    assert capsys.readouterr().err == (
        f"fleet-agent: {tmp_path / 'nope.toml'}: cannot read: No such file or directory\n"
    )


def test_the_packaged_example_is_valid(tmp_path: Path) -> None:
    example = (Path(__file__).resolve().parents[2] / "packaging" / "agent.example.toml").read_text()
    for name in ("fleet-config.pub", "mqtt-password", "fleet-ca.pem", "update-root.json"):
        (tmp_path / name).write_text("x\n")
    path = tmp_path / "agent.toml"
    path.write_text(example.replace("/etc/fleet-agent/", f"{tmp_path}/"))
    cfg = cli.load_checked(str(path))
    assert cfg.printer is not None and cfg.printer.driver == "ipp"
    assert cfg.reader is not None and cfg.reader.driver == "pcsc"
    assert cfg.config_public_key == tmp_path / "fleet-config.pub"
    assert cfg.update is not None and cfg.update.trusted_root == tmp_path / "update-root.json"
    assert cfg.update.url == "https://fleet.example.org/api/v1/updates/"


UPDATE_BASE = """
terminal_id = "T-1"
data_dir = "/var/lib/fleet-agent"
[broker]
url = "mqtt://h"
password = "p"
"""


@pytest.mark.parametrize(
    ("tables", "expected"),
    [
        ('[server]\nurl = "http://fleet:8080"\n[update]\ntrusted_root = "root.json"\n', None),
        (
            '[update]\ntrusted_root = "root.json"\nurl = "https://u.example/tuf/"\n'
            "retry_delays_s = [1, 2.5]\n",
            None,
        ),
        ('[update]\ntrusted_root = "root.json"\n', "update.url: missing, and there is no [server]"),
        ('[update]\ntrusted_root = "nope.json"\nurl = "http://u/"\n', "update.trusted_root: nope"),
        ('[update]\ntrusted_root = "root.json"\nurl = "ftp://u/"\n', "update.url: 'ftp://u/'"),
        (
            '[update]\ntrusted_root = "root.json"\nurl = "http://u/"\nretry_delays_s = [-1]\n',
            "update.retry_delays_s: expected a list of seconds",
        ),
        ('[update]\ntrusted_root = "root.json"\nurl = "http://u/"\nroot = 1\n', "update.root"),
    ],
)
def test_update_section(tmp_path: Path, tables: str, expected: str | None) -> None:
    (tmp_path / "root.json").write_text("{}")
    path = tmp_path / "agent.toml"
    path.write_text(UPDATE_BASE + tables)
    if expected is None:
        cfg = config.load(path)
        assert cfg.update is not None and cfg.update.trusted_root == tmp_path / "root.json"
        assert cfg.update.url in ("http://fleet:8080/api/v1/updates/", "https://u.example/tuf/")
        assert cfg.update.retry_delays_s in ((5.0, 30.0, 120.0), (1.0, 2.5))
    else:
        with pytest.raises(config.ConfigError, match=re.escape(expected)):
            config.load(path)


def test_no_update_section_means_no_self_update(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(UPDATE_BASE)
    assert config.load(path).update is None
