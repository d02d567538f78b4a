"""`fleet terminals add --out` writes the fleet's config public key next to the agent config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import rust_core
from agent import config as agent_config
from fleet.cli import main as fleet_main
from fleet.server.broker import EmbeddedBroker
from fleet.server.desired.keys import ConfigKeyError, load_config_key
from fleet.server.settings import Settings
from tests.server.test_provisioning import broker, needs_mosquitto

__all__ = ["broker"]


@needs_mosquitto
def test_the_public_key_is_written_beside_the_config(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    out = tmp_path / "agent.toml"
    data_dir = broker.dir.parent
    argv = ["terminals", "add", "T-0200", "--site", "s", "--model", "sim"]
    argv += ["--data-dir", str(data_dir), "--out", str(out), "--config-key", "fleet-config.pub"]
    assert fleet_main(argv) == 0
    pub = tmp_path / "fleet-config.pub"
    key = load_config_key(Settings(dev_mode=True, data_dir=data_dir))
    assert rust_core.VerifyingKey.from_pem(pub.read_text()).spki() == key.public_spki()
    # The agent resolves the relative path against its config's folder.
    assert agent_config.load(out).config_public_key == pub


def test_the_config_key_is_made_in_dev_mode_only(tmp_path: Path) -> None:
    with pytest.raises(ConfigKeyError, match="fleet keys generate"):
        load_config_key(Settings(dev_mode=False, data_dir=tmp_path, **_secrets()))
    made = load_config_key(Settings(dev_mode=True, data_dir=tmp_path))
    assert (tmp_path / "config-key.pem").stat().st_mode & 0o777 == 0o600
    again = load_config_key(Settings(dev_mode=False, data_dir=tmp_path, **_secrets()))
    assert again.public_spki() == made.public_spki() and again.alg == "EdDSA"
    other = tmp_path / "es.pem"
    other.write_text(rust_core.SigningKey.generate("ES256").to_pem())
    with pytest.raises(ConfigKeyError, match="EdDSA"):
        load_config_key(Settings(dev_mode=True, config_key_file=other))


def _secrets() -> dict[str, Any]:
    return {"broker_admin_password": "x" * 32, "session_secret": "y" * 32}
