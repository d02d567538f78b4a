"""The real agent under the update launcher, against a real Mosquitto: a switched version proves
itself (connected, drivers read, a status report acknowledged), is committed, and says so once
with an `update_succeeded` event; the version in its reports is the bundle's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.update.layout import CURRENT
from agent.update.state import State
from agent.update.updater import Updater
from tests.agent.agent_harness import Subscriber, write_config
from tests.agent.test_update_recovery import _real_agent_bundle
from tests.agent.test_update_support import ROOT
from tests.services.mosquitto import Broker


def test_a_healthy_real_agent_is_committed_and_reports_it(broker: Broker, tmp_path: Path) -> None:
    u = Updater(tmp_path / "root")
    b1, h1 = _real_agent_bundle(tmp_path, "1.0.0")
    u.provision(b1, "1.0.0", h1)
    b2, h2 = _real_agent_bundle(tmp_path, "2.0.0")
    u.apply(b2, "2.0.0", h2)  # installed and switched: the next start is the health check
    config = write_config(
        tmp_path / "agent" / "agent.toml", broker, extra='[printer]\ndriver = "sim"\n'
    )
    sub = Subscriber(broker, "fleet/v1/t/T-0001/#")
    launcher = subprocess.Popen(
        [sys.executable, "-m", "agent.update.launcher", "--root", str(u.root),
         "--deadline", "20", "--poll", "0.05", "--", "run", "--config", str(config)],
        cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert sub.wait_for(
            lambda ms: any(
                m.topic.endswith("/event") and m.json().get("event") == "update_succeeded"
                for m in ms
            ),
            timeout=30,
        ), [m.topic for m in sub.messages]
        (done,) = [m.json() for m in sub.on("event") if m.json().get("event") == "update_succeeded"]
        assert (done["version"], done["from_version"]) == ("2.0.0", "1.0.0")
        assert done["agent"] == "2.0.0"  # reported by the bundle's own code
        deadline = time.monotonic() + 5
        while u.store.load().state != State.IDLE and time.monotonic() < deadline:
            time.sleep(0.05)
        assert u.store.load().state == State.IDLE  # acknowledged: reported once
        assert u.layout.resolve(CURRENT) == "2.0.0"
    finally:
        launcher.send_signal(signal.SIGTERM)
        try:
            out, _ = launcher.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            launcher.kill()
            out, _ = launcher.communicate()
        sub.close()
    assert launcher.returncode == 0, out.decode(errors="replace")[-2000:]
    assert sum(m.json().get("event") == "update_succeeded" for m in sub.on("event")) == 1


def test_fleet_agent_install_puts_the_factory_version_in_an_empty_root(tmp_path: Path) -> None:
    """`fleet-agent install` with a bundle from `fleet updates build`; then the launcher runs it."""
    from fleet.server.updates.bundle import build_bundle

    bundle = build_bundle("1.0.0", tmp_path / "dist")
    fleet_agent = [sys.executable, "-m", "agent.cli", "install", "--root"]

    def install(root: Path, version: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*fleet_agent, str(root), "--version", version, str(bundle)],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    wrong = install(tmp_path / "wrong", "1.0.1")  # the manifest says 1.0.0
    assert wrong.returncode == 2 and "1.0.0" in wrong.stderr, wrong.stderr
    assert Updater(tmp_path / "wrong").layout.resolve(CURRENT) is None
    ok = install(tmp_path / "root", "1.0.0")
    assert ok.returncode == 0, ok.stderr
    u = Updater(tmp_path / "root")
    assert u.layout.resolve(CURRENT) == "1.0.0" and u.store.load().state == State.IDLE
    again = install(tmp_path / "root", "1.0.0")
    assert again.returncode == 2 and "already provisioned" in again.stderr
    config = tmp_path / "agent.toml"
    config.write_text(
        f'terminal_id = "T-0001"\ndata_dir = "{tmp_path / "data"}"\n'
        '[broker]\nurl = "mqtt://127.0.0.1:9"\npassword = "x"\n'
    )
    r = subprocess.run(
        [sys.executable, "-m", "agent.update.launcher", "--root", str(u.root),
         "--", "check-config", "--config", str(config)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0 and "OK (terminal T-0001" in r.stdout, r.stderr
