"""`fleet config get/set`: layer names map to the API paths, bad ones and a missing token are
clear usage errors (the round trip through a real server is in test_desired_e2e.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleet.cli_common import CliError
from fleet.config_cli import layer_path

BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    ("layer", "path"),
    [
        ("defaults", "/api/v1/config/defaults"),
        ("model/kx-a4-ipp", "/api/v1/config/models/kx-a4-ipp"),
        ("site/WH-HALL", "/api/v1/config/sites/WH-HALL"),
        ("terminal/T1", "/api/v1/config/terminals/T1"),
        ("terminal/T1/desired", "/api/v1/config/terminals/T1/desired"),
    ],
)
def test_layer_names(layer: str, path: str) -> None:
    assert layer_path(layer) == path


@pytest.mark.parametrize(
    "layer", ["", "default", "site", "site/", "site/S1/desired", "room/1", "terminal/T1/x"]
)
def test_bad_layer_names(layer: str) -> None:
    with pytest.raises(CliError):
        layer_path(layer)


def test_no_token_and_a_bad_file_are_usage_errors(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FLEET_TOKEN"}
    out = subprocess.run(
        [str(BIN / "fleet"), "config", "get", "defaults", "--url", "http://127.0.0.1:9"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 2 and "token" in out.stderr
    bad = tmp_path / "layer.json"
    bad.write_text("[1, 2]")
    out = subprocess.run(
        [str(BIN / "fleet"), "config", "set", "site/S1", str(bad), "--token", "x"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 2 and "JSON object" in out.stderr
    out = subprocess.run(
        [str(BIN / "fleet"), "config", "get", "defaults", "--token", "x", "--url",
         "http://127.0.0.1:9"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 2 and "cannot reach" in out.stderr
