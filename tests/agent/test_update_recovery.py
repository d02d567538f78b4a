"""Real processes: SIGKILL at every step, the health check, crash loops, the launcher restarted
as Restart=always would, and the real agent package installed as a bundle."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.update.layout import COMMITTED, CURRENT, PREVIOUS, Layout
from agent.update.state import OUTCOMES, State, StateStore
from agent.update.updater import KILL_AT_ENV, Updater
from tests.agent.test_update_support import (
    ROOT,
    launcher,
    make_fake_bundle,
    runs,
    sha256,
    tar_dir,
)

#: Checkpoints of the agent's side (download .. switch) and what a restart must end on.
AGENT_STEPS = {
    "downloading": State.FAILED,
    "downloaded": State.FAILED,
    "installing": State.FAILED,
    "install_unpacking": State.FAILED,  # some files of versions/2.0.0.partial written
    "install_unpacked": State.FAILED,  # all written, not yet renamed
    "installed": State.FAILED,
    "switching": State.ROLLED_BACK,
    "switch_previous": State.ROLLED_BACK,
    "switch_current": State.ROLLED_BACK,  # current already names 2.0.0, state says switching
    "switched": State.COMMITTED,  # the new version then passes its health check
}
#: Checkpoints of the launcher's side (health check, commit, rollback).
LAUNCHER_STEPS = {
    ("good", "health_passed"): State.COMMITTED,
    ("good", "commit_pointer"): State.COMMITTED,
    ("good", "committed"): State.COMMITTED,
    ("fail", "rolling_back"): State.ROLLED_BACK,
    ("fail", "rollback_current"): State.ROLLED_BACK,
    ("fail", "rolled_back"): State.ROLLED_BACK,
}

APPLY = """\
import sys
from pathlib import Path
from agent.update.updater import Updater
Updater(Path(sys.argv[1])).apply(Path(sys.argv[2]), "2.0.0", sys.argv[3])
"""


def _provision(tmp_path: Path, version: str = "1.0.0") -> Updater:
    u = Updater(tmp_path / "root")
    bundle, digest = make_fake_bundle(tmp_path, version)
    u.provision(bundle, version, digest)
    return u


def _until_settled(root: Path, deadline: float = 5.0, limit: int = 6) -> list[int]:
    """Start the launcher again each time it exits (Restart=always) until the update settled
    and a start ended cleanly; returns the exit statuses."""
    codes = []
    for _ in range(limit):
        r = launcher(root, "run", deadline=deadline)
        codes.append(r.returncode)
        state = StateStore(root).load().state
        if r.returncode == 0 and (state in OUTCOMES or state == State.IDLE):
            return codes
    raise AssertionError(f"not settled after {codes}: {StateStore(root).load()}")


def _assert_on_a_working_version(root: Path, expected: State) -> str:
    layout = Layout(root)
    rec = StateStore(root).load()
    assert rec.state == expected, rec
    current = layout.resolve(CURRENT)
    assert layout.is_complete(current)
    assert not list(layout.versions.glob("*.partial"))
    assert layout.resolve(COMMITTED) == current  # nothing unproven left running
    if expected == State.COMMITTED:
        assert current == "2.0.0" and layout.resolve(PREVIOUS) == "1.0.0"
    else:
        assert current == "1.0.0" and layout.installed() == ["1.0.0"]
    assert runs(root)[-1].startswith(f"{current} ")  # and it ran
    assert current is not None
    return current


@pytest.mark.parametrize("step", list(AGENT_STEPS))
def test_sigkill_during_update_then_restart(tmp_path: Path, step: str) -> None:
    u = _provision(tmp_path)
    bundle, digest = make_fake_bundle(tmp_path, "2.0.0")
    r = subprocess.run(
        [sys.executable, "-c", APPLY, str(u.root), str(bundle), digest],
        cwd=ROOT,
        env={**os.environ, KILL_AT_ENV: step},
        capture_output=True,
        timeout=30,
    )
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert StateStore(u.root).load().state != State.IDLE
    _until_settled(u.root)
    _assert_on_a_working_version(u.root, AGENT_STEPS[step])


@pytest.mark.parametrize(("behaviour", "step"), list(LAUNCHER_STEPS))
def test_sigkill_during_health_check_commit_or_rollback(
    tmp_path: Path, behaviour: str, step: str
) -> None:
    u = _provision(tmp_path)
    bundle, digest = make_fake_bundle(tmp_path, "2.0.0", behaviour)
    u.apply(bundle, "2.0.0", digest)
    r = launcher(u.root, "run", env={KILL_AT_ENV: step})
    assert r.returncode == -signal.SIGKILL, r.stderr
    _until_settled(u.root)
    _assert_on_a_working_version(u.root, LAUNCHER_STEPS[(behaviour, step)])


def test_good_version_commits_and_is_reported_once(tmp_path: Path) -> None:
    u = _provision(tmp_path)
    bundle, digest = make_fake_bundle(tmp_path, "2.0.0")
    u.apply(bundle, "2.0.0", digest)
    assert launcher(u.root, "run", "--config", "x.toml").returncode == 0
    _assert_on_a_working_version(u.root, State.COMMITTED)
    assert runs(u.root) == ["2.0.0 good run --config x.toml"]
    rec = u.store.load()
    assert rec.starts == 1 and rec.attempt == 1
    outcome = u.pending_outcome()
    assert outcome is not None
    assert outcome.to_json() == {
        "event": "update_succeeded",
        "version": "2.0.0",
        "from_version": "1.0.0",
        "reason": None,
        "attempt": 1,
    }
    u.acknowledge()
    assert u.pending_outcome() is None
    # A later start is an ordinary one: no health check, no state change.
    assert launcher(u.root, "run").returncode == 0
    assert u.store.load().state == State.IDLE


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("silent", "health check timed out after 1 s: the drivers were never read, "
         "no status report was published"),
        ("hang", "health check timed out after 1 s: never connected to the broker, "
         "the drivers were never read, no status report was published"),
        ("fail", "health check failed: printer unreadable"),
    ],
)  # fmt: skip
def test_unhealthy_version_is_rolled_back(tmp_path: Path, behaviour: str, reason: str) -> None:
    u = _provision(tmp_path)
    bundle, digest = make_fake_bundle(tmp_path, "2.0.0", behaviour)
    u.apply(bundle, "2.0.0", digest)
    r = launcher(u.root, "run", deadline=1.0)
    assert r.returncode == 1
    rec = u.store.load()
    assert rec.state == State.ROLLED_BACK and rec.reason == reason
    assert u.layout.resolve(CURRENT) == "1.0.0"
    # Restart=always: the old version runs again, normally.
    assert launcher(u.root, "run").returncode == 0
    _assert_on_a_working_version(u.root, State.ROLLED_BACK)
    outcome = u.pending_outcome()
    assert outcome is not None and outcome.event == "update_rolled_back"
    assert outcome.reason == reason


def test_crash_loop_under_restart_always_rolls_back_at_the_cap(tmp_path: Path) -> None:
    """The launcher in a loop, as systemd's Restart=always runs it, over a version that exits."""
    u = _provision(tmp_path)
    bundle, digest = make_fake_bundle(tmp_path, "2.0.0", "exit")
    u.apply(bundle, "2.0.0", digest)
    codes = _until_settled(u.root)
    assert codes == [3, 3, 3, 0]  # three starts of 2.0.0, then 1.0.0 again
    assert [line.split()[0] for line in runs(u.root)] == ["2.0.0", "2.0.0", "2.0.0", "1.0.0"]
    rec = u.store.load()
    assert rec.reason == "exited with status 3 before passing its health check (3 starts)"
    _assert_on_a_working_version(u.root, State.ROLLED_BACK)


