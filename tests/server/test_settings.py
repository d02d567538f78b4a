"""The server's settings: defaults, environment and file overrides, refused secrets."""

from __future__ import annotations

import os
from datetime import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from fleet.server.settings import Settings, load_settings

STRONG = "s3cret-s3cret-s3cret-s3cret"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own FLEET_* variables must not leak into these tests."""
    for name in list(os.environ):
        if name.startswith("FLEET_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)


def test_default_secrets_are_refused_outside_dev_mode() -> None:
    with pytest.raises(ValidationError) as e:
        Settings()
    text = str(e.value)
    assert "FLEET_BROKER_ADMIN_PASSWORD is the default placeholder" in text
    assert "FLEET_SESSION_SECRET is the default placeholder" in text
    assert "FLEET_DEV_MODE" in text


def test_short_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_BROKER_ADMIN_PASSWORD", STRONG)
    monkeypatch.setenv("FLEET_SESSION_SECRET", "short")
    with pytest.raises(ValidationError, match="FLEET_SESSION_SECRET is shorter than 16"):
        Settings()


def test_dev_mode_accepts_defaults() -> None:
    s = Settings(dev_mode=True)
    assert s.database_url == f"sqlite://{Path('fleet-data') / 'fleet.sqlite3'}"
    assert (s.api_host, s.api_port, s.broker_url) == ("127.0.0.1", 8000, None)
    assert (s.history_retention_days, s.downsample_after_hours, s.heartbeat_intervals) == (
        30,
        24,
        3,
    )
    assert (s.dead_letter_max_per_terminal, s.paper_low_pct, s.status_interval_s) == (100, 20, 30)
    assert s.ingest_max_ts_ahead_s == 600 and s.broker_client_id == "fleet-server"
    assert (s.service_hours_start, s.service_hours_end) == (time(8, 30), time(17, 30))
    assert s.zone.key == "Asia/Shanghai" and s.offline_after_s == 90


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLEET_BROKER_ADMIN_PASSWORD", STRONG)
    monkeypatch.setenv("FLEET_SESSION_SECRET", STRONG)
    monkeypatch.setenv("FLEET_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FLEET_API_PORT", "9001")
    monkeypatch.setenv("FLEET_BROKER_URL", "mqtt://broker.example:1883")
    monkeypatch.setenv("FLEET_SERVICE_HOURS_START", "09:00")
    s = Settings()
    assert s.database_url == f"sqlite://{tmp_path / 'fleet.sqlite3'}"
    assert s.api_port == 9001 and s.broker_url == "mqtt://broker.example:1883"
    assert s.service_hours_start == time(9, 0)
    assert s.broker_admin_password.get_secret_value() == STRONG
    assert STRONG not in repr(s)
    monkeypatch.setenv("DATABASE_URL", "postgres://u@db/fleet")
    assert Settings().database_url == "postgres://u@db/fleet"
    monkeypatch.setenv("FLEET_DATABASE_URL", "postgres://u@db/other")
    assert Settings().database_url == "postgres://u@db/other"  # ours wins over the generic one


def test_bad_values_are_refused() -> None:
    for bad in (
        {"service_timezone": "Mars/Olympus"},
        {"api_port": 0},
        {"service_hours_start": time(18), "service_hours_end": time(8)},
        {"paper_low_pct": 101},
    ):
        with pytest.raises(ValidationError):
            Settings(dev_mode=True, **bad)


def test_toml_and_env_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    toml = tmp_path / "fleet.toml"
    toml.write_text(
        f'session_secret = "{STRONG}"\nbroker_admin_password = "{STRONG}"\n'
        "api_port = 8100\nunknown_key = 1\nstatus_interval_s = 10\n"
    )
    s = load_settings(toml)
    assert s.api_port == 8100 and s.status_interval_s == 10 and not s.dev_mode
    monkeypatch.setenv("FLEET_API_PORT", "8200")  # the environment beats the file
    assert load_settings(toml).api_port == 8200
    monkeypatch.setenv("FLEET_CONFIG", str(toml))
    assert load_settings().status_interval_s == 10

    env = tmp_path / "fleet.env"
    env.write_text("FLEET_DEV_MODE=true\nFLEET_PAPER_LOW_PCT=25\n")
    assert load_settings(env).paper_low_pct == 25
    assert load_settings(env, paper_low_pct=30).paper_low_pct == 30
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.toml")
