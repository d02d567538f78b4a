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
