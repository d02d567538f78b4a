"""Provisioning: the agent config it writes loads in the agent, and its credentials work."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import config as agent_config
from fleet.cli import main as fleet_main
from fleet.server.broker import EmbeddedBroker
from fleet.server.provisioning import (
    ProvisioningError,
    Registration,
    provision_terminal,
    toml_string,
)
from tests.server.mqtt_helpers import broker_dir, connect

SERVER = ("fleet-server", "server-secret-0123456789")
FLEET_AGENT = Path(sys.executable).parent / "fleet-agent"

needs_mosquitto = pytest.mark.skipif(
    shutil.which("mosquitto") is None and not os.path.exists("/usr/sbin/mosquitto"),
    reason="mosquitto is not installed (apt-get install mosquitto mosquitto-clients)",
)


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    b = EmbeddedBroker(broker_dir(), server_user=SERVER[0], server_password=SERVER[1]).start()
    yield b
    b.stop()
    shutil.rmtree(b.dir.parent, ignore_errors=True)


def _load(text: str, tmp_path: Path) -> agent_config.AgentConfig:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return agent_config.load(path)


def test_renders_a_config_the_agent_loader_accepts(tmp_path: Path) -> None:
    key = tmp_path / "fleet-config.pub"
    key.write_text("-----BEGIN PUBLIC KEY-----\n")
    text, password = provision_terminal(
        "WH-HALL-01", "wuhou-hall", "kx-a4-ipp", "mqtts://fleet.example.org:8883", None, str(key)
    )
    cfg = _load(text, tmp_path)
    assert cfg.terminal_id == "WH-HALL-01"
    assert cfg.data_dir == Path("/var/lib/fleet-agent")
    assert cfg.config_public_key == key
    assert (cfg.broker.url, cfg.broker.host, cfg.broker.port) == (
        "mqtts://fleet.example.org:8883",
        "fleet.example.org",
        8883,
    )
    assert (cfg.broker.username, cfg.broker.password) == ("WH-HALL-01", password)
    assert cfg.intervals.status_interval_s == 30.0
    assert cfg.printer is not None and cfg.printer.driver == "ipp"
    assert cfg.reader is not None and cfg.reader.driver == "pcsc"


def test_passwords_are_long_random_and_unique() -> None:
    passwords = {
        provision_terminal("T-1", "s", "sim", "mqtt://h", None, None).password for _ in range(20)
    }
    assert len(passwords) == 20
    assert all(len(p) >= 40 for p in passwords)  # 32 random bytes, base64url


@pytest.mark.parametrize(
    ("model", "printer", "reader"),
    [
        ("kx-a4-ipp", "ipp", "pcsc"),
        ("KX-A4-DualTray-IPP", "ipp", "pcsc"),  # model ids are matched case-insensitively
        ("kx-receipt-escpos", "escpos", None),  # a HID QR scanner has no agent driver
        ("sim", "sim", "sim"),
        ("Unknown Brand 9000", "sim", "sim"),
    ],
)
def test_model_picks_the_drivers(
    model: str, printer: str, reader: str | None, tmp_path: Path
) -> None:
    """The drivers come from the model's file in firmware_configs/."""
    text, _ = provision_terminal("T-1", "site-1", model, "mqtt://127.0.0.1:1883", None, None)
    cfg = _load(text, tmp_path)
    assert cfg.printer is not None and cfg.printer.driver == printer
    assert (cfg.reader.driver if cfg.reader else None) == reader
    assert cfg.config_public_key is None  # left as a commented placeholder
    assert "# config_public_key = " in text


@pytest.mark.parametrize(
    "bad_id", ["", "-T1", "T 1", "T/1", "T+1", "T#", "a" * 65, "终端1", "T-1\n"]
)
def test_refuses_ids_outside_the_contract(bad_id: str) -> None:
    with pytest.raises(ProvisioningError, match="does not match"):
        provision_terminal(bad_id, "s", "sim", "mqtt://h", None, None)


@pytest.mark.parametrize(
    "url", ["http://h", "mqtt://u:p@h", "mqtt://h/path", "mqtt://h:99999", "mqtt://", "h:1883"]
)
def test_refuses_broker_urls_the_agent_would_refuse(url: str) -> None:
    with pytest.raises(ProvisioningError, match="broker URL"):
        provision_terminal("T-1", "s", "sim", url, None, None)


