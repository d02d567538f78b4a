"""`fleet rollouts` against a real `fleet serve`: create, list, show (table and JSON), pause,
resume, abort; the server's refusals and usage errors are one line on stderr, exit status 2."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
from typing import Any

import pytest

from fleet.rollouts_cli import create_body, parse_waves
from fleet.server.updates.repository import init_repository, server_updates_dir
from tests.services.fleet_server import BIN, Server

VERSION = "1.3.0"


def test_waves_are_counts_or_percentages() -> None:
    assert parse_waves("1, 10%, 50%,100%") == [1, "10%", "50%", "100%"]
    assert parse_waves("2,12.5%") == [2, "12.5%"]
    for bad in ("", "1,,2", "ten", "10 %x", "-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_waves(bad)


def test_options_not_given_are_left_to_the_server() -> None:
    args = argparse.Namespace(
        version=VERSION, site=["S1"], model=[], tag=["hall"], terminal=[], waves=None,
        success_threshold=None, max_failures=0, max_failure_pct=None, failure_action="abort",
        timeout=None, override_window=False,
    )  # fmt: skip
    assert create_body(args) == {
        "version": VERSION,
        "target": {"sites": ["S1"], "models": [], "tags": ["hall"], "terminals": []},
        "override_window": False,
        "max_failures": 0,
        "failure_action": "abort",
    }


def run(s: Server, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in s.env.items() if k not in ("FLEET_TOKEN", "FLEET_URL")}
    return subprocess.run(
        [str(BIN / "fleet"), "rollouts", *args, "--url", s.url, "--token", token],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def ok(s: Server, token: str, *args: str) -> str:
    out = run(s, token, *args)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_rollouts_round_trip(server: Server) -> None:
    s = server
    admin = s.fleet("tokens", "create", "--role", "admin", "--name", "cli-admin").split()[0]
    for tid, site in (("T1", "S1"), ("T2", "S1"), ("T3", "S2")):
        s.fleet(
            "terminals", "add", tid, "--site", site, "--model", "sim", "--data-dir", str(s.data),
            "--out", str(s.data / f"{tid}.toml"), "--no-config-key",
        )  # fmt: skip

    # No repository yet: the server's 409 says what to do.
    out = run(s, admin, "create", "--version", VERSION, "--site", "S1")
    assert out.returncode == 2 and "409" in out.stderr and "initialise" in out.stderr
    repo = init_repository(server_updates_dir(s.data), s.data / "root-keys")
    bundle = s.data / "bundle.tar.gz"
    bundle.write_bytes(b"agent 1.3.0" * 100)
    repo.add_target(bundle, VERSION)
    out = run(s, admin, "create", "--version", "9.9.9", "--site", "S1")
    assert out.returncode == 2 and "9.9.9 is not published" in out.stderr
    assert "Traceback" not in out.stderr
    out = run(s, admin, "create", "--version", VERSION)
    assert out.returncode == 2 and "no target" in out.stderr
    out = run(s, s.token, "create", "--version", VERSION, "--site", "S1")  # an operator
    assert out.returncode == 2 and "403" in out.stderr
    out = run(s, admin, "create", "--version", VERSION, "--site", "S1", "--waves", "1,x")
    assert out.returncode == 2 and "neither a count nor N%" in out.stderr

    created = ok(
        s, admin, "create", "--version", VERSION, "--site", "S1", "--site", "S2",
        "--terminal", "T3", "--waves", "1, 100%", "--max-failures", "1",
        "--failure-action", "abort", "--timeout", "600", "--override-window",
    )  # fmt: skip
    assert created.startswith("rollout 1: agent 1.3.0  running  wave 1/2")
    assert "then abort" in created and "600 s per terminal" in created

    listed = ok(s, s.token, "list")
    lines = listed.splitlines()
    assert lines[0].split() == ["ID", "VERSION", "STATE", "PROGRESS", "TERMINALS", "UPDATED"]
    assert lines[1].split()[:6] == ["1", VERSION, "running", "wave", "1/2", "pending=3"]

    shown = ok(s, s.token, "show", "1")
    assert "target:    sites: S1, S2; terminals: T3" in shown
    table = shown.splitlines()[shown.splitlines().index("") + 1 :]
    assert table[0].split() == ["WAVE", "TERMINAL", "STATE", "STARTED", "UPDATED", "REASON"]
    canary = [r for r in table if re.match(r"1 +T[123] +pending +\d{4}-", r)]
    waiting = [r for r in table if re.match(r"2 \(waiting\) +T[123] +pending +- ", r)]
    assert len(canary) == 1 and len(waiting) == 2 and len(table) == 4, shown
    raw: dict[str, Any] = json.loads(ok(s, s.token, "show", "1", "--json"))
    assert raw["id"] == 1 and raw["max_failures"] == 1 and raw["failure_action"] == "abort"
    assert [len(w["terminals"]) for w in raw["waves"]] == [1, 2]

    assert ok(s, admin, "pause", "1", "--reason", "lunch").startswith("rollout 1: paused")
    out = run(s, admin, "pause", "1")
    assert out.returncode == 2 and "409" in out.stderr
    assert json.loads(ok(s, s.token, "show", "1", "--json"))["reason"] == "lunch"
    assert ok(s, admin, "resume", "1").startswith("rollout 1: running")
    aborted = json.loads(ok(s, admin, "abort", "1", "--json"))
    assert aborted["state"] == "aborted"
    out = run(s, admin, "show", "7")
    assert out.returncode == 2 and "404" in out.stderr
    assert ok(s, s.token, "list").splitlines()[1].split()[:3] == ["1", VERSION, "aborted"]


def test_no_token_is_a_usage_error() -> None:
    env = {k: v for k, v in os.environ.items() if k != "FLEET_TOKEN"}
    out = subprocess.run(
        [str(BIN / "fleet"), "rollouts", "list", "--url", "http://127.0.0.1:9"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 2 and "token" in out.stderr
