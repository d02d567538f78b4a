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
from fleet.server.provisioning import ProvisioningError, provision_terminal
from fleet.server.settings import Settings
from fleet.server.updates.repository import init_repository, server_updates_dir
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


@needs_mosquitto
def test_the_update_root_is_written_beside_the_config_with_a_server_url(
    broker: EmbeddedBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = broker.dir.parent
    out = tmp_path / "agent.toml"
    argv = ["terminals", "add", "T-0300", "--site", "s", "--model", "sim", "--force"]
    argv += ["--data-dir", str(data_dir), "--out", str(out), "--config-key", "fleet-config.pub"]
    # No update repository yet: [server] only, no self-update.
    assert fleet_main([*argv, "--server-url", "https://fleet.example.org/"]) == 0
    cfg = agent_config.load(out)
    assert cfg.server_url == "https://fleet.example.org" and cfg.update is None
    repo = init_repository(server_updates_dir(data_dir), tmp_path / "root-keys")
    # A repository but no server URL: said, and no [update].
    assert fleet_main(["terminals", "add", "T-0301", *argv[3:]]) == 0
    assert "will not update itself" in capsys.readouterr().err
    assert agent_config.load(out).update is None
    argv += ["--server-url", "https://fleet.example.org", "--update-root", "update-root.json"]
    assert fleet_main(["terminals", "add", "T-0302", *argv[3:]]) == 0
    cfg = agent_config.load(out)
    assert cfg.update is not None
    assert cfg.update.trusted_root == tmp_path / "update-root.json"
    assert cfg.update.url == "https://fleet.example.org/api/v1/updates/"
    assert cfg.update.trusted_root.read_bytes() == repo.latest_root_bytes()


def test_self_update_without_a_server_url_is_refused() -> None:
    with pytest.raises(ProvisioningError, match="server URL"):
        provision_terminal("T-1", "s", "sim", "mqtt://h", None, None, update_root_path="r.json")
    with pytest.raises(ProvisioningError, match="expected http"):
        provision_terminal("T-1", "s", "sim", "mqtt://h", None, None, server_url="ftp://x")