def test_strings_are_escaped_for_toml(tmp_path: Path) -> None:
    nasty = 'a"b\\c\nd\te\x7f\x01 武侯区'
    assert tomllib.loads(f"x = {toml_string(nasty)}")["x"] == nasty
    # A site name with a line break cannot inject settings through the header comment.
    text, _ = provision_terminal("T-1", 'hall\nlog_level = "debug"', "sim", "mqtt://h", None, None)
    assert _load(text, tmp_path).log_level == "info"


def test_database_hook_runs_before_the_broker_user_and_can_refuse() -> None:
    calls: list[object] = []

    class Registry:
        def add_user(self, username: str, password: str) -> None:
            calls.append(("broker", username))

    def register(r: Registration) -> None:
        calls.append(r)

    provision_terminal("T-7", " hall ", "sim", "mqtt://h", Registry(), None, register=register)
    assert calls == [Registration("T-7", "hall", "sim"), ("broker", "T-7")]

    def refuse(r: Registration) -> None:
        raise ProvisioningError(f"terminal {r.terminal_id} exists")

    calls.clear()
    with pytest.raises(ProvisioningError, match="exists"):
        provision_terminal("T-7", "hall", "sim", "mqtt://h", Registry(), None, register=refuse)
    assert calls == []  # refused: no credentials made


@needs_mosquitto
def test_provisioned_credentials_publish_own_status_only(broker: EmbeddedBroker) -> None:
    text, password = provision_terminal("T-0042", "hall", "sim", broker.url, broker, None)
    assert "T-0042" in broker.users()
    server = connect(broker.server_port, *SERVER)  # the server's own listener
    terminal = connect(broker.port, "T-0042", password, client_id="T-0042")
    try:
        server.subscribe("fleet/v1/t/+/status")
        assert terminal.publish("fleet/v1/t/T-0042/status", b'{"v":1,"seq":1}') == 0
        assert server.wait_for(lambda r: r == [("fleet/v1/t/T-0042/status", b'{"v":1,"seq":1}')], 5)
    finally:
        terminal.close()
        server.close()
    assert f'password = "{password}"' in text


# ------------------------------------------------------------------ fleet terminals add


def _fleet_agent_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FLEET_AGENT), "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@needs_mosquitto
def test_cli_writes_a_private_config_that_check_config_accepts(
    broker: EmbeddedBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "agent.toml"
    argv = ["terminals", "add", "T-0100", "--site", "wuhou-hall", "--model", "sim"]
    argv += ["--data-dir", str(broker.dir.parent), "--out", str(out), "--no-config-key"]
    # The CLI finds the broker as `fleet serve` lays it out: <data dir>/mosquitto.
    assert broker.dir.name == "mosquitto"
    assert fleet_main(argv) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    cfg = agent_config.load(out)
    assert cfg.broker.url == broker.url  # the running broker's listener by default
    # The running broker took the new user without a restart.
    connect(broker.port, "T-0100", cfg.broker.password, client_id="T-0100").close()
    if FLEET_AGENT.exists():
        done = _fleet_agent_check(out)
        assert done.returncode == 0, done.stderr
        assert "OK (terminal T-0100" in done.stdout
    # An existing file is not replaced without --force.
    assert fleet_main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert fleet_main([*argv, "--force", "--broker-url", "mqtts://fleet.example.org"]) == 0
    assert agent_config.load(out).broker.url == "mqtts://fleet.example.org"


def test_cli_refuses_a_bad_id_and_a_missing_broker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["terminals", "add", "--site", "s", "--model", "sim", "--data-dir", str(tmp_path)]
    assert fleet_main([*base[:2], "bad id", *base[2:]]) == 2
    assert "no broker password file" in capsys.readouterr().err
    (tmp_path / "mosquitto").mkdir()
    (tmp_path / "mosquitto" / "passwd").write_text("")
    (tmp_path / "mosquitto" / "mosquitto.conf").write_text("listener 1883 127.0.0.1\n")
    assert fleet_main([*base[:2], "bad id", *base[2:]]) == 2
    assert "does not match" in capsys.readouterr().err


def test_tray_capacity_and_timeouts_come_from_the_model_file(tmp_path: Path) -> None:
    text, _ = provision_terminal(
        "T-1", "site-1", "kx-a4-dualtray-ipp", "mqtt://127.0.0.1:1883", None, None
    )
    cfg = _load(text, tmp_path)
    assert cfg.printer is not None
    assert cfg.printer.settings["capacity"] == 1100  # two trays of 550
    text, _ = provision_terminal("T-2", "site-1", "kx-receipt-escpos", "mqtt://h", None, None)
    assert 'address = "tcp://192.168.1.50:9100"  # adjust on site' in text