def test_two_updates_keep_at_most_three_versions(tmp_path: Path) -> None:
    u = _provision(tmp_path)
    b2, h2 = make_fake_bundle(tmp_path, "2.0.0")
    u.apply(b2, "2.0.0", h2)
    _until_settled(u.root)
    u.acknowledge()
    b3, h3 = make_fake_bundle(tmp_path, "3.0.0", "hang")
    u.apply(b3, "3.0.0", h3)
    assert u.layout.installed() == ["1.0.0", "2.0.0", "3.0.0"]
    assert launcher(u.root, "run", deadline=0.5).returncode == 1
    assert u.layout.resolve(CURRENT) == "2.0.0"
    assert u.layout.resolve(PREVIOUS) == "1.0.0"  # restored as it was before 3.0.0
    assert u.layout.installed() == ["1.0.0", "2.0.0"]
    u.acknowledge()
    b4, h4 = make_fake_bundle(tmp_path, "4.0.0")
    u.apply(b4, "4.0.0", h4)
    _until_settled(u.root)
    assert u.layout.installed() == ["2.0.0", "4.0.0"]
    assert (u.layout.resolve(CURRENT), u.layout.resolve(PREVIOUS)) == ("4.0.0", "2.0.0")


def _real_agent_bundle(tmp_path: Path, version: str) -> tuple[Path, str]:
    """The repository's `agent` package as a release archive, with its own dist-info so the
    agent reports the bundle's version (importlib.metadata finds it first on the path)."""
    src = tmp_path / f"real-{version}"
    shutil.copytree(
        ROOT / "agent", src / "agent", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    info = src / f"kiosk_fleet-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: kiosk-fleet\nVersion: {version}\n"
    )
    (src / "fleet-bundle.json").write_text(
        json.dumps({"v": 1, "version": version, "module": "agent.cli"})
    )
    bundle = tar_dir(src, tmp_path / f"fleet-agent-{version}.tar.gz")
    return bundle, sha256(bundle)


def test_real_agent_bundle_runs_and_an_unproven_one_is_rolled_back(tmp_path: Path) -> None:
    """The real agent, installed from an archive, runs under the launcher; a new version that
    cannot reach its broker never proves itself and is rolled back."""
    u = Updater(tmp_path / "root")
    b1, h1 = _real_agent_bundle(tmp_path, "1.0.0")
    u.provision(b1, "1.0.0", h1)
    config = tmp_path / "agent.toml"
    config.write_text(
        textwrap.dedent(f"""\
        terminal_id = "T-0001"
        data_dir = "{tmp_path / "data"}"
        shutdown_flush_s = 1
        [broker]
        url = "mqtt://127.0.0.1:9"
        username = "T-0001"
        password = "x"
        reconnect_min_s = 0.2
        reconnect_max_s = 0.5
        """)
    )
    r = launcher(u.root, "check-config", "--config", str(config))
    assert r.returncode == 0, r.stderr
    assert "OK (terminal T-0001" in r.stdout
    b2, h2 = _real_agent_bundle(tmp_path, "2.0.0")
    u.apply(b2, "2.0.0", h2)
    r = launcher(u.root, "run", "--config", str(config), deadline=3.0)
    assert r.returncode == 1, r.stderr
    assert "fleet-agent 2.0.0 for T-0001" in r.stderr  # the bundle's code and version ran
    rec = u.store.load()
    assert rec.state == State.ROLLED_BACK
    assert rec.reason is not None and "never connected to the broker" in rec.reason
    assert u.layout.resolve(CURRENT) == "1.0.0" and u.layout.installed() == ["1.0.0"]
